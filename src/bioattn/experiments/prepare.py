"""``prepare(config) -> Experiment``: the one way to get a model ready for any experiment.

Every command and every experiment starts here: the network (the trained default, a zoo model
with its weights, or a user callable), its binary detectors, the training and test images, and
(when asked) the tuning and gradient values, all loaded, checked against each other and placed
on the configured device at the configured precision. What is fitted here is kept in the run
folder (``detectors.safetensors``, ``values.nc``) so that later runs and worker processes reuse
exactly the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import xarray as xr

from bioattn.attention.values import compute_values, load_values, save_values
from bioattn.data.fashion_mnist import FASHION_MNIST_CATEGORIES, find_data_dir, load_fashion_mnist
from bioattn.data.image_folder import category_files, load_image_folder
from bioattn.data.imageset import ImageSet, balanced_subset
from bioattn.errors import ConfigError, DataError
from bioattn.experiments.config import DataSection, ExperimentConfig, load_config
from bioattn.models.detectors import Detectors, fit_detectors
from bioattn.models.network import Network
from bioattn.models.train import TrainSettings, load_default
from bioattn.models.zoo import FASHION_ARCHITECTURES, build_network

log = logging.getLogger(__name__)

__all__ = [
    "Experiment",
    "data_categories",
    "embedded_architecture",
    "load_images",
    "prepare",
    "with_overrides",
]


@dataclass
class Experiment:
    """A model ready for experiments: network, detectors, images and (optionally) values.

    ``model_info`` describes the network for results folders (name, weights, training metrics,
    cache path); ``values`` is ``None`` when :func:`prepare` was asked not to compute them.
    """

    config: ExperimentConfig
    network: Network
    detectors: Detectors
    train_images: ImageSet
    test_images: ImageSet
    values: xr.Dataset | None = None
    run_dir: Path = Path("runs/sweep")
    model_info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_default(self) -> bool:
        """Whether the network is a trained embedded default (fashion-vgg, or fashion-vgg16,
        without a weights file, on Fashion-MNIST)."""
        return _is_default(self.config)


def embedded_architecture(config: ExperimentConfig) -> str | None:
    """The embedded architecture whose trained default ``config`` asks for (``[model] spec``
    "fashion-vgg" or "fashion-vgg16" without weights), else None; such a network is trained
    on Fashion-MNIST, so other ``[data]`` is refused."""
    spec = config.model.spec.strip().lower()
    if spec not in FASHION_ARCHITECTURES or config.model.weights:
        return None
    if config.data.kind != "fashion-mnist":
        raise ConfigError(
            f"the trained embedded network ({spec} without weights) goes with [data] kind = "
            f"'fashion-mnist', not {config.data.kind!r}; give [model] weights for other data"
        )
    return spec


def _is_default(config: ExperimentConfig) -> bool:
    spec = config.model.spec.strip().lower()
    return spec in FASHION_ARCHITECTURES and not config.model.weights


def folder_geometry(
    data: DataSection, network: Network | None = None
) -> tuple[int | None, int | None, bool]:
    """(crop size, short side before the crop, grey?) for an image folder and a model.

    What ``[data]`` leaves out comes from the model (see :class:`DataSection`): its input size,
    else the images' own size; the short side before the crop is 256/224 of the crop, as for
    ImageNet; the channels its first convolution takes.
    """
    model_size = network.input_size if network is not None else None
    size = data.size if data.size is not None else model_size
    if data.resize is not None:
        resize = data.resize
    else:
        resize = None if size is None else round(size * 256 / 224)
    model_channels = network.input_channels if network is not None else None
    channels = data.channels or model_channels or 3
    if data.channels == 3 and model_channels == 1:
        raise ConfigError(
            f"[data] channels = 3 but model {network.name!r} takes 1-channel (grey) images; "  # type: ignore[union-attr]
            "set [data] channels = 1 or leave it out"
        )
    return size, resize, channels == 1


def data_categories(data: DataSection) -> tuple[tuple[str, ...], int | None]:
    """(category names, training images) of a ``[data]`` section, without loading images.

    Fashion-MNIST: its ten classes, after checking the IDX files are there. An image folder:
    the sub-folders of ``train/``, which must be those of ``test/``.
    """
    if data.kind == "fashion-mnist":
        find_data_dir(data.path or None)
        return tuple(FASHION_MNIST_CATEGORIES), 60_000
    root = Path(data.path).expanduser()
    splits = {}
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(
                f"image folder {root} needs a {split}/ sub-folder with one sub-folder of images "
                "per category (the same categories in train/ and test/)"
            )
        splits[split] = category_files(root / split)
    train = tuple(name for name, _ in splits["train"])
    test = tuple(name for name, _ in splits["test"])
    if train != test:
        raise DataError(
            f"train/ and test/ of {root} hold different categories: {list(train)} vs {list(test)}"
        )
    return train, sum(len(files) for _, files in splits["train"])


def load_images(data: DataSection, network: Network | None = None) -> tuple[ImageSet, ImageSet]:
    """The training and test images of a ``[data]`` section, for ``network`` (see
    :func:`folder_geometry`)."""
    if data.kind == "fashion-mnist":
        directory = data.path or None
        return load_fashion_mnist("train", directory), load_fashion_mnist("test", directory)
    size, resize, grey = folder_geometry(data, network)
    data_categories(data)  # both splits there, with the same categories
    root = Path(data.path).expanduser()
    train = load_image_folder(root / "train", size=size, resize=resize, grayscale=grey)
    test = load_image_folder(root / "test", size=size, resize=resize, grayscale=grey)
    return train, test


def configured_network(config: ExperimentConfig) -> Network:
    """The ``[model]`` network of a config that does not name an embedded one (those are
    trained; see :func:`prepare`): built, with its weights loaded."""
    return build_network(
        config.model.spec,
        config.model.weights or None,
        seed=config.model.seed,
        readout=config.model.readout or None,
    )


def prepare(
    config: ExperimentConfig | str | Path | None = None,
    *,
    values: bool = True,
    image_types: tuple[str, ...] | None = None,
    run_dir: str | Path | None = None,
    progress: bool = True,
) -> Experiment:
    """Load (or fit once and keep in the run folder) everything an experiment needs.

    ``config`` is an :class:`ExperimentConfig`, the path of a TOML file, or ``None`` for the
    defaults (the trained default network on Fashion-MNIST). An embedded network
    (``fashion-vgg``, ``fashion-vgg16``) with no weights file is that architecture's trained
    default (trained and cached on first use). Other networks get
    detectors fitted on ``data.detector_images`` training images per category, saved as
    ``RUN/detectors.safetensors``. With ``values`` the tuning and gradient values (for
    ``image_types``, default the sweep's) are read from ``[values] path`` or computed once
    into ``RUN/values.nc``; values read are checked to belong to this network and its
    detectors (their fingerprint), unless ``[values] allow_other_model`` (then a warning).
    ``run_dir`` defaults to ``[run] out``.
    """
    if config is None:
        config = ExperimentConfig()
    elif not isinstance(config, ExperimentConfig):
        config = load_config(config)
    run = Path(run_dir) if run_dir is not None else Path(config.run.out)
    architecture = embedded_architecture(config)
    if architecture is not None:
        trained = load_default(
            TrainSettings(seed=config.model.seed, architecture=architecture),
            config.data.path or None,
            progress=progress,
        )
        network, detectors = trained.network, trained.detectors
        log.info("network: %s, trained, from %s", network.name, trained.path)
        train, test = load_images(config.data, network)
        model_info = {
            "name": network.name,
            "seed": config.model.seed,
            "metrics": trained.metrics,
            "cache": str(trained.path),
        }
    else:
        network = configured_network(config)
        train, test = load_images(config.data, network)
        detectors_path = run / "detectors.safetensors"
        if detectors_path.exists():
            detectors = Detectors.load(detectors_path)
            log.info("detectors: read from %s", detectors_path)
        else:
            log.info("detectors: fitting on %d images per category", config.data.detector_images)
            fit_on = balanced_subset(train, config.data.detector_images, seed=config.model.seed)
            detectors = fit_detectors(
                network.readout_features(fit_on.images), fit_on.labels, fit_on.categories
            )
            run.mkdir(parents=True, exist_ok=True)
            detectors.save(detectors_path)
            log.info("detectors: kept in %s", detectors_path)
        model_info = {
            "name": network.name,
            "spec": config.model.spec,
            "weights": config.model.weights,
            "readout": network.readout,
            "seed": config.model.seed,
            "detectors": str(detectors_path),
        }
    network.to(config.model.device)
    model_info["device"] = str(network.device)
    if tuple(detectors.categories) != tuple(train.categories):
        raise ConfigError(
            f"the detectors are for categories {list(detectors.categories)} but the data has "
            f"{list(train.categories)}; remove {run / 'detectors.safetensors'} to refit them"
        )
    experiment = Experiment(config, network, detectors, train, test, None, run, model_info)
    if values:
        experiment.values = _values(experiment, image_types, progress)
    network.precision = config.model.precision  # detectors and values stay float32
    return experiment


def _values(
    experiment: Experiment, image_types: tuple[str, ...] | None, progress: bool
) -> xr.Dataset:
    config = experiment.config
    values_path = (
        Path(config.values.path) if config.values.path else experiment.run_dir / "values.nc"
    )
    if values_path.exists():
        log.info("values: read from %s", values_path)
        try:
            return load_values(
                values_path,
                experiment.network,
                experiment.detectors,
                allow_other_model=config.values.allow_other_model,
            )
        except (ConfigError, DataError) as error:
            if config.values.path:
                raise
            # the run folder's own values: computed again once removed
            raise type(error)(
                f"{error} (or remove {values_path}: the run computes it again for this model)"
            ) from error
    if config.values.path:
        raise ConfigError(f"[values] path {values_path} does not exist")
    types = config.sweep.image_types if image_types is None else image_types
    log.info("values: computing tuning and gradient values (%s)", ", ".join(types) or "tuning")
    values = compute_values(
        experiment.network,
        experiment.detectors,
        experiment.train_images,
        [t for t in types if t != "noise"],
        gradient_set_size=config.values.gradient_images,
        seed=config.sweep.seed,
        progress=progress,
    )
    save_values(values, values_path)
    log.info("values: kept in %s", values_path)
    return values


def with_overrides(config: ExperimentConfig, **sections: dict[str, Any]) -> ExperimentConfig:
    """``config`` with the given fields replaced per section, e.g. ``model={"device": "cuda"}``;
    ``None`` values are left out (flags that were not given)."""
    changes = {}
    for name, fields in sections.items():
        given = {k: v for k, v in fields.items() if v is not None}
        if given:
            changes[name] = replace(getattr(config, name), **given)
    return replace(config, **changes)
