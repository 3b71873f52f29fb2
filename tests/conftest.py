"""Shared fixtures: a tiny network, detectors and image sets small enough for unit tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bioattn.data.imageset import ImageSet
from bioattn.models.detectors import Detectors
from bioattn.models.network import Network


class TinyNet(nn.Module):
    """Two conv layers (2 and 3 maps) with a pooling layer between them and a linear head."""

    def __init__(
        self, in_channels: int = 1, widths: tuple[int, int] = (2, 3), classes: int = 4
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(widths[0], widths[1], 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def make_tiny_network(seed: int = 0) -> Network:
    """A seeded TinyNet wrapped as a Network with identity normalisation."""
    torch.manual_seed(seed)
    return Network(TinyNet(), name="tiny", readout="classifier", mean=(0.0,), std=(1.0,))


def make_image_set(n_per_category: int = 12, size: int = 8, split: str = "train") -> ImageSet:
    """Four categories of 8×8 images whose brightness pattern depends on the category."""
    generator = torch.Generator().manual_seed(3)
    images, labels = [], []
    for k in range(4):
        base = torch.zeros(1, size, size)
        base[:, (k // 2) * (size // 2) : (k // 2 + 1) * (size // 2), :] = 0.8
        base[:, :, (k % 2) * (size // 2) : (k % 2 + 1) * (size // 2)] += 0.4
        noise = 0.1 * torch.rand(n_per_category, 1, size, size, generator=generator)
        images.append(base.clamp(0, 1) + noise)
        labels.append(torch.full((n_per_category,), k))
    return ImageSet(torch.cat(images), torch.cat(labels), ("a", "b", "c", "d"), split)


@pytest.fixture
def tiny_network() -> Network:
    return make_tiny_network()


@pytest.fixture
def tiny_images() -> ImageSet:
    return make_image_set()


@pytest.fixture
def values(tiny_network, tiny_images, tiny_detectors):
    """Tuning and merged-image gradient values of the tiny network (module's detectors)."""
    from bioattn.attention.values import add_gradient_values, tuning_values
    from bioattn.data.tasks import make_task_set

    tasks = {
        name: make_task_set(tiny_images, name, "merged", n_pos=6, n_neg=6, seed=2)
        for name in "abcd"
    }
    return add_gradient_values(
        tuning_values(tiny_network, tiny_images), tiny_network, tiny_detectors, tasks, "merged"
    )


@pytest.fixture
def tiny_detectors() -> Detectors:
    """Hand-set detectors on the 3 pooled features (identity standardisation)."""
    weight = torch.tensor([[1.0, 0.0, -1.0], [-2.0, 1.0, 0.0], [0.5, 0.5, 0.5], [0.0, -1.0, 2.0]])
    return Detectors(
        weight=weight,
        bias=torch.tensor([0.0, 0.1, -0.2, 0.05]),
        feature_mean=torch.zeros(3),
        feature_std=torch.ones(3),
        categories=("a", "b", "c", "d"),
    )


def tiny_rgb_net() -> TinyNet:
    """TinyNet for 3-channel images (image folders load as RGB), 3 categories."""
    return TinyNet(in_channels=3, widths=(4, 6), classes=3)


def write_pattern_folder(root, n_per_category: int = 12, size: int = 16, seed: int = 0):
    """``root/train`` and ``root/test`` with three categories of patterned RGB PNGs."""
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(seed)
    for split in ("train", "test"):
        for k, name in enumerate(("bars", "blobs", "dots")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_category):
                image = generator.integers(0, 60, (size, size, 3)).astype(np.uint8)
                image[:, :, k] += 150  # one colour channel per category
                if k == 0:
                    image[:, ::4] = 255
                Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def six_categories(split: str) -> ImageSet:
    """Six categories of 8×8 random patterns plus a little noise, 10 images each (arrays need
    at least five categories)."""
    generator = torch.Generator().manual_seed(11 if split == "test" else 12)
    patterns = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(6).repeat_interleave(10)
    images = patterns[labels] + 0.05 * torch.rand(60, 1, 8, 8, generator=generator)
    return ImageSet(images.clamp(0, 1), labels, tuple("abcdef"), split)


@pytest.fixture(scope="module")
def ssn_setup():
    """The tiny network, its SSN-CNN (built once per module: calibration is the slow part) and
    detectors fitted on the SSN-CNN, with the images used for all three."""
    from bioattn.attention.values import tuning_values
    from bioattn.models.detectors import fit_detectors
    from bioattn.ssn import SSNParams, build_ssn_network

    plain = make_tiny_network()
    images = make_image_set(n_per_category=6)
    values = tuning_values(plain, images)
    ssn = build_ssn_network(
        plain, "all", SSNParams(), similarity=values, reference_images=images.images
    )
    detectors = fit_detectors(ssn.readout_features(images.images), images.labels, images.categories)
    return plain, ssn, detectors, images


def make_tiny_recording(path, **overrides):
    """A small recording of the tiny network on six-category array images, written to ``path``:
    categories a and b, attention at conv2_1 (β 0.5), full maps of conv1_1, detector logits
    and reference rows. ``overrides`` replace fields of its RecordingConfig."""
    from bioattn.attention.values import tuning_values
    from bioattn.experiments.recording import RecordingConfig, record
    from bioattn.models.detectors import fit_detectors

    network = make_tiny_network()
    train, test = six_categories("train"), six_categories("test")
    detectors = fit_detectors(
        network.readout_features(train.images), train.labels, train.categories
    )
    settings = {
        "categories": ("a", "b"),
        "attend_layers": ("conv2_1",),
        "betas": (0.5,),
        "image_type": "array",
        "full_maps": ("conv1_1",),
        "n_pos": 3,
        "n_neg": 2,
        "n_reference": 2,
        "batch_size": 4,
        **overrides,
    }
    values = tuning_values(network, train)
    return record(
        network,
        values,
        test,
        path,
        RecordingConfig(**settings),
        detectors=detectors,
        progress=False,
    )


def tiny_rgb_vgg() -> nn.Module:
    """Three conv blocks (conv1_1, conv2_1, conv3_1: the default network's layer names) of 3,
    4 and 6 maps for 3-channel images, 3 categories: the tutorials' layers exist on it."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


TINY_CONFIG_TOML = """
[model]
spec = "{spec}"

[data]
kind = "image-folder"
path = "{data}"
size = 16
resize = 16
detector_images = 12

[values]
gradient_images = 4

[sweep]
image_types = ["merged"]
betas = [0, 0.5]
n_pos = 4
n_neg = 4

[run]
out = "{out}"
"""


def write_tiny_config(root, spec: str = "tests.conftest:tiny_rgb_vgg"):
    """``root/tiny.toml``: a pattern image folder (three categories of 16-pixel images), the
    tiny model ``spec`` and sweep settings small enough that ``prepare`` and a sweep take
    seconds; the run folder is ``root/run``. Returns the file's path."""
    data = root / "images"
    if not data.exists():
        write_pattern_folder(data, n_per_category=8)
    path = root / "tiny.toml"
    path.write_text(TINY_CONFIG_TOML.format(spec=spec, data=data, out=root / "run"))
    return path
