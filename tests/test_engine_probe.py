"""SweepEngine.condition_readings gives the naive path's logits and layer readings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bioattn.attention.gains import Modulation, SpatialCue
from bioattn.attention.rules import ALL_LAYERS_FACTOR, ValueSource, parse_rule
from bioattn.data.imageset import ImageSet
from bioattn.data.tasks import TaskSet, make_task_set
from bioattn.experiments.engine import SweepEngine, naive_condition_logits
from bioattn.experiments.evaluate import ModulationEvaluator, Probe
from bioattn.models.detectors import Detectors
from bioattn.models.network import LayerInfo, Network
from tests.conftest import make_image_set, make_tiny_network

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
BETAS = (0.5, 1.0, 4.0)
METHODS = ("tuning", "gradient", "uniform", "response-gradient", "response-tuning")


@pytest.fixture
def tiny_network() -> Network:
    """conftest's TinyNet with a seed whose every map is active on the test images."""
    return make_tiny_network(5)


@pytest.fixture
def tiny_detectors(tiny_network, tiny_images) -> Detectors:
    """conftest's detector weights, standardised on this network so that logits spread."""
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
def task() -> TaskSet:
    test = make_image_set(n_per_category=10, split="test")
    return make_task_set(test, "b", "merged", n_pos=6, n_neg=6, seed=0)


def _conditions(
    source: ValueSource, method: str, layers: list[LayerInfo], image_type: str = "merged"
) -> list[dict[LayerInfo, Modulation]]:
    rule = parse_rule(method)
    factor = ALL_LAYERS_FACTOR if len(layers) > 1 else 1.0
    return [
        {la: rule.modulation(source, image_type, "b", la, beta * factor) for la in layers}
        for beta in BETAS
    ]


