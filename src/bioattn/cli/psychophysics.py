"""``bioattn cueing``, ``noise`` and ``orientation``: the psychophysics experiments."""

from __future__ import annotations

import argparse
from pathlib import Path

from bioattn.cli.common import (
    add_epochs,
    add_model_options,
    csv,
    default_of,
    experiment_config,
    floats,
    given,
    prepared,
    print_table,
)


def cmd_cueing(args: argparse.Namespace) -> int:
    """Spatial cueing: valid, neutral and invalid cues on 2×2 arrays."""
    from bioattn.experiments.psychophysics import CueingConfig, run_cueing, write_cueing

    experiment = prepared(args, experiment_config(args), run_dir=args.out)
    cueing = CueingConfig(
        **given(
            categories=args.categories,
            layer=args.layer,
            betas=args.betas,
            n_pos=args.n_pos,
            n_neg=args.n_neg,
            seed=args.sweep_seed,
        )
    )
    table = run_cueing(experiment.network, experiment.detectors, experiment.test_images, cueing)
    print_table(write_cueing(table, args.out))
    print(f"results in {args.out}")
    return 0


def cmd_noise(args: argparse.Namespace) -> int:
    """Detection in white noise with and without a feature cue: psychometric curves.

    Tuning values come from ``prepare`` (``[values] path``, else computed once into ``--out``);
    the gradient values of noisy training images are added for the cues.
    """
    from bioattn.experiments.psychophysics import NoiseConfig, noise_detection, write_noise

    experiment = prepared(
        args, experiment_config(args), values=True, image_types=(), run_dir=args.out
    )
    noise = NoiseConfig(
        **given(
            categories=args.categories,
            snrs=args.snrs,
            layer=args.layer,
            beta=args.beta,
            n_pos=args.n_pos,
            n_neg=args.n_neg,
            seed=args.sweep_seed,
        )
    )
    table = noise_detection(experiment, noise)
    print_table(write_noise(table, args.out))
    print(f"results in {args.out}")
    return 0


def cmd_orientation(args: argparse.Namespace) -> int:
    """Orientation detection with feature attention; spatial vs feature attention at one layer.

    The orientation detectors and values are fitted on gratings; the network is the configured
    one (its image detectors are not used).
    """
    from bioattn.data.gratings import GratingSpec
    from bioattn.experiments.orientation import OrientationConfig, run_orientation

    experiment = prepared(args, experiment_config(args), run_dir=args.out)
    spec = GratingSpec(**given(cycles_per_pixel=args.cycles_per_pixel, contrast=args.contrast))
    orientation = OrientationConfig(
        spec=spec,
        **given(
            orientations=args.orientations,
            betas=args.betas,
            spatial_betas=args.spatial_betas,
            spatial_layer=args.layer,
            n_pos=args.n_pos,
            n_neg=args.n_neg,
            seed=args.sweep_seed,
            additive_spatial=True if args.additive else None,
        ),
    )
    print_orientation(run_orientation(experiment.network, args.out, orientation))
    print(f"results in {args.out}")
    return 0


def print_orientation(result: dict) -> None:
    """The feature-attention summary and the spatial/feature comparison of an orientation run."""
    from bioattn.analysis.sdt import format_summary

    print("orientation detection, performance increase (pp, mean ± SEM across orientations):")
    print(format_summary(result["feature_summary"]))
    print("\nspatial vs feature attention at one layer (means across orientations):")
    columns = ["method", "beta", "tp", "fp", "performance", "dprime", "criterion"]
    print_table(result["criterion_sensitivity"], columns)


def _task_sizes(parser: argparse.ArgumentParser, owner: type, what: str) -> None:
    for flag, kind in (("--n-pos", "positives"), ("--n-neg", "negatives")):
        name = flag.removeprefix("--").replace("-", "_")
        parser.add_argument(
            flag, type=int, default=None, help=f"{kind} per {what} ({default_of(owner, name)})"
        )
    parser.add_argument(
        "--sweep-seed",
        type=int,
        default=None,
        help=f"seed of the test sets ({default_of(owner, 'seed')})",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``cueing``, ``noise`` and ``orientation``."""
    from bioattn.data.gratings import GratingSpec
    from bioattn.experiments.orientation import OrientationConfig
    from bioattn.experiments.psychophysics import CueingConfig, NoiseConfig

    categories = {"type": csv, "default": None, "help": "comma-separated categories (default all)"}

    p = sub.add_parser("cueing", help="spatial cueing: valid, neutral and invalid cues")
    add_model_options(p)
    add_epochs(p)
    p.add_argument("--categories", **categories)
    p.add_argument("--layer", default=None, help="attended layer (default the last)")
    _task_sizes(p, CueingConfig, "category")
    p.add_argument(
        "--betas",
        type=floats,
        default=None,
        help=f"spatial cue strengths (default {default_of(CueingConfig, 'betas')})",
    )
    p.add_argument("--out", type=Path, default=Path("runs/cueing"), help="results folder")
    p.set_defaults(func=cmd_cueing)

    p = sub.add_parser("noise", help="detection in white noise with a feature cue")
    add_model_options(p)
    add_epochs(p)
    p.add_argument("--categories", **categories)
    p.add_argument("--layer", default=None, help="attended layer (default the last but one)")
    _task_sizes(p, NoiseConfig, "category")
    p.add_argument(
        "--snrs",
        type=floats,
        default=None,
        help=f"signal-to-noise power ratios (default {default_of(NoiseConfig, 'snrs')})",
    )
    p.add_argument(
        "--beta",
        type=float,
        default=None,
        help=f"feature cue strength ({default_of(NoiseConfig, 'beta')})",
    )
    p.add_argument("--out", type=Path, default=Path("runs/noise"), help="results folder")
    p.set_defaults(func=cmd_noise)

    p = sub.add_parser(
        "orientation",
        help="orientation detection with feature attention; spatial vs feature attention",
    )
    add_model_options(p)
    add_epochs(p)
    p.add_argument(
        "--orientations",
        type=csv,
        default=None,
        help="comma-separated orientations on the grid 0°,20°,...,160° (default all nine)",
    )
    p.add_argument(
        "--betas",
        type=floats,
        default=None,
        help=f"feature attention strengths of the layer sweep (default "
        f"{default_of(OrientationConfig, 'betas')})",
    )
    p.add_argument(
        "--spatial-betas",
        type=floats,
        default=None,
        help=f"strengths of the spatial/feature comparison (default "
        f"{default_of(OrientationConfig, 'spatial_betas')})",
    )
    p.add_argument(
        "--layer", default=None, help="layer of the spatial/feature comparison (default last)"
    )
    p.add_argument(
        "--additive",
        action="store_true",
        help="also combine spatial and feature gains additively, as the original code did",
    )
    p.add_argument(
        "--cycles-per-pixel",
        type=float,
        default=None,
        help=f"grating frequency (default {default_of(GratingSpec, 'cycles_per_pixel')})",
    )
    p.add_argument(
        "--contrast",
        type=float,
        default=None,
        help=f"grating contrast 0–1 (default {default_of(GratingSpec, 'contrast')})",
    )
    _task_sizes(p, OrientationConfig, "orientation")
    p.add_argument("--out", type=Path, default=Path("runs/orientation"), help="results folder")
    p.set_defaults(func=cmd_orientation)
