"""``bioattn sweep``, ``collect``, ``report``, ``plot``, ``demo`` and ``replicate``: attention
sweeps and their results folders."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bioattn.cli.common import (
    add_epochs,
    add_model_options,
    default_of,
    experiment_config,
    given,
    print_table,
    require_default,
    sweep_options,
    sweep_section,
)
from bioattn.errors import ConfigError

if TYPE_CHECKING:
    from bioattn.experiments.config import ExperimentConfig

#: Why ``demo`` runs only a trained embedded network.
DEMO_DEFAULT_ONLY = (
    "`bioattn demo` is the replication on a trained embedded network (fashion-vgg, the "
    "default, or fashion-vgg16, on Fashion-MNIST, default device and precision), which "
    "run_replication loads itself; run `bioattn sweep`, `cueing` and `orientation` with these "
    "options instead"
)
#: Why ``replicate`` trains only the embedded networks.
REPLICATE_DEFAULT_ONLY = (
    "`bioattn replicate` trains its networks itself (fashion-vgg, the default, or "
    "fashion-vgg16 on Fashion-MNIST, one per training seed); another model has no training "
    "recipe here"
)
#: ``demo --quick``: a smoke-test sweep (categories only where none were asked for).
QUICK_CATEGORIES = ("Trouser", "Bag")
QUICK_SWEEP: dict[str, Any] = {"betas": (0.0, 0.5, 2.0), "n_pos": 20, "n_neg": 20}
#: ``demo --quick --all``: the orientation and cueing experiments at smoke-test size.
QUICK_ORIENTATION: dict[str, Any] = {
    "orientations": ("0°", "80°"),
    "betas": (0.0, 0.5, 2.0),
    "spatial_betas": (0.0, 0.3, 1.0),
    "n_pos": 20,
    "n_neg": 20,
    "n_train": 60,
    "n_gradient": 20,
}
QUICK_CUEING: dict[str, Any] = {"categories": QUICK_CATEGORIES, "n_pos": 20, "n_neg": 20}


def sweep_config(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment config of ``bioattn sweep``: ``--config`` with every flag on top."""
    return experiment_config(
        args,
        values={"path": None if args.values is None else str(args.values)},
        sweep=sweep_section(args),
        run={
            "out": None if args.out is None else str(args.out),
            "executor": args.executor,
            "workers": args.workers,
            "shards_per_job": args.shards_per_job,
        },
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    """Sweep attention over layers × β × categories × methods: sharded, resumable."""
    from bioattn.analysis.sdt import format_summary
    from bioattn.experiments.shards import run_configured_sweep

    config = sweep_config(args)
    result = run_configured_sweep(config)
    print(format_summary(result["summary"]))
    print(
        f"shards: {result['done']} computed, {result['skipped']} finished earlier; "
        f"results written to {config.run.out}"
    )
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    """Merge a sharded sweep's finished shards into its tables and figures."""
    from bioattn.analysis.sdt import format_summary
    from bioattn.experiments.runfolder import plot_run, write_tables
    from bioattn.experiments.shards import collect

    table = collect(args.run_dir)
    _gains, summary = write_tables(table, Path(args.run_dir))
    plot_run(args.run_dir)
    print(format_summary(summary))
    print(f"{len(table)} rows merged into {Path(args.run_dir) / 'performance.parquet'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write a self-contained HTML report of a results folder, or compare several."""
    from bioattn.report import write_comparison, write_report

    if len(args.run_dir) == 1:
        print(write_report(args.run_dir[0], out=args.out))
        return 0
    if args.out is None:
        raise ConfigError(
            f"{len(args.run_dir)} results folders make one comparison page; give its file "
            "with --out, e.g. --out comparison.html"
        )
    print(write_comparison(args.run_dir, args.out))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Redraw the figures of a results folder."""
    from bioattn.experiments.runfolder import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0


def replication_settings(args: argparse.Namespace, why: str) -> tuple[Any, Any, Any]:
    """(config, sweep, training settings) of ``demo`` and ``replicate``: an embedded network,
    the sweep flags, ``--quick``'s small sweep."""
    from dataclasses import replace

    from bioattn.models.train import TrainSettings
    from bioattn.models.zoo import FASHION_ARCHITECTURES

    config = experiment_config(args, sweep=sweep_section(args))
    require_default(config, why, specs=tuple(FASHION_ARCHITECTURES))
    sweep = config.sweep
    if args.quick:
        sweep = replace(sweep, categories=sweep.categories or QUICK_CATEGORIES, **QUICK_SWEEP)
    settings = TrainSettings(
        architecture=config.model.spec, **given(seed=config.model.seed, epochs=args.epochs)
    )
    return config, sweep, settings


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole replication on a trained embedded network (Fashion-MNIST)."""
    from bioattn.experiments.replication import run_replication

    config, sweep, settings = replication_settings(args, DEMO_DEFAULT_ONLY)
    data_dir = config.data.path or None
    started = time.perf_counter()
    result = run_replication(args.out, sweep, settings, data_dir)
    if args.all:
        _demo_extras(settings, data_dir, Path(args.out), args.quick)
    metrics = result["metrics"]
    accuracies = metrics["detector_balanced_accuracy"].values()
    print()
    print(
        f"{settings.architecture}: test accuracy {metrics['test_accuracy']:.4f}; detector "
        f"balanced accuracy {min(accuracies):.3f}–{max(accuracies):.3f}"
    )
    _print_results(
        "performance increase from attention on the test images, percentage points (mean ± "
        "SEM across categories; β chosen per category on selection images):",
        result["summary"],
        result["verdicts"],
        Path(args.out),
    )
    print(
        f"\nresults in {args.out} (figures in {Path(args.out) / 'figures'}); "
        f"took {time.perf_counter() - started:.0f} s"
    )
    return 0


def _print_results(heading: str, summary: Any, verdicts: Any, out: Path) -> None:
    """What ``demo`` and ``replicate`` print: the performance increase by layer (a summary or
    an effects table) and the findings' verdicts."""
    from bioattn.analysis.findings import format_findings
    from bioattn.analysis.sdt import format_summary

    print(heading)
    print(format_summary(summary))
    print("\nfindings of Lindsay & Miller (2018), verdicts computed from this run:")
    print(format_findings(verdicts))
    print(f"(each comparison with its numbers: {out / 'comparisons.csv'})")


def cmd_replicate(args: argparse.Namespace) -> int:
    """The replication on several trained embedded networks, with intervals over networks."""
    from bioattn.experiments.replication import run_replicate

    if args.networks < 1:
        raise ConfigError(f"--networks must be at least 1, got {args.networks}")
    if args.first_seed < 0:
        raise ConfigError(f"--first-seed must be 0 or more, got {args.first_seed}")
    config, sweep, settings = replication_settings(args, REPLICATE_DEFAULT_ONLY)
    if config.model.seed != 0:
        raise ConfigError(
            f"replicate trains one network per seed from --first-seed; a model seed "
            f"({config.model.seed}) does not apply, give --first-seed {config.model.seed}"
        )
    seeds = range(args.first_seed, args.first_seed + args.networks)
    started = time.perf_counter()
    result = run_replicate(args.out, seeds, sweep, settings, config.data.path or None)
    accuracies = [m["test_accuracy"] for m in result["metrics"].values()]
    print(
        f"\n{len(accuracies)} {settings.architecture} networks (training seeds {seeds.start}–"
        f"{seeds.stop - 1}): test accuracy {min(accuracies):.4f}–{max(accuracies):.4f}"
    )
    _print_results(
        "performance increase on the test images, percentage points (mean [95 % interval over "
        "networks × categories]; β chosen on selection images):",
        result["effects"],
        result["verdicts"],
        Path(args.out),
    )
    print(f"\nresults in {args.out}; took {time.perf_counter() - started:.0f} s")
    return 0


def _demo_extras(settings: Any, data_dir: str | None, out: Path, quick: bool) -> None:
    """``demo --all``: the orientation/spatial and spatial cueing experiments on the network
    :func:`run_replication` used (the same training settings)."""
    from bioattn.cli.psychophysics import print_orientation
    from bioattn.data.fashion_mnist import load_fashion_mnist
    from bioattn.experiments.orientation import OrientationConfig, run_orientation
    from bioattn.experiments.psychophysics import CueingConfig, run_cueing, write_cueing
    from bioattn.models.train import load_default

    trained = load_default(settings, data_dir)
    orientation = OrientationConfig(**QUICK_ORIENTATION) if quick else OrientationConfig()
    print_orientation(run_orientation(trained.network, out / "orientation", orientation))
    cueing = CueingConfig(**QUICK_CUEING) if quick else CueingConfig()
    test = load_fashion_mnist("test", data_dir)
    means = write_cueing(
        run_cueing(trained.network, trained.detectors, test, cueing), out / "cueing"
    )
    print("\nspatial cueing on arrays (means across categories):")
    print_table(means)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``sweep``, ``collect``, ``report``, ``plot``, ``demo`` and ``replicate``."""
    from bioattn.experiments.config import EXECUTORS, RunSection
    from bioattn.experiments.replication import DEFAULT_SEEDS

    def run_default(name: str) -> str:
        return default_of(RunSection, name)

    p = sub.add_parser(
        "sweep", help="sweep attention and measure detection performance (sharded, resumable)"
    )
    add_model_options(p)
    sweep_options(p)
    p.add_argument(
        "--values",
        type=Path,
        default=None,
        help="values file from `bioattn values` (default: computed once into the results folder)",
    )
    p.add_argument("--out", type=Path, default=None, help=f"results folder ({run_default('out')})")
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=None,
        help=f"run shards here (local), in a process pool, or via submitit (Slurm); default "
        f"{run_default('executor')}",
    )
    p.add_argument(
        "--workers", type=int, default=None, help=f"parallel jobs ({run_default('workers')})"
    )
    p.add_argument(
        "--shards-per-job",
        type=int,
        default=None,
        help="shards packed into one job, which loads the model once (default: even split)",
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("collect", help="merge a sharded sweep's finished shards into its tables")
    p.add_argument("run_dir", type=Path, help="results folder of `bioattn sweep`")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser(
        "report",
        help="write RUN_DIR/report.html (findings, interactive figures, tables); with several "
        "folders, one page comparing them (--out)",
    )
    p.add_argument("run_dir", type=Path, nargs="+", help="results folder(s)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="HTML file to write (default RUN_DIR/report.html; required for several folders)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("plot", help="draw the figures of a results folder")
    p.add_argument("run_dir", type=Path, help="results folder")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("demo", help="the whole replication on the trained default network")
    add_model_options(p, note=f"Only the defaults: {DEMO_DEFAULT_ONLY}.")
    add_epochs(p)
    sweep_options(p)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="results folder")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small version (2 categories, 3 β values, 20+20 images) for a smoke test",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="also run the orientation/spatial and spatial cueing experiments (in OUT/orientation "
        "and OUT/cueing)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "replicate",
        help="the replication on several trained networks: effects with 95 %% intervals over "
        "networks and categories, and the findings' verdicts",
    )
    add_model_options(p, note=f"Only the defaults: {REPLICATE_DEFAULT_ONLY}.")
    add_epochs(p)
    sweep_options(p)
    p.add_argument(
        "--networks",
        type=int,
        default=DEFAULT_SEEDS,
        help=f"networks to train and test, training seeds FIRST_SEED … (default {DEFAULT_SEEDS})",
    )
    p.add_argument("--first-seed", type=int, default=0, help="first training seed (default 0)")
    p.add_argument("--out", type=Path, default=Path("runs/replicate"), help="results folder")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small version (2 categories, 3 β values, 20+20 images) for a smoke test",
    )
    p.set_defaults(func=cmd_replicate)
