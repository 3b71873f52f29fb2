"""The sweep engine gives the naive path's logits: every method, layer setting, chunking, model."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch
from torch import nn

from bioattn.attention.gains import Modulation, SpatialCue, feature_gain, spatial_gain
from bioattn.attention.rules import ValueSource, parse_rule
from bioattn.data.imageset import ImageSet
from bioattn.data.tasks import make_task_set
from bioattn.errors import ConfigError
from bioattn.experiments import engine as engine_module
from bioattn.experiments.engine import SweepEngine, naive_condition_logits, target_logits
from bioattn.experiments.sweep import SweepConfig, run_sweep
from bioattn.models.detectors import Detectors
from bioattn.models.network import Network
from bioattn.models.zoo import VGG16, build_network
from tests.conftest import make_image_set, make_tiny_network

TOLERANCE = 1e-5
ALL_METHODS = (
    "tuning",
    "gradient",
    "uniform",
    "shuffled-tuning",
    "shuffled-gradient",
    "response-tuning",
    "response-gradient",
    "response-uniform",
    "tuning-positive",
    "gradient-positive",
)
BETAS = (0.1, 0.5, 1.0, 2.0, 4.0)


@pytest.fixture
def tiny_network():
    """conftest's TinyNet with a seed whose every map is active on the test images."""
    return make_tiny_network(5)


@pytest.fixture
def tiny_detectors(tiny_network, tiny_images):
    """conftest's hand-set detector weights, standardised on this network's features so that
    logits spread around 0 (decisions change with attention)."""
    features = tiny_network.readout_features(tiny_images.images)
    weight = torch.tensor([[1.0, 0.0, -1.0], [-2.0, 1.0, 0.0], [0.5, 0.5, 0.5], [0.0, -1.0, 2.0]])
    return Detectors(
        weight=0.1 * weight,
        bias=torch.zeros(4),
        feature_mean=features.mean(0),
        feature_std=features.std(0),
        categories=("a", "b", "c", "d"),
    )


@pytest.fixture
def task():
    test = make_image_set(n_per_category=10, split="test")
    return make_task_set(test, "b", "merged", n_pos=6, n_neg=6, seed=0)


def _conditions(source, network, method_name, layers, factor=1.0):
    rule = parse_rule(method_name)
    return [
        {layer: rule.modulation(source, "merged", "b", layer, beta * factor) for layer in layers}
        for beta in BETAS
    ]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@pytest.mark.parametrize("method", ALL_METHODS)
def test_engine_matches_naive_for_every_method(tiny_network, tiny_detectors, values, task, method):
    source = ValueSource(values)
    engine = SweepEngine(tiny_network, tiny_detectors)
    baseline = engine.baseline_logits(task)
    settings = [[layer] for layer in tiny_network.layers] + [list(tiny_network.layers)]
    effects = []
    for layers in settings:
        factor = 0.1 if len(layers) > 1 else 1.0
        conditions = _conditions(source, tiny_network, method, layers, factor)
        fast = engine.condition_logits(task, conditions)
        slow = naive_condition_logits(tiny_network, tiny_detectors, task, conditions)
        assert fast.shape == (len(BETAS), 12)
        assert _max_diff(fast, slow) <= TOLERANCE, (method, [la.alias for la in layers])
        effects.append(_max_diff(fast, baseline.expand_as(fast)))
    # attention changes the logits, so these are not comparisons of unmodulated runs
    assert max(effects) > 0.1


def test_mixed_conditions_keep_their_order(tiny_network, tiny_detectors, values, task):
    source = ValueSource(values)
    first, second = tiny_network.layers
    conditions = [
        *_conditions(source, tiny_network, "response-gradient", [second]),
        {},
        *_conditions(source, tiny_network, "tuning", [first]),
        *_conditions(source, tiny_network, "gradient", list(tiny_network.layers), 0.1),
    ]
    fast = SweepEngine(tiny_network, tiny_detectors).condition_logits(task, conditions)
    slow = naive_condition_logits(tiny_network, tiny_detectors, task, conditions)
    assert _max_diff(fast, slow) <= TOLERANCE


