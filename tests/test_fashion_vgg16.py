"""The embedded networks as one class: fashion-vgg (the default, unchanged) and fashion-vgg16
(VGG-16's 13 convs), their weights files, training settings, cache keys, prepare and the CLI.

Training here uses 256 images and one epoch (seconds); the cache goes to a temporary folder.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import bioattn.experiments.prepare as prepare_module
import bioattn.models.train as train_module
from bioattn.cli import main
from bioattn.errors import ConfigError, WeightsError
from bioattn.experiments.config import ExperimentConfig, ModelSection
from bioattn.experiments.prepare import prepare
from bioattn.models.train import TrainSettings, model_dir
from bioattn.models.weights import save_weights
from bioattn.models.zoo import (
    FASHION_ARCHITECTURES,
    VGG16_CONV_INDICES,
    BlockBoundary,
    FashionVGG,
    build_network,
    fold_batch_norm,
    list_models,
)

VGG16_ALIASES = [
    f"conv{block}_{k}" for block, n in enumerate((2, 2, 3, 3, 3), start=1) for k in range(1, n + 1)
]
#: Tiny training: enough to exercise training, caching and loading in seconds.
TINY = {"n_train": 256, "epochs": 1, "batch_size": 64}


# --- structure -----------------------------------------------------------------------------------


def test_fashion_vgg16_structure_and_aliases() -> None:
    network = build_network("fashion-vgg16")
    module = network.module
    assert isinstance(module, FashionVGG) and network.name == "fashion-vgg16"
    assert module.convs == (2, 2, 3, 3, 3) and module.pool_after == (1, 2, 3)
    assert module.widths == (16, 32, 64, 64, 64)
    assert sum(isinstance(m, nn.Conv2d) for m in module.modules()) == 13
    assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    assert [layer.alias for layer in network.layers] == VGG16_ALIASES
    assert [layer.number for layer in network.layers] == list(range(1, 14))
    assert [layer.conv for layer in network.layers] == [f"features.{i}" for i in VGG16_CONV_INDICES]
    assert [layer.channels for layer in network.layers] == [16, 16, 32, 32] + [64] * 9
    # 2x2 pooling after blocks 1-3 only; a BlockBoundary (identity) between blocks 4 and 5
    assert sum(isinstance(m, nn.MaxPool2d) for m in module.features) == 3
    assert [i for i, m in enumerate(module.features) if isinstance(m, BlockBoundary)] == [23]
    assert network.resolve_layer("conv5_3").name == "features.29"
    assert network.readout == "classifier" and network.input_size is None
    with torch.no_grad():
        for side in (28, 56):
            images = torch.rand(2, 1, side, side)
            assert module(network.preprocess(images)).shape == (2, 10)
        assert network.readout_features(torch.rand(3, 1, 56, 56)).shape == (3, 64)
    sizes = {layer.alias: layer.size for layer in network.layers}
    assert sizes["conv4_1"] == sizes["conv5_3"]  # blocks 4 and 5 share one resolution


def test_the_default_fashion_vgg_is_unchanged() -> None:
    """Same modules, parameter names, shapes and seeded weights as before fashion-vgg16."""
    module = FashionVGG()
    assert [type(m).__name__ for m in module.features] == [
        "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d",
        "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d",
        "Conv2d", "ReLU", "Conv2d", "ReLU",
    ]  # fmt: skip
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes == {
        "features.0.weight": (16, 1, 3, 3),
        "features.0.bias": (16,),
        "features.2.weight": (16, 16, 3, 3),
        "features.2.bias": (16,),
        "features.5.weight": (32, 16, 3, 3),
        "features.5.bias": (32,),
        "features.7.weight": (32, 32, 3, 3),
        "features.7.bias": (32,),
        "features.10.weight": (64, 32, 3, 3),
        "features.10.bias": (64,),
        "features.12.weight": (64, 64, 3, 3),
        "features.12.bias": (64,),
        "classifier.weight": (10, 64),
        "classifier.bias": (10,),
    }
    assert list(shapes) == list(FashionVGG().state_dict())  # order too
    normed = [k for k in FashionVGG(batch_norm=True).state_dict() if k.endswith(".weight")]
    assert normed[:4] == ["features.0.weight", "features.1.weight", "features.3.weight",
                          "features.4.weight"]  # fmt: skip
    # values written by the code before FashionVGG was generalised (same init order)
    seeded = build_network("fashion-vgg", seed=0).module
    expected = [-0.03885780647397041, 0.20542539656162262, -0.002095976611599326]
    torch.testing.assert_close(seeded.features[0].weight.flatten()[:3].tolist(), expected)
    torch.testing.assert_close(
        seeded.classifier.weight[0, :3].tolist(),
        [0.014229029417037964, -0.10340522229671478, -0.10282698273658752],
    )
    torch.testing.assert_close(seeded.features[12].weight.sum().item(), 2.7766685485839844,
                               rtol=0, atol=1e-3)  # fmt: skip
    assert "fashion-vgg16" in list_models() and list_models()[0] == "fashion-vgg"


def test_configuration_errors_say_what_would_be_right() -> None:
    with pytest.raises(ConfigError, match=r"five positive ints .*\(2, 2, 3, 3, 3\)"):
        build_network("fashion-vgg16", widths=(4, 8, 16))
    with pytest.raises(ConfigError, match=r"pool_after must name distinct blocks 1\.\.3"):
        FashionVGG(pool_after=(4,))
    with pytest.raises(ConfigError, match="'fashion-vgg' and 'fashion-vgg16', not to model"):
        build_network("resnet18", widths=(4, 8, 16))
    small = build_network("fashion-vgg16", widths=(4, 4, 8, 8, 8), num_classes=3)
    assert [layer.channels for layer in small.layers][-1] == 8
    assert small.module.classifier.out_features == 3 and small.categories == ()


def test_fold_batch_norm_is_exact_for_fashion_vgg16() -> None:
    torch.manual_seed(0)
    model = FASHION_ARCHITECTURES["fashion-vgg16"].build(batch_norm=True)
    model.train()
    for _ in range(3):  # give the running statistics non-trivial values
        model(torch.randn(16, 1, 28, 28) * 2 + 0.5)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    model.eval()
    folded = fold_batch_norm(model)
    assert (folded.convs, folded.pool_after) == (model.convs, model.pool_after)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert list(folded.state_dict()) == list(build_network("fashion-vgg16").module.state_dict())
    for side in (28, 56):
        x = torch.randn(4, 1, side, side)
        with torch.no_grad():
            torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


def test_weights_files_give_widths_and_classes(tmp_path: Path) -> None:
    source = build_network("fashion-vgg16", widths=(4, 6, 8, 8, 12), num_classes=5, seed=2)
    path = save_weights(source.module, tmp_path / "deep.safetensors")
    network = build_network("fashion-vgg16", path)
    assert network.module.widths == (4, 6, 8, 8, 12)
    assert network.module.classifier.out_features == 5
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(network.module(images), source.module(images))
    with pytest.raises(WeightsError, match="holds a 'fashion-vgg16' state dict"):
        build_network("fashion-vgg", path)
    shallow = save_weights(FashionVGG(), tmp_path / "shallow.safetensors")
    with pytest.raises(WeightsError, match="holds a 'fashion-vgg' state dict"):
        build_network("fashion-vgg16", shallow)


# --- training settings and the cache key ---------------------------------------------------------


def test_settings_and_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sizes = {
        "t10k-images-idx3-ubyte": 7,
        "t10k-labels-idx1-ubyte": 5,
        "train-images-idx3-ubyte": 11,
        "train-labels-idx1-ubyte": 3,
        "README": 2,
    }
    for name, size in sizes.items():
        (data / name).write_bytes(b"x" * size)
    monkeypatch.setenv("BIOATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    # the folder names computed by the code before `architecture` existed: unchanged
    assert model_dir(TrainSettings(), data).name == "fashion-vgg-25067e985cd36b2f"
    assert model_dir(TrainSettings(seed=3, epochs=2), data).name == "fashion-vgg-c42b14f025f981bd"
    assert TrainSettings() == TrainSettings(architecture="fashion-vgg", widths=(16, 32, 64))
    deep = TrainSettings(architecture="fashion-vgg16")
    assert deep.widths == (16, 32, 64, 64, 64)
    folder = model_dir(deep, data)
    assert folder.name.startswith("fashion-vgg16-") and folder.parent.name == "models"
    assert folder.name[len("fashion-vgg16-") :] != model_dir(TrainSettings(), data).name[12:]
    assert model_dir(TrainSettings(architecture="Fashion-VGG16", widths=[16, 32, 64, 64, 64]),
                     data) == folder  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"unknown embedded architecture 'vgg16'.*'fashion-vgg16'"
    ):
        TrainSettings(architecture="vgg16")
    with pytest.raises(ConfigError, match=r"must be 5 positive ints.*\(16, 32, 64, 64, 64\)"):
        TrainSettings(architecture="fashion-vgg16", widths=(16, 32, 64))


# --- prepare, load_default and `bioattn train` on a tiny training subset --------------------------


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bioattn-cache")


@pytest.fixture
def tiny_training(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> list[TrainSettings]:
    """``load_default`` (as prepare and `bioattn train` call it) trains on 256 images for one
    epoch into a temporary cache; returns the settings it was asked for."""
    monkeypatch.setenv("BIOATTN_CACHE", str(shared_cache))
    asked: list[TrainSettings] = []
    original = train_module.load_default

    def tiny_load_default(settings=TrainSettings(), *args, **kwargs):
        asked.append(settings)
        return original(replace(settings, **TINY), *args, **kwargs)

    monkeypatch.setattr(prepare_module, "load_default", tiny_load_default)
    monkeypatch.setattr(train_module, "load_default", tiny_load_default)
    return asked


def test_prepare_trains_and_caches_fashion_vgg16(tiny_training, shared_cache) -> None:
    config = ExperimentConfig(model=ModelSection(spec="fashion-vgg16", seed=0))
    experiment = prepare(config, values=False, progress=False)
    assert tiny_training[-1].architecture == "fashion-vgg16"
    assert experiment.is_default
    assert experiment.network.name == "fashion-vgg16"
    assert [layer.alias for layer in experiment.network.layers] == VGG16_ALIASES
    assert not any(isinstance(m, nn.BatchNorm2d) for m in experiment.network.module.modules())
    cache = Path(experiment.model_info["cache"])
    assert cache.parent == shared_cache / "models" and cache.name.startswith("fashion-vgg16-")
    metrics = experiment.model_info["metrics"]
    assert metrics["settings"]["architecture"] == "fashion-vgg16"
    assert list(metrics["settings"]["widths"]) == [16, 32, 64, 64, 64]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert experiment.detectors.categories == experiment.train_images.categories
    again = prepare(config, values=False, progress=False)  # from the cache
    assert again.model_info["cache"] == str(cache)
    for (name, a), (_, b) in zip(
        experiment.network.module.state_dict().items(),
        again.network.module.state_dict().items(),
        strict=True,
    ):
        assert torch.equal(a, b), name


def test_cli_train_takes_the_embedded_networks(tiny_training, shared_cache, capsys) -> None:
    assert main(["train", "--model", "fashion-vgg16"]) == 0
    out = capsys.readouterr().out
    assert tiny_training[-1].architecture == "fashion-vgg16"
    assert f"model cached in {shared_cache / 'models'}/fashion-vgg16-" in out
    assert "test accuracy (10-way)" in out


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        (["--model", "vgg16"], "model vgg16 not supported"),
        (["--model", "fashion-vgg16", "--weights", "w.pth"], "with weights w.pth not supported"),
    ],
)
def test_cli_train_refuses_other_models_with_the_reason(argv, refused, capsys) -> None:
    assert main(["train", *argv]) == 2
    error = capsys.readouterr().err
    assert refused in error
    assert "`bioattn train` trains the embedded networks (--model fashion-vgg, the default, or " \
        "--model fashion-vgg16)" in error  # fmt: skip


def test_cli_layers_lists_fashion_vgg16(capsys) -> None:
    assert main(["layers", "fashion-vgg16"]) == 0
    out = capsys.readouterr().out
    assert "conv5_3" in out and "features.28" in out and "conv5_4" not in out