def _reference(
    network: Network,
    detectors: Detectors,
    task: TaskSet,
    conditions: list[dict],
    probe: Probe,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ModulationEvaluator's full hooked passes, stacked over the conditions."""
    evaluator = ModulationEvaluator(network, detectors, engine=None)
    rows = [
        evaluator._forward(task, {network.resolve_layer(k): v for k, v in c.items()}, probe)
        for c in conditions
    ]
    logits = torch.stack([logit for logit, _ in rows])
    return logits, {key: torch.stack([r[key] for _, r in rows]) for key in rows[0][1]}


def _full_passes(engine: SweepEngine) -> int:
    """Images the engine has run through full forward passes so far."""
    return sum(count for (kind, *_), count in engine.work.items() if kind == "full")


def _assert_matches(
    engine: SweepEngine,
    task: TaskSet,
    conditions: list[dict],
    probe: Probe,
    split: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """condition_readings equals the reference; with ``split``, it ran at most one full pass
    (the unattended one) and put the conditions through the tails."""
    before = _full_passes(engine)
    logits, readings = engine.condition_readings(task, conditions, probe)
    if split:
        assert _full_passes(engine) - before <= len(task)
    ref_logits, ref_readings = _reference(engine.network, engine.detectors, task, conditions, probe)
    torch.testing.assert_close(logits, ref_logits, **TOLERANCE)
    assert readings.keys() == ref_readings.keys()
    for key, value in ref_readings.items():
        assert readings[key].shape == value.shape, key
        torch.testing.assert_close(readings[key], value, **TOLERANCE)
    return logits, readings


def _columns(network: Network, probe: Probe, layer: LayerInfo) -> slice:
    """The units of ``layer`` in the probe's ``mean``/``quadrant`` readings."""
    start = 0
    for la in probe.layers:
        if la == layer:
            return slice(start, start + la.channels)
        start += la.channels
    raise AssertionError(layer)


@pytest.mark.parametrize("method", METHODS)
def test_single_layer_conditions_match_naive(tiny_network, tiny_detectors, values, task, method):
    source = ValueSource(values)
    engine = SweepEngine(tiny_network, tiny_detectors)
    first, second = tiny_network.layers
    probe = Probe(tuple(tiny_network.layers), quadrants=True, full_maps=(second,))
    _, unattended = _reference(tiny_network, tiny_detectors, task, [{}], probe)
    effects = []
    for layer in tiny_network.layers:
        conditions = _conditions(source, method, [layer])
        _, readings = _assert_matches(engine, task, conditions, probe)
        assert readings["mean"].shape == (len(BETAS), 12, 5)
        assert readings["quadrant"].shape == (len(BETAS), 12, 5, 4)
        assert readings[f"maps_{second.alias}"].shape == (len(BETAS), 12, 3, 4, 4)
        effects.append(float((readings["mean"] - unattended["mean"]).abs().max()))
        if layer == second:  # the first layer comes before the split: unattended, exactly
            columns = _columns(tiny_network, probe, first)
            for key in ("mean", "quadrant"):
                expected = unattended[key][:, :, columns].expand_as(readings[key][:, :, columns])
                assert torch.equal(readings[key][:, :, columns], expected)
    assert max(effects) > 1e-3  # attention changes what is read


@pytest.mark.parametrize("method", ["tuning", "gradient", "response-gradient"])
def test_all_layers_conditions_match_naive(tiny_network, tiny_detectors, values, task, method):
    source = ValueSource(values)
    engine = SweepEngine(tiny_network, tiny_detectors)
    probe = Probe(tuple(tiny_network.layers), full_maps=tuple(tiny_network.layers))
    conditions = _conditions(source, method, list(tiny_network.layers))
    _assert_matches(engine, task, conditions, probe)


def test_earlier_layers_are_the_unattended_readings(tiny_network, tiny_detectors, values, task):
    """Probes that read only layers before the split, or mix them with later ones."""
    source = ValueSource(values)
    first, second = tiny_network.layers
    conditions = _conditions(source, "gradient", [second])
    engine = SweepEngine(tiny_network, tiny_detectors)
    for probe in (
        Probe((first,)),
        Probe((first,), quadrants=True, full_maps=(first,)),
        Probe((second,), full_maps=(first,)),
        Probe((second, first), quadrants=True, full_maps=(second, first)),
    ):
        _, readings = _assert_matches(engine, task, conditions, probe)
        _, unattended = _reference(tiny_network, tiny_detectors, task, [{}], probe)
        if first in probe.full_maps:
            maps = unattended[f"maps_{first.alias}"].expand_as(readings[f"maps_{first.alias}"])
            assert torch.equal(readings[f"maps_{first.alias}"], maps)
        if first in probe.layers:
            columns = _columns(tiny_network, probe, first)
            expected = unattended["mean"][:, :, columns].expand(len(BETAS), -1, -1)
            assert torch.equal(readings["mean"][:, :, columns], expected)


def test_mixed_conditions_keep_their_order(tiny_network, tiny_detectors, values, task):
    source = ValueSource(values)
    first, second = tiny_network.layers
    conditions = [
        *_conditions(source, "response-gradient", [second]),
        {},
        *_conditions(source, "tuning", [first]),
        {},
        *_conditions(source, "gradient", list(tiny_network.layers)),
    ]
    probe = Probe(tuple(tiny_network.layers), quadrants=True, full_maps=(first,))
    engine = SweepEngine(tiny_network, tiny_detectors)
    logits, readings = _assert_matches(engine, task, conditions, probe)
    empty = len(BETAS)
    assert torch.equal(logits[empty], engine.baseline_logits(task))
    assert torch.equal(readings["mean"][empty], readings["mean"][2 * empty + 1])
    assert engine.condition_readings(task, [], probe)[0].shape == (0, 12)


def test_tiny_memory_budget_gives_the_same_readings(tiny_network, tiny_detectors, values, task):
    source = ValueSource(values)
    probe = Probe(tuple(tiny_network.layers), quadrants=True, full_maps=tuple(tiny_network.layers))
    cramped = SweepEngine(tiny_network, tiny_detectors, memory_budget=1, chunk_bytes=1)
    no_cache = SweepEngine(tiny_network, tiny_detectors, keep_activity=False, channels_last=False)
    for layers in ([tiny_network.layers[0]], [tiny_network.layers[1]], list(tiny_network.layers)):
        conditions = _conditions(source, "gradient", layers)
        for engine in (cramped, no_cache):
            _assert_matches(engine, task, conditions, probe)
    assert cramped.work["tail", tiny_network.layers[0].alias, (1, 8, 8)] > 0


def _five_categories(n_per_category: int = 6, size: int = 8) -> ImageSet:
    """Five categories (arrays need four non-targets) of patterned 8 × 8 images."""
    generator = torch.Generator().manual_seed(4)
    images, labels = [], []
    for k in range(5):
        base = torch.zeros(1, size, size)
        base[:, k : k + 3, :] = 0.7
        base[:, :, (k * 2) % size : (k * 2) % size + 2] += 0.3
        images.append(
            base.clamp(0, 1) + 0.1 * torch.rand(n_per_category, 1, size, size, generator=generator)
        )
        labels.append(torch.full((n_per_category,), k))
    return ImageSet(torch.cat(images), torch.cat(labels), ("a", "b", "c", "d", "e"), "test")


def test_array_images_with_quadrants_and_maps(tiny_network, tiny_detectors, values):
    source = ValueSource(values)
    task = make_task_set(_five_categories(), "b", "array", n_pos=4, n_neg=4, seed=0)
    assert task.images.shape[-2:] == (16, 16)
    first, second = tiny_network.layers
    probe = Probe(tuple(tiny_network.layers), quadrants=True, full_maps=(first,))
    engine = SweepEngine(tiny_network, tiny_detectors)
    settings = [[first], [second], list(tiny_network.layers)]
    for layers in settings:
        conditions = _conditions(source, "tuning", layers, image_type="merged")
        _, readings = _assert_matches(engine, task, conditions, probe)
        assert readings["quadrant"].shape == (len(BETAS), 8, 5, 4)
        assert readings[f"maps_{first.alias}"].shape == (len(BETAS), 8, 2, 16, 16)
    cued = [
        {first: Modulation(spatial=SpatialCue(1, 0.5))},
        {first: Modulation(scale=torch.tensor([1.5, 0.2]), spatial=SpatialCue(2, 0.8))},
        {second: Modulation(spatial=SpatialCue(3, 0.8, additive=True))},
        {
            first: Modulation(spatial=SpatialCue(0, 0.3)),
            second: Modulation(shift=torch.tensor([0.1, -0.2, 0.3]), spatial=SpatialCue(0, 0.3)),
        },
    ]
    _, readings = _assert_matches(engine, task, cued, probe)
    # the cue raises the cued quadrant's activity relative to the others
    quadrant = readings["quadrant"][0, :, :2]
    assert bool((quadrant[..., 1] > quadrant[..., 0]).any())


class SharedReluNet(nn.Module):
    """One ReLU module after both convs: its layer is a reused activation (fallback path)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv3 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.conv1(x))
        b = self.relu(self.conv2(a))
        return self.fc(torch.flatten(self.pool(self.relu3(self.conv3(b))), 1))


def _small_task() -> TaskSet:
    generator = torch.Generator().manual_seed(8)
    source = ImageSet(
        torch.rand(12, 1, 6, 6, generator=generator), torch.tensor([0, 1] * 6), ("x", "y"), "test"
    )
    return make_task_set(source, "y", "standard", n_pos=4, n_neg=4, seed=1)


def test_each_call_of_a_reused_activation_is_its_own_site_and_splits():
    torch.manual_seed(0)
    network = Network(SharedReluNet(), "shared-relu", "fc", (0.0,), (1.0,))
    assert [la.name for la in network.layers] == ["relu:0", "relu:1", "relu3"]
    generator = torch.Generator().manual_seed(1)
    detectors = Detectors(
        weight=torch.randn(2, 4, generator=generator),
        bias=torch.zeros(2),
        feature_mean=torch.zeros(4),
        feature_std=torch.ones(4),
        categories=("x", "y"),
    )
    task = _small_task()
    first, second, last = network.layers
    both = network.resolve_layer("relu:*")
    probe = Probe(tuple(network.layers), quadrants=True, full_maps=(second,))
    conditions = [
        {second: Modulation(scale=torch.tensor([0.5, 2.0, 1.5]) * beta)} for beta in (0.5, 2.0)
    ] + [
        {first: Modulation(scale=torch.tensor([2.0, 0.1, 1.0]))},
        {last: Modulation(scale=torch.tensor([2.0, 0.1, 1.0, 0.5]))},
        {
            second: Modulation(shift=torch.tensor([0.1, 0.0, -0.1])),
            last: Modulation(shift=torch.full((4,), 0.2)),
        },
    ]
    engine = SweepEngine(network, detectors)
    _assert_matches(engine, task, conditions, probe, split=True)
    # the group attends both calls: through the engine (no probe) it equals the naive path
    grouped = [{both: Modulation(scale=torch.tensor([0.5, 2.0, 1.5]))}]
    naive = naive_condition_logits(network, detectors, task, grouped)
    np.testing.assert_allclose(
        engine.condition_logits(task, grouped).numpy(), naive.numpy(), atol=1e-5
    )


class SkipNet(nn.Module):
    """A skip connection around the second layer: its tails take two boundary tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(3, 2, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.conv1(x))
        b = self.relu2(self.conv2(a))
        return self.fc(torch.flatten(self.pool(self.relu3(self.conv3(a + b))), 1))


def test_skip_connection_split():
    torch.manual_seed(2)
    network = Network(SkipNet(), "skip", "fc", (0.0,), (1.0,))
    detectors = Detectors(
        weight=torch.tensor([[1.0, -1.0], [0.5, 2.0]]),
        bias=torch.zeros(2),
        feature_mean=torch.zeros(2),
        feature_std=torch.ones(2),
        categories=("x", "y"),
    )
    first, second, third = network.layers
    gains = {first: [0.5, 2.0, 1.5], second: [2.0, 0.1, 1.0], third: [1.5, 0.5]}
    conditions = [
        {la: Modulation(scale=torch.tensor(gains[la]) * beta) for la in layers}
        for layers in ([first], [second], [third], [first, second, third])
        for beta in (0.5, 2.0)
    ]
    probe = Probe((first, second, third), quadrants=True, full_maps=(second,))
    engine = SweepEngine(network, detectors)
    _assert_matches(engine, _small_task(), conditions, probe)
    plan = engine._plan([second], probe.hooked)
    assert plan is not None and plan.n_boundary == 2 and plan.probed == (third,)