def _count_tail_calls(network: Network) -> tuple[list[int], object]:
    """Count calls of the global pooling module, which every tail runs (shared with the network)."""
    calls = [0]

    def hook(*_args):
        calls[0] += 1

    return calls, network.submodule("pool").register_forward_hook(hook)


def test_tiny_memory_budget_forces_many_chunks_with_same_result(
    tiny_network, tiny_detectors, values, task
):
    source = ValueSource(values)
    for method, layers in [
        ("gradient", [tiny_network.layers[0]]),
        ("response-tuning", [tiny_network.layers[1]]),
        ("tuning", list(tiny_network.layers)),
    ]:
        conditions = _conditions(source, tiny_network, method, layers)
        roomy = SweepEngine(tiny_network, tiny_detectors)
        cramped = SweepEngine(tiny_network, tiny_detectors, memory_budget=1, chunk_bytes=1)
        roomy.condition_logits(task, conditions)  # first calls also probe memory use
        cramped.condition_logits(task, conditions)
        calls, handle = _count_tail_calls(tiny_network)
        try:
            roomy_logits = roomy.condition_logits(task, conditions)
            roomy_calls = calls[0]
            calls[0] = 0
            cramped_logits = cramped.condition_logits(task, conditions)
            cramped_calls = calls[0]
        finally:
            handle.remove()
        assert roomy_calls == 1  # one chunk: every condition and image in one batch
        assert cramped_calls == len(BETAS) * 12  # one row per chunk
        assert _max_diff(roomy_logits, cramped_logits) <= TOLERANCE
        slow = naive_condition_logits(tiny_network, tiny_detectors, task, conditions)
        assert _max_diff(cramped_logits, slow) <= TOLERANCE


def test_baseline_pass_feeds_the_conditions(tiny_network, tiny_detectors, values, task):
    source = ValueSource(values)
    engine = SweepEngine(tiny_network, tiny_detectors)
    first_conv = tiny_network.submodule(tiny_network.layers[0].name)
    calls = [0]
    handle = first_conv.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        baseline = engine.baseline_logits(task)
        assert torch.equal(baseline, target_logits(tiny_network, tiny_detectors, task))
        for layers in ([tiny_network.layers[1]], list(tiny_network.layers)):
            conditions = _conditions(source, tiny_network, "gradient", layers, factor=0.25)
            calls[0] = 0
            fast = engine.condition_logits(task, conditions)
            assert calls[0] == 0  # the start activity was kept: no head pass
            slow = naive_condition_logits(tiny_network, tiny_detectors, task, conditions)
            assert _max_diff(fast, slow) <= TOLERANCE
        other = make_task_set(make_image_set(10, split="test"), "c", "merged", 6, 6, seed=1)
        conditions = _conditions(source, tiny_network, "tuning", [tiny_network.layers[1]])
        calls[0] = 0
        fast = engine.condition_logits(other, conditions)
        assert calls[0] > 0  # another task set: its own head pass
        slow = naive_condition_logits(tiny_network, tiny_detectors, other, conditions)
        assert _max_diff(fast, slow) <= TOLERANCE
    finally:
        handle.remove()


def test_layout_can_be_switched_off(tiny_network, tiny_detectors, values, task):
    source = ValueSource(values)
    conditions = _conditions(source, tiny_network, "tuning", [tiny_network.layers[0]])
    slow = naive_condition_logits(tiny_network, tiny_detectors, task, conditions)
    engine = SweepEngine(tiny_network, tiny_detectors, channels_last=False)
    assert _max_diff(engine.condition_logits(task, conditions), slow) <= TOLERANCE


