"""Attention on any CNN: built-in ImageNet architectures, call sites of reused, functional and
non-ReLU activations, the fallback for untraceable models, and the engine on branching graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bioattn
from bioattn.attention.gains import Modulation, modulate
from bioattn.attention.values import compute_values
from bioattn.data.imageset import ImageSet
from bioattn.data.tasks import make_task_set
from bioattn.errors import LayerError, WeightsError
from bioattn.experiments.engine import SweepEngine, naive_condition_logits
from bioattn.models.architectures import ARCHITECTURES
from bioattn.models.detectors import Detectors, fit_detectors
from bioattn.models.network import Network
from bioattn.models.zoo import build_network

PUBLISHED = Path(__file__).parent / "data" / "published_keys"
IMAGENET_MODELS = ("vgg16", "alexnet", "resnet18", "resnet50", "cornet-z", "cornet-s")


def _rgb_images(n_per_category: int = 6, size: int = 64, split: str = "train") -> ImageSet:
    """Three categories of RGB images: a bright band whose position and colour depend on it."""
    generator = torch.Generator().manual_seed(11 if split == "train" else 12)
    images, labels = [], []
    for k in range(3):
        base = torch.full((3, size, size), 0.2)
        base[k, (k * size) // 3 : ((k + 1) * size) // 3, :] = 0.9
        noise = 0.1 * torch.rand(n_per_category, 3, size, size, generator=generator)
        images.append((base + noise).clamp(0, 1))
        labels.append(torch.full((n_per_category,), k))
    return ImageSet(torch.cat(images), torch.cat(labels), ("red", "green", "blue"), split)


def _detectors(network: Network, images: ImageSet) -> Detectors:
    features = network.readout_features(images.images)
    return fit_detectors(features, images.labels, images.categories, max_iter=50)


# --- published weight layouts ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_state_dict_keys_match_the_published_release(name):
    published = json.loads((PUBLISHED / f"{name}.json").read_text())
    with torch.device("meta"):
        module = ARCHITECTURES[name].build(1000)
    ours = [[key, list(value.shape)] for key, value in module.state_dict().items()]
    assert ours == published["keys"], published["source"]


@pytest.fixture(scope="module")
def cornet_z_checkpoint(tmp_path_factory) -> tuple[Path, nn.Module]:
    """A CORnet-Z file laid out as the released one: DataParallel keys under 'state_dict'."""
    torch.manual_seed(3)
    module = ARCHITECTURES["cornet-z"].build(1000).eval()
    path = tmp_path_factory.mktemp("weights") / "cornet_z.pth"
    state = {f"module.{key}": value for key, value in module.state_dict().items()}
    torch.save({"epoch": torch.tensor(70), "state_dict": state}, path)
    return path, module


def test_a_released_checkpoint_layout_loads_safely(cornet_z_checkpoint):
    path, source = cornet_z_checkpoint
    network = build_network("cornet-z", weights=path)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = source(network.preprocess(images))
        assert torch.equal(network(network.preprocess(images)), expected)


def test_weights_of_another_architecture_name_the_right_one(cornet_z_checkpoint):
    path, _ = cornet_z_checkpoint
    with pytest.raises(WeightsError, match=r"holds a 'cornet-z' state dict.*--model cornet-z"):
        build_network("resnet18", weights=path)


def test_batch_norm_files_without_counters_load(tmp_path):
    torch.manual_seed(0)
    module = ARCHITECTURES["resnet18"].build(10)
    state = {k: v for k, v in module.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "old.pth")
    network = build_network("resnet18", weights=tmp_path / "old.pth")
    assert network.module.fc.out_features == 10
    torch.testing.assert_close(
        network.module.layer1[0].bn1.running_var, state["layer1.0.bn1.running_var"]
    )


# --- every built-in runs values and a sweep ----------------------------------------------------


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_each_architecture_runs_values_and_a_two_layer_sweep(name):
    network = build_network(name, seed=0)
    train, test = _rgb_images(), _rgb_images(split="test")
    detectors = _detectors(network, train)
    values = compute_values(network, detectors, train, ("merged",), 3, seed=0, progress=False)
    units = sum(layer.channels for layer in network.layers)
    assert values["tuning"].shape == (3, units)
    assert np.isfinite(values["gradient_merged"].values).all()
    two = [network.layers[0], network.layers[-1]]
    settings = bioattn.layer_settings(network, two, all_layers=False)
    grid = bioattn.Grid.of(settings, ["tuning", "gradient"], [0, 2.0])
    tasks = {c: make_task_set(test, c, "merged", 3, 3, seed=k) for k, c in enumerate(("red",))}
    sink = bioattn.run(
        tasks,
        grid,
        bioattn.make_evaluator(network, detectors),
        bioattn.PerformanceSink("category"),
        bioattn.ValueSource(values),
        progress=False,
    )
    table = sink.table()
    assert set(table["layer"]) >= {two[0].alias, two[1].alias}
    assert np.isfinite(table.select_dtypes("number").to_numpy(dtype=float)).all()


# --- the engine on graphs with branches and recurrence -----------------------------------------


def _random_detectors(network: Network, seed: int = 0) -> Detectors:
    features = network.readout_features(torch.rand(2, 3, 32, 32))
    generator = torch.Generator().manual_seed(seed)
    width = features.shape[1]
    return Detectors(
        weight=torch.randn(3, width, generator=generator) / width**0.5,
        bias=torch.zeros(3),
        feature_mean=features.mean(0),
        feature_std=torch.ones(width),
        categories=("red", "green", "blue"),
    )


@pytest.mark.parametrize(
    ("name", "sites"),
    [
        ("resnet18", ["relu", "layer1.0.relu:0", "layer1.0.relu:1", "layer3.1.relu:0"]),
        ("cornet-s", ["V1.nonlin1", "V2.nonlin1:0", "V2.nonlin3:1", "V4.nonlin2:3"]),
    ],
)
def test_engine_equals_naive_on_branching_graphs(name, sites):
    network = build_network(name, seed=1)
    detectors = _random_detectors(network)
    source = _rgb_images(n_per_category=4, size=32, split="test")
    task = make_task_set(source, "red", "merged", 3, 3, seed=0)
    generator = torch.Generator().manual_seed(2)
    layers = [network.resolve_layer(site) for site in sites]
    conditions = [
        {layer: Modulation(scale=0.5 + torch.rand(layer.channels, generator=generator))}
        for layer in layers
    ]
    conditions.append(
        {
            la: Modulation(scale=1.0 + 0.3 * torch.randn(la.channels, generator=generator))
            for la in layers
        }
    )
    if name == "cornet-s":
        group = network.resolve_layer("V4.nonlin1:*")
        conditions.append(
            {group: Modulation(scale=torch.rand(group.channels, generator=generator))}
        )
    engine = SweepEngine(network, detectors)
    assert engine.supported
    assert all(engine._plan([layer]) is not None for layer in layers)
    naive = naive_condition_logits(network, detectors, task, conditions)
    split = engine.condition_logits(task, conditions)
    assert float((split - naive).abs().max()) <= 1e-5
    assert float((naive - naive[0]).abs().max()) > 1e-4  # the conditions differ


# --- call sites ----------------------------------------------------------------------------------


class ReusedRelu(nn.Module):
    """One ReLU module after both convs, as torchvision's ResNet blocks reuse theirs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_a_reused_module_gives_one_site_per_call_and_attends_only_that_call():
    torch.manual_seed(0)
    network = Network(ReusedRelu(), "reused", "fc", (0.0,), (1.0,))
    assert [(la.name, la.activation, la.call, la.conv) for la in network.layers] == [
        ("relu:0", "relu", 0, "conv1"),
        ("relu:1", "relu", 1, "conv2"),
    ]
    with pytest.raises(LayerError, match=r"called 2 times.*relu:0, relu:1.*relu:\*"):
        network.resolve_layer("relu")
    module = network.module
    x = torch.rand(4, 1, 6, 6)
    gain = torch.tensor([0.0, 2.0, 0.5]).view(1, 3, 1, 1)

    def by_hand(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        a = F.relu(module.conv1(x)) * first
        b = F.relu(module.conv2(a)) * second
        return module.fc(b.mean(dim=(2, 3)))

    with torch.no_grad():
        with modulate(network, {"relu:1": Modulation(scale=gain.flatten())}):
            second_only = network(x)
        with modulate(network, {"relu:0": Modulation(scale=gain.flatten())}):
            first_only = network(x)
        with modulate(network, {"relu:*": Modulation(scale=gain.flatten())}):
            both = network(x)
        torch.testing.assert_close(second_only, by_hand(torch.ones(1), gain))
        torch.testing.assert_close(first_only, by_hand(gain, torch.ones(1)))
        torch.testing.assert_close(both, by_hand(gain, gain))
        torch.testing.assert_close(network(x), by_hand(torch.ones(1), torch.ones(1)))


class Functional(nn.Module):
    """Functional ReLU at the top level and GELU inside a block; an MLP head with a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.block = GeluBlock()
        self.head = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = self.block(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class GeluBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 5, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(F.gelu(self.conv(x)) + x.mean(1, keepdim=True))


def test_functional_and_non_relu_activations_are_sites_and_mlp_heads_are_not():
    torch.manual_seed(0)
    network = Network(Functional(), "functional", "head.2", (0.5,) * 3, (0.5,) * 3)
    assert [(la.name, la.kind, la.activation) for la in network.layers] == [
        ("relu", "ReLU", ""),
        ("block.gelu", "GELU", ""),
        ("block.act", "SiLU", "block.act"),
    ]
    module = network.module
    x = torch.rand(2, 3, 8, 8)
    gain = torch.tensor([1.5, 0.0, 1.0, 0.5, 2.0])
    with torch.no_grad(), modulate(network, {"block.gelu": Modulation(scale=gain)}):
        attended = network(x)
    with torch.no_grad():
        h = F.relu(module.conv1(x))
        g = F.gelu(module.block.conv(h)) * gain.view(1, -1, 1, 1)
        out = module.block.act(g + h.mean(1, keepdim=True))
        expected = module.head(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))
    torch.testing.assert_close(attended, expected)
    features = network.readout_features(x)
    assert features.shape == (2, 6)


class Untraceable(nn.Module):
    """Data-dependent control flow (fx cannot trace it); ``relu`` runs a second time when the
    activity's sum reaches ``threshold`` (always at 0; not for the zero probe image at 1)."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        if x.sum() >= self.threshold:
            x = self.relu(x)
        return self.fc(self.act2(self.conv2(x)).mean(dim=(2, 3)))


def test_untraceable_models_fall_back_to_hooks_and_refuse_reused_modules():
    with pytest.warns(UserWarning, match=r"cannot trace.*reused modules are refused \(relu\)"):
        network = Network(Untraceable(0.0), "branchy", "fc", (0.0,), (1.0,))
    assert [la.name for la in network.layers] == ["act2"]
    with pytest.raises(LayerError, match="called 2 times per forward pass"):
        network.resolve_layer("relu")
    x = torch.rand(2, 1, 5, 5)
    with torch.no_grad():
        plain = network(x)
        with modulate(network, {"act2": Modulation(scale=torch.zeros(2))}):
            silenced = network(x)
    torch.testing.assert_close(silenced, network.module.fc.bias.expand(2, 2))
    assert not torch.allclose(plain, silenced)


def test_a_module_reused_only_on_some_inputs_is_caught_when_it_happens():
    module = Untraceable(1.0)
    nn.init.constant_(module.conv1.weight, 0.1)
    nn.init.zeros_(module.conv1.bias)  # the zero probe image gives zero activity
    with pytest.warns(UserWarning, match="cannot trace"):
        network = Network(module, "branchy", "fc", (0.0,), (1.0,))
    assert "relu" in [la.name for la in network.layers]  # the zero probe image ran it once
    with (
        pytest.raises(LayerError, match="called more than once in one forward pass"),
        modulate(network, {"relu": Modulation(scale=torch.ones(2))}),
    ):
        network(torch.ones(1, 1, 5, 5))


class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 3)
        self.unused = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))}


