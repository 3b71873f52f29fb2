"""Model zoo, layer names and safe weight loading."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from bioattn.errors import ConfigError, LayerError, WeightsError
from bioattn.models import (
    FASHION_CATEGORIES,
    IMAGENET_MEAN,
    VGG16,
    FashionVGG,
    Network,
    build_network,
    list_models,
    load_state_dict_file,
    load_weights,
    save_weights,
)

VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG16_CHANNELS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
VGG16_ALIASES = [
    "conv1_1",
    "conv1_2",
    "conv2_1",
    "conv2_2",
    "conv3_1",
    "conv3_2",
    "conv3_3",
    "conv4_1",
    "conv4_2",
    "conv4_3",
    "conv5_1",
    "conv5_2",
    "conv5_3",
]


def _torchvision_vgg16_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """torchvision vgg16().state_dict() keys and shapes, in order (written out by hand)."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    in_channels = 3
    for index, out_channels in zip(VGG16_CONVS, VGG16_CHANNELS, strict=True):
        shapes.append((f"features.{index}.weight", (out_channels, in_channels, 3, 3)))
        shapes.append((f"features.{index}.bias", (out_channels,)))
        in_channels = out_channels
    shapes += [
        ("classifier.0.weight", (4096, 25088)),
        ("classifier.0.bias", (4096,)),
        ("classifier.3.weight", (4096, 4096)),
        ("classifier.3.bias", (4096,)),
        ("classifier.6.weight", (1000, 4096)),
        ("classifier.6.bias", (1000,)),
    ]
    return shapes