def test_spatial_and_negative_gains(tiny_network, tiny_detectors, task):
    first, second = tiny_network.layers
    feature = torch.tensor([1.5, 0.2])
    conditions = [
        {first: Modulation(spatial=SpatialCue(1, 0.5))},
        {first: Modulation(scale=feature, spatial=SpatialCue(2, 0.8))},
        {first: Modulation(scale=feature, spatial=SpatialCue(3, 0.8, additive=True))},
        {first: Modulation(scale=spatial_gain(8, 8, slice(0, 4), slice(4, 8), 0.5))},
        {first: Modulation(scale=torch.tensor([-1.0, 2.0]))},  # negative activity into max pool
        {first: Modulation(scale=torch.tensor([0.5, 2.0]), shift=torch.tensor([0.1, -0.3]))},
        {second: Modulation(spatial=SpatialCue(0, 1.0))},
        {
            first: Modulation(spatial=SpatialCue(0, 0.3)),
            second: Modulation(scale=torch.tensor([1.2, 0.9, 0.0]), spatial=SpatialCue(0, 0.3)),
        },
    ]
    fast = SweepEngine(tiny_network, tiny_detectors).condition_logits(task, conditions)
    slow = naive_condition_logits(tiny_network, tiny_detectors, task, conditions)
    assert _max_diff(fast, slow) <= TOLERANCE


def test_per_image_modulation_is_refused(tiny_network, tiny_detectors, task):
    engine = SweepEngine(tiny_network, tiny_detectors)
    per_image = Modulation(scale=torch.ones(12, 2, 8, 8))
    with pytest.raises(ConfigError, match="same for every image"):
        engine.condition_logits(task, [{tiny_network.layers[0]: per_image}])
    with pytest.raises(ConfigError, match="expected a Modulation"):
        engine.condition_logits(task, [{tiny_network.layers[0]: 2.0}])


def test_run_sweep_table_is_the_same_with_engine_and_naive(tiny_network, tiny_detectors, values):
    test = make_image_set(n_per_category=10, split="test")
    config = SweepConfig(
        image_types=("merged",),
        betas=(0.0, 0.25, 1.0, 4.0),
        n_pos=6,
        n_neg=6,
        methods=("tuning", "gradient", "shuffled-tuning", "response-gradient", "uniform"),
    )
    fast = run_sweep(tiny_network, tiny_detectors, values, test, config, progress=False)
    slow = run_sweep(
        tiny_network, tiny_detectors, values, test, config, progress=False, engine="naive"
    )
    pd.testing.assert_frame_equal(fast, slow, check_exact=False, rtol=1e-9, atol=1e-9)
    assert (fast["beta"] != 0).any() and fast["performance"].nunique() > 1
    custom = SweepEngine(tiny_network, tiny_detectors, memory_budget=4096, chunk_bytes=4096)
    again = run_sweep(
        tiny_network, tiny_detectors, values, test, config, progress=False, engine=custom
    )
    pd.testing.assert_frame_equal(again, slow, check_exact=False, rtol=1e-9, atol=1e-9)
    with pytest.raises(ConfigError, match="unknown sweep engine 'fast'"):
        run_sweep(tiny_network, tiny_detectors, values, test, config, engine="fast")


def _random_detectors(n_features: int, categories: tuple[str, ...], seed: int) -> Detectors:
    generator = torch.Generator().manual_seed(seed)
    k = len(categories)
    return Detectors(
        weight=torch.randn(k, n_features, generator=generator),
        bias=torch.randn(k, generator=generator),
        feature_mean=torch.rand(n_features, generator=generator),
        feature_std=0.5 + torch.rand(n_features, generator=generator),
        categories=categories,
    )