def test_outputs_need_not_be_tensors_but_the_readout_must_be_called():
    network = Network(DictOutput(), "dict", "fc", (0.0,), (1.0,))
    assert network.readout_features(torch.rand(3, 1, 6, 6)).shape == (3, 2)
    with pytest.raises(LayerError, match="'unused' is never called"):
        Network(DictOutput(), "dict", "unused", (0.0,), (1.0,))


def test_a_site_name_that_no_longer_exists_lists_the_valid_ones():
    network = build_network("resnet18")
    with pytest.raises(LayerError) as info:
        network.resolve_layer("layer1.0.relu:2")
    message = str(info.value)
    assert "layer1.0.relu:0" in message and "layer1.0.relu:*" in message
    assert "bioattn layers" in message


def test_cornet_s_has_a_site_per_time_step_and_a_group_for_all():
    network = build_network("cornet-s")
    v4 = [la for la in network.layers if la.activation == "V4.nonlin1"]
    assert [la.name for la in v4] == [f"V4.nonlin1:{t}" for t in range(4)]
    group = network.resolve_layer("V4.nonlin1:*")
    assert group.members == tuple(la.alias for la in v4) and group.channels == 1024
    sizes = [la.size for la in v4]
    assert sizes[0] == (28, 28) and sizes[1:] == [(14, 14)] * 3  # step 0 runs before the stride


