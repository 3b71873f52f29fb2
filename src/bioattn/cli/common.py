"""What every command shares: list parsers, the model/data options, the experiment config.

Commands take their settings from the library: a flag that is not given is ``None`` and leaves
the library's default (a dataclass field or a function parameter) in place; help texts read
those defaults with :func:`default_of` instead of repeating them.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bioattn.errors import ConfigError

if TYPE_CHECKING:
    from bioattn.experiments.config import ExperimentConfig
    from bioattn.experiments.prepare import Experiment


# --- values on the command line -----------------------------------------------------------------
def csv(text: str) -> tuple[str, ...]:
    """``a, b,c`` -> ``("a", "b", "c")`` (empty items dropped); an empty list is an error (leave
    the option out for its default)."""
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    if not items:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list such as a,b; got {text!r} (leave the option out "
            "for its default)"
        )
    return items


def floats(text: str) -> tuple[float, ...]:
    """Comma-separated finite numbers, e.g. ``0,0.5,1,2``."""
    try:
        numbers = tuple(float(part) for part in csv(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0,0.5,1,2; got {text!r}"
        ) from error
    bad = [n for n in numbers if not math.isfinite(n)]
    if bad:
        raise argparse.ArgumentTypeError(f"numbers must be finite, got {bad[0]} in {text!r}")
    return numbers


def given(**settings: Any) -> dict[str, Any]:
    """The settings whose flags were given (not ``None``)."""
    return {name: value for name, value in settings.items() if value is not None}


def show(value: Any) -> str:
    """A default as a user types it: tuples comma-separated, ``None`` as "all"."""
    if value is None:
        return "all"
    if isinstance(value, tuple | list):
        return ",".join(show(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def default_of(owner: Any, name: str) -> str:
    """The library default of ``owner.name`` (a dataclass field or a function parameter), as
    :func:`show` writes it, for help texts."""
    if dataclasses.is_dataclass(owner):
        for field in dataclasses.fields(owner):
            if field.name == name:
                if field.default is not dataclasses.MISSING:
                    return show(field.default)
                return show(field.default_factory())  # type: ignore[misc]
    else:
        parameter = inspect.signature(owner).parameters.get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return show(parameter.default)
    raise AttributeError(f"{owner!r} has no default for {name!r}")


# --- the shared model and data options ----------------------------------------------------------
def add_model_options(
    parser: argparse.ArgumentParser, *, seed: bool = True, note: str | None = None
) -> None:
    """``--config``, ``--model``, ``--weights``, ``--data`` (alias ``--data-dir``),
    ``--data-kind``, ``--device``, ``--precision`` and (with ``seed``) ``--seed``; ``note``
    describes the group (e.g. what the command cannot do)."""
    from bioattn.data.fashion_mnist import DATA_ENV_VAR, DEFAULT_DATA_DIR
    from bioattn.experiments.config import DATA_KINDS, ModelSection
    from bioattn.models.network import PRECISIONS
    from bioattn.models.zoo import list_models

    group = parser.add_argument_group("model and data (flags override --config)", note)
    group.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML experiment config ([model], [data], [values], [sweep], [run])",
    )
    group.add_argument(
        "--model",
        default=None,
        help=f"network: {', '.join(list_models())} or package.module:callable (default "
        f"{default_of(ModelSection, 'spec')}: the trained default)",
    )
    group.add_argument(
        "--weights", default=None, help="weights file of the model (.safetensors or .pth)"
    )
    group.add_argument(
        "--readout",
        default=None,
        help="module whose input the detectors read (default: the model's, e.g. fc7 of vgg16)",
    )
    group.add_argument(
        "--data",
        "--data-dir",
        dest="data",
        type=Path,
        default=None,
        help=f"images: the Fashion-MNIST IDX folder (default ${DATA_ENV_VAR}, then "
        f"{DEFAULT_DATA_DIR}) or, with --data-kind image-folder, a folder with train/ and test/ "
        "sub-folders of one folder per category",
    )
    group.add_argument(
        "--data-kind",
        choices=DATA_KINDS,
        default=None,
        help="what --data holds (default: the config's, else fashion-mnist)",
    )
    group.add_argument(
        "--device",
        default=None,
        help=f"cpu, cuda, cuda:N or auto (CUDA when present); default "
        f"{default_of(ModelSection, 'device')}",
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help=f"precision of the forward passes (default {default_of(ModelSection, 'precision')})",
    )
    if seed:
        group.add_argument(
            "--seed",
            type=int,
            default=None,
            help=f"model seed: training seed of the default network, initialisation of a "
            f"user model, detector subsets (default {default_of(ModelSection, 'seed')})",
        )


def add_epochs(parser: argparse.ArgumentParser) -> None:
    """``--epochs``: training epochs of the default network."""
    from bioattn.models.train import TrainSettings

    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"training epochs of the default network (default "
        f"{default_of(TrainSettings, 'epochs')})",
    )


def experiment_config(args: argparse.Namespace, **sections: dict[str, Any]) -> ExperimentConfig:
    """``--config`` (or the defaults) with the model/data flags and ``sections`` (as for
    :func:`~bioattn.experiments.prepare.with_overrides`) on top; ``None`` means not given."""
    from bioattn.experiments.config import ExperimentConfig, load_config
    from bioattn.experiments.prepare import with_overrides

    config = load_config(args.config) if args.config else ExperimentConfig()
    model = {
        "spec": args.model,
        "weights": args.weights,
        "seed": getattr(args, "seed", None),
        "device": args.device,
        "precision": args.precision,
        "readout": getattr(args, "readout", None),
    }
    data = {"path": None if args.data is None else str(args.data), "kind": args.data_kind}
    return with_overrides(config, model=model, data=data, **sections)


def prepared(
    args: argparse.Namespace,
    config: ExperimentConfig,
    *,
    values: bool = False,
    image_types: tuple[str, ...] | None = None,
    run_dir: str | Path | None = None,
) -> Experiment:
    """:func:`~bioattn.experiments.prepare.prepare` of ``config``, after refusing ``--epochs``
    (which ``prepare`` cannot honour)."""
    from bioattn.experiments.prepare import prepare

    refuse_epochs(args)
    return prepare(config, values=values, image_types=image_types, run_dir=run_dir)


def refuse_epochs(args: argparse.Namespace) -> None:
    """``--epochs`` other than the default is refused where the network comes from ``prepare``,
    which loads the default network trained with the default settings."""
    from bioattn.models.train import TrainSettings

    epochs = getattr(args, "epochs", None)
    if epochs is not None and epochs != TrainSettings().epochs:
        raise ConfigError(
            f"--epochs {epochs}: this command loads the default network trained with "
            f"{TrainSettings().epochs} epochs (experiment configs have no epochs setting); "
            "only `bioattn train` and `bioattn demo` train with other epochs"
        )


def require_default(
    config: ExperimentConfig, why: str, specs: tuple[str, ...] | None = None
) -> None:
    """Refuse what ``config`` asks beyond the trained default network on Fashion-MNIST on the
    default device at the default precision; ``why`` says why. ``specs`` are the models accepted
    (without weights; default: only the default spec)."""
    from bioattn.experiments.config import DataSection, ModelSection

    model, data, default = config.model, config.data, ModelSection()
    accepted = (default.spec,) if specs is None else specs
    refused = []
    if model.spec.strip().lower() not in accepted or model.weights != default.weights:
        refused.append(
            f"model {model.spec}" + (f" with weights {model.weights}" if model.weights else "")
        )
    if data.kind != DataSection().kind:
        refused.append(f"data kind {data.kind}")
    if model.device != default.device:
        refused.append(f"device {model.device}")
    if model.precision != default.precision:
        refused.append(f"precision {model.precision}")
    if refused:
        raise ConfigError(f"{', '.join(refused)} not supported: {why}")


def sweep_options(parser: argparse.ArgumentParser) -> None:
    """The sweep settings of :class:`~bioattn.experiments.sweep.SweepConfig` as flags."""
    from bioattn.experiments.sweep import SweepConfig

    def default(name: str) -> str:
        return default_of(SweepConfig, name)

    parser.add_argument(
        "--image-types",
        type=csv,
        default=None,
        help=f"comma-separated image types: merged, array, standard, noise (default "
        f"{default('image_types')})",
    )
    parser.add_argument(
        "--categories", type=csv, default=None, help="comma-separated categories (default all)"
    )
    parser.add_argument(
        "--layers",
        type=csv,
        default=None,
        help="comma-separated layers: dotted paths, aliases (conv2_1) or numbers (default all)",
    )
    parser.add_argument(
        "--betas",
        type=floats,
        default=None,
        help=f"comma-separated attention strengths; 0 is always added (default {default('betas')})",
    )
    parser.add_argument(
        "--methods",
        type=csv,
        default=None,
        help="comma-separated methods: tuning, gradient, uniform, shuffled-tuning, "
        f"shuffled-gradient, response-tuning, gradient-positive, ... (default "
        f"{default('methods')})",
    )
    parser.add_argument(
        "--no-all-layers",
        dest="all_layers",
        action="store_const",
        const=False,
        default=None,
        help="skip the all-layers (β/10) condition",
    )
    parser.add_argument(
        "--n-pos", type=int, default=None, help=f"positives per category ({default('n_pos')})"
    )
    parser.add_argument(
        "--n-neg", type=int, default=None, help=f"negatives per category ({default('n_neg')})"
    )
    parser.add_argument("--snr", type=float, default=None, help="SNR for the noise image type")
    parser.add_argument(
        "--sweep-seed", type=int, default=None, help=f"seed of the test sets ({default('seed')})"
    )


def sweep_section(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[sweep]`` overrides of :func:`sweep_options`' flags."""
    return {
        "image_types": args.image_types,
        "categories": args.categories,
        "layers": args.layers,
        "all_layers": args.all_layers,
        "betas": args.betas,
        "methods": args.methods,
        "n_pos": args.n_pos,
        "n_neg": args.n_neg,
        "seed": args.sweep_seed,
        "snr": args.snr,
    }


def print_table(table: Any, columns: Iterable[str] | None = None) -> None:
    """A results table rounded to 3 decimals, without the index."""
    if columns is not None:
        table = table[list(columns)]
    print(table.round(3).to_string(index=False))
