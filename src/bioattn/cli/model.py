"""``bioattn train``, ``bioattn layers`` and ``bioattn values``: the network and its values."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from bioattn.cli.common import (
    add_epochs,
    add_model_options,
    csv,
    default_of,
    experiment_config,
    given,
    prepared,
    require_default,
)
from bioattn.errors import ConfigError

if TYPE_CHECKING:
    from bioattn.experiments.config import ExperimentConfig
    from bioattn.models.train import TrainSettings

#: Why ``train`` trains only the embedded networks.
TRAIN_DEFAULT_ONLY = (
    "`bioattn train` trains the embedded networks (--model fashion-vgg, the default, or "
    "--model fashion-vgg16) on Fashion-MNIST on the CPU; other models come with their weights "
    "file (--model SPEC --weights FILE on the other commands)"
)


def train_settings(args: argparse.Namespace) -> tuple[ExperimentConfig, TrainSettings]:
    """The config and training settings of ``bioattn train``, checked."""
    from bioattn.models.train import TrainSettings
    from bioattn.models.zoo import FASHION_ARCHITECTURES

    config = experiment_config(args)
    require_default(config, TRAIN_DEFAULT_ONLY, specs=tuple(FASHION_ARCHITECTURES))
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
    settings = TrainSettings(
        architecture=config.model.spec,
        **given(seed=config.model.seed, epochs=args.epochs),
    )
    return config, settings


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or load from the cache) an embedded network and report its accuracy."""
    from bioattn.models.train import load_default

    config, settings = train_settings(args)
    trained = load_default(settings, config.data.path or None, retrain=args.retrain)
    metrics = trained.metrics
    print(f"model cached in {trained.path}")
    print(f"test accuracy (10-way): {metrics['test_accuracy']:.4f}")
    print(f"training time: {metrics['train_seconds']:.0f} s")
    print("detector balanced accuracy on standard test images:")
    for name, accuracy in metrics["detector_balanced_accuracy"].items():
        print(f"  {name:12s} {accuracy:.3f}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    """List a model's attention sites (and the groups of reused modules)."""
    from bioattn.models.zoo import build_network

    network = build_network(args.model, weights=args.weights)
    rows = network.site_table()
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in columns}
    header = "  ".join(f"{c:>{widths[c]}}" if c == "#" else f"{c:{widths[c]}}" for c in columns)
    print(header.rstrip())
    for row in rows:
        print(
            "  ".join(
                f"{row[c]!s:>{widths[c]}}" if c == "#" else f"{row[c]!s:{widths[c]}}"
                for c in columns
            ).rstrip()
        )
    size = network.sites.probe_size
    print(f"(spatial sizes for a {size}x{size} input", end="")
    if network.sites.graph is None:
        print(f"; found with module hooks: torch.fx cannot trace it: {network.sites.trace_error}")
    else:
        print("; sites found on the torch.fx graph)")
    for path, reason in network.sites.refused.items():
        print(f"refused: {path}: {reason}")
    return 0


def cmd_values(args: argparse.Namespace) -> int:
    """Compute tuning and gradient values of the configured network into ``--out``.

    A network other than the trained default gets its detectors fitted once and kept next to
    the values file (``detectors.safetensors``), where ``bioattn record --values`` finds them.
    """
    from bioattn.attention.values import compute_values, save_values

    config = experiment_config(args)
    experiment = prepared(args, config, run_dir=Path(args.out).parent)
    image_types = values_image_types(args, config)
    values = compute_values(
        experiment.network,
        experiment.detectors,
        experiment.train_images,
        image_types,
        gradient_set_size=config.values.gradient_images,
        seed=config.sweep.seed,
    )
    path = save_values(values, args.out)
    print(f"values written to {path}: {', '.join(map(str, values.data_vars))}")
    return 0


def values_image_types(args: argparse.Namespace, config: ExperimentConfig) -> tuple[str, ...]:
    """The image types ``bioattn values`` computes gradient values for, checked."""
    from bioattn.data.tasks import IMAGE_TYPES

    # as prepare() computes a sweep's values: noise images have no gradient values of their own
    types = args.image_types or tuple(t for t in config.sweep.image_types if t != "noise")
    unknown = [t for t in types if t not in IMAGE_TYPES or t == "noise"]
    if unknown:
        valid = ", ".join(t for t in IMAGE_TYPES if t != "noise")
        raise ConfigError(f"no gradient values for image type {unknown[0]!r}; valid: {valid}")
    return tuple(types)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train``, ``layers`` and ``values``."""
    from bioattn.experiments.sweep import SweepConfig

    p = sub.add_parser(
        "train",
        help="train (or load) an embedded Fashion-MNIST network (fashion-vgg, fashion-vgg16)",
    )
    add_model_options(p, note=f"Only the embedded networks: {TRAIN_DEFAULT_ONLY}.")
    add_epochs(p)
    p.add_argument("--retrain", action="store_true", help="ignore the cache and train again")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("layers", help="list a model's attention sites (attendable layers)")
    p.add_argument(
        "model",
        help="fashion-vgg, fashion-vgg16, vgg16, alexnet, resnet18, resnet50, cornet-z, cornet-s, "
        "or package.module:callable",
    )
    p.add_argument("--weights", default=None, help="weights file (.safetensors or .pth)")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("values", help="compute tuning and gradient values")
    add_model_options(p)
    add_epochs(p)
    p.add_argument("--out", type=Path, default=Path("values.nc"), help="netCDF file to write")
    p.add_argument(
        "--image-types",
        type=csv,
        default=None,
        help=f"image types for gradient values (default: the config's [sweep] image_types, "
        f"else {default_of(SweepConfig, 'image_types')})",
    )
    p.set_defaults(func=cmd_values)