def test_layers_command_shows_every_site(capsys):
    from bioattn.cli import main

    assert main(["layers", "resnet18"]) == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[0].split()
    assert header == ["#", "name", "alias", "module", "call", "kind", "conv", "maps", "size"]
    assert "layer1.0.relu:1" in printed and "56x56" in printed and "layer4.1.relu:*" in printed


def test_the_readout_can_be_chosen_per_model_and_in_the_config():
    from bioattn.experiments.config import parse_config

    network = build_network("cornet-z", readout="IT")  # the input of IT: V4's pooled maps
    assert network.readout_features(torch.rand(1, 3, 32, 32)).shape == (1, 256 * 2 * 2)
    config = parse_config({"model": {"spec": "cornet-z", "readout": "IT"}})
    assert config.model.readout == "IT"
    with pytest.raises(LayerError, match="readout module 'nope' not found"):
        build_network("cornet-z", readout="nope")


def test_site_activity_is_read_per_call():
    from bioattn.models.hooks import record_map_means

    torch.manual_seed(0)
    network = Network(ReusedRelu(), "reused", "fc", (0.0,), (1.0,))
    x = torch.rand(3, 1, 6, 6)
    means = record_map_means(network, x)
    module = network.module
    with torch.no_grad():
        first = F.relu(module.conv1(x))
        second = F.relu(module.conv2(first))
    torch.testing.assert_close(means["relu:0"], first.mean(dim=(2, 3)))
    torch.testing.assert_close(means["relu:1"], second.mean(dim=(2, 3)))


