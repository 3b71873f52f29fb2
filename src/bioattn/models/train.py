"""Training the embedded networks: the small VGG-style default (fashion-vgg) or its deeper
sibling (fashion-vgg16) on Fashion-MNIST, plus their detectors, cached under the user cache
directory keyed by everything that determines them."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from bioattn.cache import atomic_write_bytes, cache_dir, settings_key
from bioattn.data.fashion_mnist import find_data_dir, load_fashion_mnist
from bioattn.errors import ConfigError
from bioattn.logs import progress_bar
from bioattn.models.detectors import Detectors, evaluate_detectors, fit_detectors
from bioattn.models.network import Network
from bioattn.models.weights import load_weights, save_weights
from bioattn.models.zoo import (
    DEFAULT_FASHION_ARCHITECTURE,
    FASHION_ARCHITECTURES,
    build_network,
    fashion_architecture,
    fold_batch_norm,
)

#: Bumped whenever the training code changes in a way that changes the weights it produces.
TRAINING_CODE_VERSION = 1

log = logging.getLogger(__name__)


#: Settings left out of the cache key while they have their default value, so that adding them
#: kept the keys of the networks trained before.
_KEYED_ONLY_IF_CHANGED = ("architecture",)


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a trained embedded network (and so its cache key).

    ``architecture`` is one of :data:`~bioattn.models.zoo.FASHION_ARCHITECTURES`
    (``"fashion-vgg"``, the default, or ``"fashion-vgg16"``); ``widths`` (one per block)
    defaults to that architecture's and is filled in on construction.
    """

    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 5e-3
    weight_decay: float = 1e-4
    widths: tuple[int, ...] | None = None  # None: the architecture's default widths
    flip_augment: bool = True
    n_train: int | None = None  # first N training images only (quick runs); None: all 60,000
    seed: int = 0
    detector_l2: float = 1e-3
    architecture: str = DEFAULT_FASHION_ARCHITECTURE

    def __post_init__(self) -> None:
        arch = fashion_architecture(self.architecture)
        widths = arch.widths if self.widths is None else tuple(int(w) for w in self.widths)
        if len(widths) != len(arch.convs) or min(widths) < 1:
            raise ConfigError(
                f"TrainSettings widths for {arch.name!r} must be {len(arch.convs)} positive "
                f"ints (one per block), got {self.widths!r}; leave widths out for "
                f"{arch.name!r}'s default {arch.widths}"
            )
        object.__setattr__(self, "architecture", arch.name)
        object.__setattr__(self, "widths", widths)


@dataclass
class TrainedModel:
    """The default network with its detectors and the accuracies measured when it was made."""

    network: Network
    detectors: Detectors
    metrics: dict
    path: Path


def _data_fingerprint(data_dir: Path) -> dict[str, int]:
    """File names and sizes of the dataset: cheap, and enough to tell two datasets apart."""
    return {p.name: p.stat().st_size for p in sorted(data_dir.iterdir()) if "idx" in p.name}


def _keyed_settings(settings: TrainSettings) -> dict:
    """The settings as the cache key sees them: those in :data:`_KEYED_ONLY_IF_CHANGED` are
    left out while they have their default value."""
    keyed = asdict(settings)
    for field in fields(TrainSettings):
        if field.name in _KEYED_ONLY_IF_CHANGED and keyed[field.name] == field.default:
            del keyed[field.name]
    return keyed


def model_dir(settings: TrainSettings, data_dir: Path) -> Path:
    """Cache folder for a trained embedded network with these settings and data, named
    ``<architecture>-<key>``."""
    key = settings_key(
        {
            "settings": _keyed_settings(settings),
            "data": _data_fingerprint(data_dir),
            "code": TRAINING_CODE_VERSION,
            "torch": torch.__version__.split("+")[0],
        }
    )
    return cache_dir() / "models" / f"{settings.architecture}-{key}"


def _accuracy(
    module: nn.Module, network: Network, images: torch.Tensor, labels: torch.Tensor
) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), 1000):
            logits = module(network.preprocess(images[start : start + 1000]))
            correct += int((logits.argmax(1) == labels[start : start + 1000]).sum())
    return correct / len(images)


def train_default(
    settings: TrainSettings = TrainSettings(),
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> TrainedModel:
    """Train an embedded network (``settings.architecture``, by default fashion-vgg) on
    Fashion-MNIST and fit its detectors (no cache involved).

    The network trains with batch normalisation (and random horizontal flips), which reaches
    90 % in a few epochs on two cores; the normalisation is then folded into the convs so the
    returned network is a plain conv-ReLU stack. Deterministic given ``settings.seed``: weights,
    batch order, flips and detector fits all follow it.
    """
    arch = FASHION_ARCHITECTURES[settings.architecture]
    torch.manual_seed(settings.seed)
    network = build_network(arch.name, widths=settings.widths, seed=settings.seed)
    module = arch.build(settings.widths, batch_norm=True)
    train = load_fashion_mnist("train", data_dir)
    if settings.n_train is not None:
        train = train.subset(torch.arange(min(settings.n_train, len(train))))
    test = load_fashion_mnist("test", data_dir)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    steps_per_epoch = (len(train) + settings.batch_size - 1) // settings.batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.epochs * steps_per_epoch
    )
    inputs = network.preprocess(train.images)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    bar = progress_bar(
        total=settings.epochs * steps_per_epoch,
        desc=f"training {arch.name}",
        disable=not progress,
    )
    module.train()
    for _epoch in range(settings.epochs):
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            x = inputs[batch]
            if settings.flip_augment:
                flip = torch.rand(len(batch), generator=generator) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(module(x), train.labels[batch])
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    module.eval()
    network.module.load_state_dict(fold_batch_norm(module).state_dict())
    module = network.module
    train_seconds = time.perf_counter() - started

    train_features = network.readout_features(train.images)
    detectors = fit_detectors(
        train_features, train.labels, train.categories, l2=settings.detector_l2
    )
    test_features = network.readout_features(test.images)
    detector_table = evaluate_detectors(detectors, test_features, test.labels)
    metrics = {
        "test_accuracy": _accuracy(module, network, test.images, test.labels),
        "train_seconds": round(train_seconds, 1),
        "detector_balanced_accuracy": {
            row.category: round(float(row.balanced_accuracy), 4)
            for row in detector_table.itertuples()
        },
        "settings": asdict(settings),
    }
    return TrainedModel(network, detectors, metrics, Path())


def load_default(
    settings: TrainSettings = TrainSettings(),
    data_dir: str | Path | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> TrainedModel:
    """The trained embedded network (``settings.architecture``) and its detectors, from the
    cache or trained now and cached."""
    folder = model_dir(settings, find_data_dir(data_dir))
    weights_file = folder / "model.safetensors"
    detectors_file = folder / "detectors.safetensors"
    metrics_file = folder / "metrics.json"
    if not retrain and all(p.exists() for p in (weights_file, detectors_file, metrics_file)):
        network = build_network(settings.architecture, widths=settings.widths, seed=settings.seed)
        load_weights(network.module, weights_file)
        network.module.eval()
        return TrainedModel(
            network,
            Detectors.load(detectors_file),
            json.loads(metrics_file.read_text()),
            folder,
        )
    log.info(
        "training %s (%d epochs); it is kept in %s", settings.architecture, settings.epochs, folder
    )
    trained = train_default(settings, data_dir, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(trained.network.module, weights_file)
    trained.detectors.save(detectors_file)
    # metrics last: its presence marks a complete cache entry
    atomic_write_bytes(metrics_file, json.dumps(trained.metrics, indent=2).encode())
    trained.path = folder
    return trained