def test_fashion_vgg_split_matches_naive():
    network = build_network("fashion-vgg", seed=3)
    detectors = _random_detectors(64, ("x", "y"), seed=4)
    generator = torch.Generator().manual_seed(5)
    engine = SweepEngine(network, detectors)
    gains = {
        layer.alias: torch.rand(layer.channels, generator=generator) * 2 - 1
        for layer in network.layers
    }
    settings = [[layer] for layer in network.layers] + [list(network.layers)]
    for side in (28, 56):
        images = torch.rand(10, 1, side, side, generator=generator)
        labels = torch.tensor([0, 1] * 5)
        source = ImageSet(images, labels, ("x", "y"), "test")
        task = make_task_set(source, "x", "standard", n_pos=4, n_neg=4, seed=0)
        for layers in settings:
            conditions = [
                {la: Modulation(scale=feature_gain(gains[la.alias], beta)) for la in layers}
                for beta in (0.5, 2.0)
            ] + [
                {la: Modulation(shift=0.3 * gains[la.alias]) for la in layers},
            ]
            fast = engine.condition_logits(task, conditions)
            slow = naive_condition_logits(network, detectors, task, conditions)
            assert _max_diff(fast, slow) <= TOLERANCE, (side, [la.alias for la in layers])
    assert all(engine._plan([layer]) is not None for layer in network.layers)


def test_vgg16_splits_at_every_layer():
    with torch.device("meta"):
        network = Network(VGG16(), "vgg16", "classifier.6", (0.5,) * 3, (0.5,) * 3)
    engine = SweepEngine(network, _random_detectors(4096, ("x", "y"), seed=0))
    assert engine.supported
    for layer in network.layers:
        plan = engine._plan([layer])
        assert plan is not None and plan.n_boundary == 1
        tail_modules = {
            str(n.target) for n in plan.tail.module.graph.nodes if n.op == "call_module"
        }
        assert layer.activation not in tail_modules  # the attended ReLU runs in the head
        assert "classifier.3" in tail_modules and "classifier.6" not in tail_modules
    assert engine._plan(list(network.layers)).start_layer == network.layers[0]


class SkipNet(nn.Module):
    """A skip connection around the second attended layer: the split must carry it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.conv1(x))
        b = self.relu2(self.conv2(a))
        return self.fc(torch.flatten(self.pool(a + b), 1))


class BranchyNet(SkipNet):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.conv1(x))
        if a.sum() > 0:
            a = self.relu2(self.conv2(a))
        return self.fc(torch.flatten(self.pool(a), 1))


def _small_task() -> object:
    generator = torch.Generator().manual_seed(8)
    source = ImageSet(
        torch.rand(12, 1, 6, 6, generator=generator), torch.tensor([0, 1] * 6), ("x", "y"), "test"
    )
    return make_task_set(source, "y", "standard", n_pos=4, n_neg=4, seed=1)


@pytest.mark.parametrize("model", [SkipNet, BranchyNet])
def test_other_topologies(model):
    torch.manual_seed(0)
    network = Network(model(), model.__name__, "fc", (0.0,), (1.0,))
    detectors = _random_detectors(3, ("x", "y"), seed=1)
    task = _small_task()
    engine_module._warned_models.discard(model.__qualname__)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = SweepEngine(network, detectors)
        conditions = [
            {layer: Modulation(scale=torch.tensor([0.5, 2.0, 1.5]) * beta)}
            for layer in network.layers
            for beta in (0.5, 1.0)
        ] + [{la: Modulation(scale=torch.tensor([2.0, 0.1, 1.0])) for la in network.layers}]
        fast = engine.condition_logits(task, conditions)
    slow = naive_condition_logits(network, detectors, task, conditions)
    assert _max_diff(fast, slow) <= TOLERANCE
    messages = [str(w.message) for w in caught if "sweep engine" in str(w.message)]
    if model is SkipNet:
        assert engine.supported and not messages
        assert engine._plan([network.layers[1]]).n_boundary == 2  # carries the skip
    else:
        assert not engine.supported and len(messages) == 1
        assert "one full forward pass per condition" in messages[0]