# --- review fixes: names, fallbacks, groups, the SSN builder ---------------------------------


class Colliding(nn.Module):
    """A ``relu`` module and an ``F.relu`` call in one block."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.c2 = nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c2(self.relu(self.c1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_a_functional_call_never_takes_a_modules_name():
    network = Network(Colliding(), "colliding", "fc", (0.0,), (1.0,))
    assert [la.name for la in network.layers] == ["relu", "relu()"]
    assert len({la.alias for la in network.layers}) == 2


class StateChanging(nn.Module):
    """Changes a conv's stride inside forward (as the released CORnet-S does): a trace bakes in
    one stride, so the traced graph does not compute what forward does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conv.stride = (2, 2)
        x = self.relu(self.conv(x))
        self.conv.stride = (1, 1)
        x = self.act2(self.conv(x[:, :1]))
        return self.fc(x.sum(dim=(2, 3)))


def test_a_graph_that_does_not_reproduce_forward_falls_back_to_hooks():
    module = StateChanging()
    nn.init.constant_(module.conv.weight, 0.1)  # active maps, so the strides show in the output
    nn.init.constant_(module.conv.bias, 0.1)
    with pytest.warns(UserWarning, match="does not compute what the model's forward does"):
        network = Network(module, "stateful", "fc", (0.0,), (1.0,))
    assert network.sites.graph is None
    assert [(la.name, la.size) for la in network.layers] == [("relu", (32, 32)), ("act2", (32, 32))]