@pytest.fixture(scope="module")
def vgg16() -> Network:
    """One randomly initialised VGG-16 for the whole module (138M parameters: build it once)."""
    return build_network("vgg16", seed=0)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a Python module with model factories to a temporary folder on sys.path."""
    name = f"bioattn_user_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            from bioattn.models import Network

            bioattn_mean = (0.1, 0.2)
            bioattn_std = [0.3, 0.4]
            bioattn_input_size = 32
            bioattn_categories = ("a", "b", "c")


            def make_tiny():
                return nn.Sequential(
                    nn.Conv2d(2, 4, 3, padding=1),
                    nn.ReLU(),
                    nn.Conv2d(4, 5, 3, padding=1),
                    nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(),
                    nn.Linear(5, 6),
                    nn.ReLU(),
                    nn.Linear(6, 3),
                )


            def make_network():
                return Network(
                    module=make_tiny(),
                    name="mine",
                    readout="6",
                    mean=(0.5,),
                    std=(0.5,),
                )


            def make_nothing():
                return 42


            def make_no_linear():
                return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU())
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


class Canary:
    """A picklable object whose unpickling would leave a trace."""

    unpickled: list[str] = []  # noqa: RUF012

    def __setstate__(self, state: dict) -> None:
        Canary.unpickled.append("ran")
        self.__dict__.update(state)


# --- VGG-16 ---------------------------------------------------------------------------------


def test_vgg16_state_dict_matches_torchvision(vgg16: Network) -> None:
    assert isinstance(vgg16.module, VGG16)
    state = vgg16.module.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == _torchvision_vgg16_shapes()
    features = vgg16.module.features
    assert len(features) == 31
    for index in VGG16_CONVS:
        assert isinstance(features[index], nn.Conv2d)
        assert isinstance(features[index + 1], nn.ReLU) and features[index + 1].inplace
    assert [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)] == [4, 9, 16, 23, 30]
    classifier = vgg16.module.classifier
    assert [type(m).__name__ for m in classifier] == [
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    assert vgg16.module.avgpool.output_size == (7, 7)


def test_vgg16_initialisation(vgg16: Network) -> None:
    state = vgg16.module.state_dict()  # detached tensors
    assert all(float(state[f"features.{i}.bias"].abs().max()) == 0 for i in VGG16_CONVS)
    assert float(state["classifier.6.bias"].abs().max()) == 0
    assert abs(float(state["classifier.6.weight"].std()) - 0.01) < 1e-3
    # Kaiming normal, fan out, ReLU gain: std = sqrt(2 / (out_channels * 9))
    assert abs(float(state["features.0.weight"].std()) - (2 / (64 * 9)) ** 0.5) < 0.01


def test_vgg16_network_settings_and_small_forward(vgg16: Network) -> None:
    assert vgg16.readout == "classifier.6"
    assert vgg16.input_size == 224
    assert vgg16.mean == IMAGENET_MEAN
    assert not vgg16.module.training
    features = vgg16.readout_features(torch.rand(1, 3, 64, 64))  # fc7, one small forward pass
    assert features.shape == (1, 4096)
    assert torch.isfinite(features).all()


def test_vgg16_layer_names(vgg16: Network) -> None:
    assert len(vgg16.layers) == 13
    assert [layer.alias for layer in vgg16.layers] == VGG16_ALIASES
    assert [layer.conv for layer in vgg16.layers] == [f"features.{i}" for i in VGG16_CONVS]
    assert [layer.name for layer in vgg16.layers] == [f"features.{i + 1}" for i in VGG16_CONVS]
    assert [layer.channels for layer in vgg16.layers] == VGG16_CHANNELS
    assert vgg16.resolve_layer(1).conv == "features.0"
    assert vgg16.resolve_layer("features.0").name == "features.1"  # the conv names its site
    assert vgg16.resolve_layer("13").alias == "conv5_3"
    assert vgg16.resolve_layer("conv4_3").name == "features.22"
    assert vgg16.resolve_layer("features.17").alias == "conv4_1"
    assert vgg16.resolve_layer("features.18").alias == "conv4_1"  # the ReLU after it
    assert [layer.number for layer in vgg16.resolve_layers("conv1_1,conv5_3")] == [1, 13]
    with pytest.raises(LayerError) as info:
        vgg16.resolve_layer("conv6_1")
    message = str(info.value)
    assert "conv6_1" in message
    assert "conv1_1 (features.1)" in message and "conv5_3 (features.29)" in message
    with pytest.raises(LayerError, match=r"1\.\.13"):
        vgg16.resolve_layer(14)


def test_vgg16_torchvision_style_pth_loads(vgg16: Network, tmp_path: Path) -> None:
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(vgg16.module.state_dict(), path)  # what torchvision's weight files hold
    loaded = build_network("vgg16", path)
    assert loaded.module.features[28].weight.device.type == "cpu"
    expected, actual = vgg16.module.state_dict(), loaded.module.state_dict()
    assert list(expected) == list(actual)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    assert loaded.module.classifier[6].weight.dtype == torch.float32


def test_vgg16_torchvision_weights_without_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    with pytest.raises(WeightsError, match=r"torchvision.*extra.*\.pth/\.safetensors"):
        build_network("vgg16", "torchvision")


# --- the default Fashion-MNIST network -------------------------------------------------------


def test_fashion_vgg_inputs_and_layers() -> None:
    network = build_network("fashion-vgg")
    assert isinstance(network.module, FashionVGG)
    with torch.no_grad():
        assert network.module(network.preprocess(torch.rand(2, 1, 28, 28))).shape == (2, 10)
        assert network.module(network.preprocess(torch.rand(2, 1, 56, 56))).shape == (2, 10)
    assert [layer.alias for layer in network.layers] == [
        "conv1_1",
        "conv1_2",
        "conv2_1",
        "conv2_2",
        "conv3_1",
        "conv3_2",
    ]
    assert [layer.conv for layer in network.layers] == [
        f"features.{i}" for i in (0, 2, 5, 7, 10, 12)
    ]
    assert [layer.channels for layer in network.layers] == [16, 16, 32, 32, 64, 64]
    assert not any(m.inplace for m in network.module.modules() if isinstance(m, nn.ReLU))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in network.module.modules())
    assert network.readout == "classifier"
    assert network.input_size is None
    assert network.categories == FASHION_CATEGORIES and len(FASHION_CATEGORIES) == 10
    assert network.readout_features(torch.rand(3, 1, 56, 56)).shape == (3, 64)


def test_fashion_vgg_options_and_seed() -> None:
    state = torch.get_rng_state()
    first = build_network("fashion-vgg", seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    again = build_network("fashion-vgg", seed=3)
    other = build_network("fashion-vgg", seed=4)
    weight = first.module.features[0].weight
    assert torch.equal(weight, again.module.features[0].weight)
    assert not torch.equal(weight, other.module.features[0].weight)
    small = build_network("fashion-vgg", widths=(4, 8, 16), num_classes=3)
    assert [layer.channels for layer in small.layers] == [4, 4, 8, 8, 16, 16]
    assert small.module.classifier.out_features == 3
    assert small.categories == ()
    with pytest.raises(ConfigError, match="three positive ints"):
        FashionVGG(widths=(4, 8))
    with pytest.raises(ConfigError, match="widths applies only to 'fashion-vgg'"):
        build_network("vgg16", widths=(4, 8, 16))


# --- weight files ----------------------------------------------------------------------------


def test_pth_variants_load_and_infer_architecture(tmp_path: Path) -> None:
    source = FashionVGG(widths=(4, 8, 16), num_classes=5)
    state = OrderedDict(source.state_dict())
    torch.save(state, tmp_path / "plain.pth")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "checkpoint.pt")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "parallel.bin")
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        expected = source.eval()(images)
    for name in ("plain.pth", "checkpoint.pt", "parallel.bin"):
        loaded = load_state_dict_file(tmp_path / name)
        assert list(loaded) == list(state)
        network = build_network("fashion-vgg", tmp_path / name)  # widths, classes from the file
        assert network.module.widths == (4, 8, 16)
        with torch.no_grad():
            assert torch.allclose(network.module(images), expected)


def test_safetensors_roundtrip(tmp_path: Path) -> None:
    source = build_network("fashion-vgg", widths=(4, 8, 16), seed=1).module
    path = save_weights(source, tmp_path / "sub" / "model.safetensors")
    assert path.exists()
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temp files left
    target = FashionVGG(widths=(4, 8, 16))
    load_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key])
    network = build_network("fashion-vgg", str(path))
    assert torch.equal(network.module.classifier.weight, source.classifier.weight)


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    state = FashionVGG(widths=(4, 8, 16)).state_dict()
    del state["features.12.bias"]
    state["head.weight"] = torch.zeros(2)
    with pytest.raises(WeightsError) as info:
        load_weights(FashionVGG(), state)
    message = str(info.value)
    assert "1 missing keys" in message and "features.12.bias" in message
    assert "1 unexpected keys" in message and "head.weight" in message
    assert "shape mismatches" in message
    assert "features.0.weight: file (4, 1, 3, 3) vs model (16, 1, 3, 3)" in message
    model = FashionVGG()
    before = model.features[0].weight.clone()
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"wrong\.pth"):
        load_weights(model, path)
    assert torch.equal(model.features[0].weight, before)  # nothing was loaded


def test_mismatch_listing_is_truncated() -> None:
    state = FashionVGG().state_dict()
    state.update({f"extra.{i}": torch.zeros(1) for i in range(25)})
    with pytest.raises(WeightsError) as info:
        load_weights(FashionVGG(), state)
    message = str(info.value)
    assert "25 unexpected keys" in message
    assert "and 15 more" in message
    assert "extra.24" not in message


def test_arbitrary_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": Canary()}, path)
    Canary.unpickled.clear()
    with pytest.raises(WeightsError) as info:
        load_state_dict_file(path)
    assert Canary.unpickled == []
    message = str(info.value)
    assert "evil.pth" in message and "arbitrary code" in message and "safetensors" in message
    with pytest.raises(WeightsError):
        build_network("fashion-vgg", path)


def test_unusable_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="not a file"):
        load_state_dict_file(tmp_path)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match=r"garbage\.pt.*corrupt"):
        load_state_dict_file(tmp_path / "garbage.pt")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(WeightsError, match=r"garbage\.safetensors.*corrupt"):
        load_state_dict_file(tmp_path / "garbage.safetensors")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        load_state_dict_file(tmp_path / "list.pth")
    torch.save({"weight": torch.zeros(1), "epoch": 3}, tmp_path / "mixed.pth")
    with pytest.raises(WeightsError, match=r"not named tensors.*epoch"):
        load_state_dict_file(tmp_path / "mixed.pth")


# --- specs and user models -------------------------------------------------------------------


def test_list_models_and_unknown_spec() -> None:
    assert list_models() == [
        "fashion-vgg",
        "fashion-vgg16",
        "vgg16",
        "alexnet",
        "resnet18",
        "resnet50",
        "cornet-z",
        "cornet-s",
    ]
    with pytest.raises(ConfigError) as info:
        build_network("resnet34")
    message = str(info.value)
    assert "'resnet34'" in message and "'fashion-vgg'" in message and "'cornet-s'" in message
    assert "package.module:callable" in message


def test_user_callable_module(user_module: str, tmp_path: Path) -> None:
    network = build_network(f"{user_module}:make_tiny")
    assert network.name == f"{user_module}:make_tiny"
    assert network.readout == "8"  # the last nn.Linear
    assert network.mean == (0.1, 0.2) and network.std == (0.3, 0.4)
    assert network.input_size == 32
    assert network.categories == ("a", "b", "c")
    assert [layer.alias for layer in network.layers] == ["conv1_1", "conv1_2"]
    assert network.readout_features(torch.rand(2, 2, 9, 9)).shape == (2, 6)
    path = save_weights(network.module, tmp_path / "tiny.safetensors")
    reloaded = build_network(f"{user_module}:make_tiny", path)
    assert torch.equal(reloaded.module[8].weight, network.module[8].weight)


def test_user_callable_network_and_errors(user_module: str) -> None:
    network = build_network(f"{user_module}:make_network")
    assert network.name == "mine" and network.readout == "6"
    with pytest.raises(ConfigError, match="returned int"):
        build_network(f"{user_module}:make_nothing")
    with pytest.raises(ConfigError, match="bioattn_readout"):
        build_network(f"{user_module}:make_no_linear")
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        build_network(f"{user_module}:nope")
    with pytest.raises(ConfigError, match=r"cannot import.*ModuleNotFoundError"):
        build_network("no_such_package_xyz.models:make")
    with pytest.raises(ConfigError, match="num_classes applies only to built-in"):
        build_network(f"{user_module}:make_tiny", num_classes=3)


def test_fold_batch_norm_is_exact_in_eval_mode():
    from bioattn.models.zoo import fold_batch_norm

    torch.manual_seed(0)
    model = FashionVGG(batch_norm=True)
    model.train()
    for _ in range(3):  # give the running statistics non-trivial values
        model(torch.randn(16, 1, 28, 28) * 2 + 0.5)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    model.eval()
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 1, 56, 56)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
