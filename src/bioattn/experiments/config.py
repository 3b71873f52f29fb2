"""Experiment config files (TOML): model, data, values, sweep and run settings in one place.

A config file names everything a sweep needs, so the same command goes from the laptop default
to a cluster run without code changes::

    [model]
    spec = "fashion-vgg"          # "vgg16", or "package.module:callable"
    weights = ""                  # a weights file; empty with fashion-vgg: the trained default

    [data]
    kind = "fashion-mnist"        # or "image-folder" (train/ and test/ sub-folders)
    path = ""                     # empty: $BIOATTN_DATA or the Debian package's folder

    [values]
    path = ""                     # a values file; empty: computed once and kept in the run folder

    [sweep]                       # the fields of bioattn.experiments.sweep.SweepConfig
    categories = ["Bag", "Trouser"]
    betas = [0, 0.5, 1, 2]

    [run]
    out = "runs/sweep"

Unknown sections or keys and values of the wrong type are errors that name the key and what
would be right. Command-line flags override the file (see ``bioattn sweep --config``).
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from bioattn.errors import ConfigError
from bioattn.experiments.sweep import SweepConfig

#: Where images come from.
DATA_KINDS = ("fashion-mnist", "image-folder")
#: How a sharded sweep's jobs run (see :mod:`bioattn.experiments.shards`).
EXECUTORS = ("local", "process", "submitit")


@dataclass(frozen=True)
class ModelSection:
    """Which network: a zoo name or ``package.module:callable``, and its weights file."""

    spec: str = "fashion-vgg"
    weights: str = ""
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto" (CUDA when present)
    precision: str = "float32"  # sweeps' forward passes: "float32", "bfloat16" or "float16"
    readout: str = ""  # module whose input detectors read; empty: the model's default

    def __post_init__(self) -> None:
        from bioattn.models.network import PRECISIONS

        if not self.spec.strip():
            raise ConfigError(
                "[model] spec is empty; give a built-in (`bioattn layers --help` lists them) "
                "or package.module:callable"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"[model] precision {self.precision!r} is not known; valid: {', '.join(PRECISIONS)}"
            )


@dataclass(frozen=True)
class DataSection:
    """Where images come from, and how image folders are brought to the model's input.

    ``size`` (square centre crop) defaults to the model's input size (224 for the ImageNet
    architectures); a model that takes any size (the default network, most user models) gets
    the images at their own size (they must then share one). ``resize`` (the short side before
    the crop) defaults to 256/224 of ``size``, the ImageNet way. ``channels`` (1: grey, 3: RGB)
    defaults to what the model's first convolution takes.
    """

    kind: str = "fashion-mnist"
    path: str = ""
    size: int | None = None
    resize: int | None = None
    channels: int | None = None
    detector_images: int = 100  # training images per category for fitting detectors

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ConfigError(
                f"[data] kind {self.kind!r} is not known; valid: {', '.join(DATA_KINDS)}"
            )
        if self.kind == "image-folder" and not self.path:
            raise ConfigError(
                "[data] kind 'image-folder' needs a path: a folder with train/ and test/ "
                "sub-folders, each with one sub-folder of images per category"
            )
        if self.size is not None and self.size < 8:
            raise ConfigError(f"[data] size must be ≥ 8 pixels, got {self.size}")
        if self.resize is not None and self.resize < (self.size or 8):
            raise ConfigError(
                f"[data] resize (the short side before the crop) must be ≥ size, got "
                f"size={self.size}, resize={self.resize}"
            )
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"[data] channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        if self.detector_images < 2:
            raise ConfigError(f"[data] detector_images must be ≥ 2, got {self.detector_images}")


@dataclass(frozen=True)
class ValuesSection:
    """A values file to use; empty means compute them (once) into the run folder.

    Values remember the model they were computed for (a fingerprint of its weights and
    detectors); values of another model are refused unless ``allow_other_model`` is set, for
    deliberate cross-model use (then a warning).
    """

    path: str = ""
    gradient_images: int = 100  # positives (and as many negatives) per category for gradients
    allow_other_model: bool = False  # accept values computed for another model (a warning)

    def __post_init__(self) -> None:
        if self.gradient_images < 1:
            raise ConfigError(f"[values] gradient_images must be ≥ 1, got {self.gradient_images}")


@dataclass(frozen=True)
class RunSection:
    """Where results go and how the work is spread over processes."""

    out: str = "runs/sweep"
    executor: str = "local"
    workers: int = 2
    shards_per_job: int = 0  # shards packed into one job (the model loads once per job); 0: even
    # submitit (Slurm) job resources; ignored by the local and process executors
    slurm_partition: str = ""
    timeout_min: int = 60
    cpus_per_task: int = 2
    gpus_per_node: int = 0

    def submitit_parameters(self) -> dict[str, Any]:
        """Resources for ``submitit.AutoExecutor.update_parameters``."""
        parameters: dict[str, Any] = {
            "timeout_min": self.timeout_min,
            "cpus_per_task": self.cpus_per_task,
            "gpus_per_node": self.gpus_per_node,
        }
        if self.slurm_partition:
            parameters["slurm_partition"] = self.slurm_partition
        return parameters

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(
                f"[run] executor {self.executor!r} is not known; valid: {', '.join(EXECUTORS)}"
            )
        if self.workers < 1 or self.shards_per_job < 0:
            raise ConfigError(
                f"[run] needs workers ≥ 1 and shards_per_job ≥ 0, got workers={self.workers}, "
                f"shards_per_job={self.shards_per_job}"
            )


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: what network, which images, which values, what to sweep, where to."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    values: ValuesSection = field(default_factory=ValuesSection)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (as written to a run's config.json)."""
        return asdict(self)


_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "values": ValuesSection,
    "sweep": SweepConfig,
    "run": RunSection,
}


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if annotation is type(None):
        return "nothing (leave the key out)"
    return getattr(annotation, "__name__", str(annotation))


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """``value`` from TOML as ``annotation`` (str, int, float, bool, tuple[X, ...], X | None)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        for option in options:
            try:
                return _convert(value, option, where)
            except ConfigError:
                continue
    elif origin is tuple:
        if isinstance(value, list):
            item = typing.get_args(annotation)[0]
            return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where} = {value!r} has the wrong type: expected {_type_name(annotation)}")


#: Keys that name layers: TOML may give each as a 1-based number (``layers = [1, 5]``) or a name.
_LAYER_KEYS = frozenset({"layers"})


def _layer_names(value: Any) -> Any:
    """Layer numbers given as TOML integers, as the strings layer lookups take."""
    if not isinstance(value, list):
        return value
    return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]


def _section(cls: type, table: Any, name: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table of keys, got {table!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} in [{name}]; allowed: {', '.join(known)}"
        )
    kwargs = {
        key: _convert(
            _layer_names(value) if key in _LAYER_KEYS else value, hints[key], f"[{name}] {key}"
        )
        for key, value in table.items()
    }
    return cls(**kwargs)


def parse_config(document: dict[str, Any]) -> ExperimentConfig:
    """Validate a parsed TOML document and build the :class:`ExperimentConfig`."""
    unknown = sorted(set(document) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(f'[{u}]' for u in unknown)}; allowed: "
            + ", ".join(f"[{s}]" for s in _SECTIONS)
        )
    sections = {
        name: _section(cls, document[name], name)
        for name, cls in _SECTIONS.items()
        if name in document
    }
    return ExperimentConfig(**sections)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a TOML experiment config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    return parse_config(document)