class FixedHead(nn.Module):
    """Untraceable, with a linear head that takes 28x28 inputs only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2 * 28 * 28, 2)

    def forward(self, x: torch.Tensor, flat: bool = True) -> torch.Tensor:
        x = self.relu(self.conv(x))
        if flat:
            x = torch.flatten(x, 1)
        return self.fc(x)


def test_failed_probe_sizes_do_not_count_as_calls():
    with pytest.warns(UserWarning, match="cannot trace") as caught:
        network = Network(FixedHead(), "fixed", "fc", (0.0,), (1.0,))
    assert [la.name for la in network.layers] == ["relu"]
    assert network.sites.probe_size == 28
    assert not any("refused" in str(w.message) for w in caught)


def test_two_groups_in_one_engine_get_their_own_plans():
    network = build_network("cornet-s", seed=0)
    detectors = _random_detectors(network)
    task = make_task_set(_rgb_images(4, 32, "test"), "red", "merged", 2, 2, seed=0)
    groups = [network.resolve_layer(name) for name in ("V2.nonlin1:*", "V4.nonlin1:*")]
    conditions = [{g: Modulation(scale=torch.full((g.channels,), 1.5))} for g in groups]
    engine = SweepEngine(network, detectors)
    split = torch.cat([engine.condition_logits(task, [c]) for c in conditions])
    naive = naive_condition_logits(network, detectors, task, conditions)
    # (one gain at all four V4 steps compounds float32 rounding: relative 1e-4 here)
    torch.testing.assert_close(split, naive, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(split[0], split[1])


def test_the_ssn_builder_refuses_functional_and_reused_activations():
    from bioattn.ssn.builder import build_ssn_network

    functional = Network(Colliding(), "colliding", "fc", (0.0,), (1.0,))
    with pytest.raises(LayerError, match="functional activation"):
        build_ssn_network(functional, ["relu()"])
    reused = Network(ReusedRelu(), "reused", "fc", (0.0,), (1.0,))
    with pytest.raises(LayerError, match=r"runs at 2 sites \(relu:0, relu:1\)"):
        build_ssn_network(reused, ["relu:0"])


def test_moving_a_network_while_it_is_modulated_is_refused():
    from bioattn.errors import ConfigError

    network = Network(ReusedRelu(), "reused", "fc", (0.0,), (1.0,))
    with (
        modulate(network, {"relu:0": Modulation(scale=torch.zeros(3))}),
        pytest.raises(ConfigError, match="move it first"),
    ):
        network.to("cpu")
    assert network.to("cpu") is network


def test_shard_names_of_site_names_are_file_name_safe():
    from bioattn.experiments.shards import Shard

    names = {Shard("Bag", layer).name for layer in ("layer1.0.relu:1", "layer1.0.relu:0", "V4.r:*")}
    assert len(names) == 3 and all(":" not in n and "*" not in n for n in names)
    assert Shard("Bag", "conv1_1").name.endswith("__conv1_1")  # unchanged for plain aliases
