"""The ``bioattn`` command line: one entry point, one subcommand per job.

Every subcommand wraps a function of the Python API; see ``bioattn COMMAND --help``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bioattn.errors import BioattnError, ConfigError

if TYPE_CHECKING:  # the CLI imports torch-heavy modules only when a command runs
    from bioattn.experiments.config import ExperimentConfig
    from bioattn.experiments.sweep import SweepConfig
    from bioattn.models.train import TrainSettings
    from bioattn.ssn import SSNParams


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in _csv(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0,0.5,1,2; got {text!r}"
        ) from error


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding the Fashion-MNIST IDX files (default: $BIOATTN_DATA, then "
        "/usr/share/datasets/fashion-mnist)",
    )


def _add_training(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs")


def _add_sweep_options(parser: argparse.ArgumentParser) -> None:
    from bioattn.experiments.sweep import DEFAULT_BETAS

    parser.add_argument(
        "--image-types",
        type=_csv,
        default=None,
        help="comma-separated image types: merged, array, standard, noise (default merged,array)",
    )
    parser.add_argument(
        "--categories", type=_csv, default=None, help="comma-separated categories (default all)"
    )
    parser.add_argument(
        "--layers",
        type=_csv,
        default=None,
        help="comma-separated layers: dotted paths, aliases (conv2_1) or numbers (default all)",
    )
    parser.add_argument(
        "--betas",
        type=_floats,
        default=None,
        help=f"comma-separated attention strengths; 0 is always added (default "
        f"{','.join(map(str, DEFAULT_BETAS))})",
    )
    parser.add_argument(
        "--methods",
        type=_csv,
        default=None,
        help="comma-separated methods: tuning, gradient, uniform, shuffled-tuning, "
        "shuffled-gradient, response-tuning, gradient-positive, ... (default tuning,gradient)",
    )
    parser.add_argument(
        "--no-all-layers",
        dest="all_layers",
        action="store_const",
        const=False,
        default=None,
        help="skip the all-layers (β/10) condition",
    )
    parser.add_argument("--n-pos", type=int, default=None, help="positives per category (75)")
    parser.add_argument("--n-neg", type=int, default=None, help="negatives per category (75)")
    parser.add_argument("--snr", type=float, default=None, help="SNR for the noise image type")
    parser.add_argument("--sweep-seed", type=int, default=None, help="seed of the test sets (0)")


def _add_psychophysics_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--categories", type=_csv, default=None, help="comma-separated categories (default all)"
    )
    parser.add_argument(
        "--layer",
        default=None,
        help="attended layer (default: cueing the last layer, noise the last but one)",
    )
    parser.add_argument("--n-pos", type=int, default=75, help="positives per category (75)")
    parser.add_argument("--n-neg", type=int, default=75, help="negatives per category (75)")
    parser.add_argument("--sweep-seed", type=int, default=0, help="seed of the test sets (0)")


def _sweep_config(args: argparse.Namespace, base: SweepConfig | None = None) -> SweepConfig:
    """``base`` (default: the default sweep) with the sweep flags that were given."""
    from dataclasses import replace

    from bioattn.experiments.sweep import SweepConfig

    given = {
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
    return replace(base or SweepConfig(), **{k: v for k, v in given.items() if v is not None})


def _train_settings(args: argparse.Namespace) -> TrainSettings:
    from dataclasses import replace

    from bioattn.models.train import TrainSettings

    settings = replace(TrainSettings(), seed=args.seed)
    if args.epochs is not None:
        if args.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
        settings = replace(settings, epochs=args.epochs)
    return settings


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or load from the cache) the default network and report its accuracy."""
    from bioattn.models.train import load_default

    trained = load_default(_train_settings(args), args.data_dir, retrain=args.retrain)
    metrics = trained.metrics
    print(f"model cached in {trained.path}")
    print(f"test accuracy (10-way): {metrics['test_accuracy']:.4f}")
    print(f"training time: {metrics['train_seconds']:.0f} s")
    print("detector balanced accuracy on standard test images:")
    for name, accuracy in metrics["detector_balanced_accuracy"].items():
        print(f"  {name:12s} {accuracy:.3f}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    """List a model's attendable layers."""
    from bioattn.models.zoo import build_network

    network = build_network(args.model, weights=args.weights)
    print(f"{'#':>3}  {'alias':8s}  {'module':24s}  {'activation':24s}  maps")
    for layer in network.layers:
        print(
            f"{layer.number:>3}  {layer.alias:8s}  {layer.name:24s}  {layer.activation:24s}  "
            f"{layer.channels}"
        )
    return 0


def cmd_values(args: argparse.Namespace) -> int:
    """Compute tuning and gradient values of the default network."""
    from bioattn.attention.values import compute_values, save_values
    from bioattn.data.fashion_mnist import load_fashion_mnist
    from bioattn.models.train import load_default

    trained = load_default(_train_settings(args), args.data_dir)
    train = load_fashion_mnist("train", args.data_dir)
    values = compute_values(trained.network, trained.detectors, train, args.image_types)
    path = save_values(values, args.out)
    print(f"values written to {path}: {', '.join(map(str, values.data_vars))}")
    return 0


def _experiment_config(args: argparse.Namespace) -> ExperimentConfig:
    """The config file (or the defaults) with the flags that were given on top."""
    from dataclasses import replace

    from bioattn.experiments.config import ExperimentConfig, load_config

    config = load_config(args.config) if args.config else ExperimentConfig()
    model, data, values, run = config.model, config.data, config.values, config.run
    if args.seed is not None:
        model = replace(model, seed=args.seed)
    if args.device is not None:
        model = replace(model, device=args.device)
    if args.precision is not None:
        model = replace(model, precision=args.precision)
    if args.data_dir is not None:
        data = replace(data, path=str(args.data_dir))
    if args.values is not None:
        values = replace(values, path=str(args.values))
    flags = {"out": args.out, "executor": args.executor, "workers": args.workers}
    flags["shards_per_job"] = args.shards_per_job
    given = {k: v for k, v in flags.items() if v is not None}
    run = replace(run, **{k: (str(v) if k == "out" else v) for k, v in given.items()})
    return replace(
        config,
        model=model,
        data=data,
        values=values,
        run=run,
        sweep=_sweep_config(args, config.sweep),
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    """Sweep attention over layers × β × categories × methods: sharded, resumable."""
    from bioattn.analysis.sdt import format_summary
    from bioattn.experiments.shards import run_configured_sweep

    config = _experiment_config(args)
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
    """Write a self-contained HTML report of a results folder."""
    from bioattn.analysis.report import write_report

    print(write_report(args.run_dir))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Redraw the figures of a results folder."""
    from bioattn.experiments.runfolder import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0


def cmd_cueing(args: argparse.Namespace) -> int:
    """Spatial cueing: valid, neutral and invalid cues on 2×2 arrays."""
    from bioattn.data.fashion_mnist import load_fashion_mnist
    from bioattn.experiments.psychophysics import CueingConfig, run_cueing, write_cueing
    from bioattn.models.train import load_default

    trained = load_default(_train_settings(args), args.data_dir)
    config = CueingConfig(
        categories=args.categories,
        layer=args.layer,
        betas=args.betas,
        n_pos=args.n_pos,
        n_neg=args.n_neg,
        seed=args.sweep_seed,
    )
    table = run_cueing(
        trained.network, trained.detectors, load_fashion_mnist("test", args.data_dir), config
    )
    means = write_cueing(table, args.out)
    print(means.round(3).to_string(index=False))
    print(f"results in {args.out}")
    return 0


def cmd_noise(args: argparse.Namespace) -> int:
    """Detection in white noise with and without a feature cue: psychometric curves."""
    from bioattn.attention.values import tuning_values
    from bioattn.data.fashion_mnist import load_fashion_mnist
    from bioattn.experiments.psychophysics import (
        NoiseConfig,
        noise_gradient_values,
        run_noise_detection,
        write_noise,
    )
    from bioattn.models.train import load_default

    trained = load_default(_train_settings(args), args.data_dir)
    train = load_fashion_mnist("train", args.data_dir)
    config = NoiseConfig(
        categories=args.categories,
        snrs=args.snrs,
        layer=args.layer,
        beta=args.beta,
        n_pos=args.n_pos,
        n_neg=args.n_neg,
        seed=args.sweep_seed,
    )
    values = noise_gradient_values(
        tuning_values(trained.network, train),
        trained.network,
        trained.detectors,
        train,
        config.gradient_snr,
    )
    table = run_noise_detection(
        trained.network,
        trained.detectors,
        values,
        load_fashion_mnist("test", args.data_dir),
        config,
    )
    thresholds = write_noise(table, args.out)
    print(thresholds.round(3).to_string(index=False))
    print(f"results in {args.out}")
    return 0


def cmd_orientation(args: argparse.Namespace) -> int:
    """Orientation detection with feature attention; spatial vs feature attention at one layer."""
    from bioattn.data.gratings import GratingSpec
    from bioattn.experiments.orientation import OrientationConfig, run_orientation
    from bioattn.models.train import load_default

    trained = load_default(_train_settings(args), args.data_dir)
    config = OrientationConfig(
        spec=GratingSpec(cycles_per_pixel=args.cycles_per_pixel, contrast=args.contrast),
        orientations=args.orientations,
        betas=args.betas,
        spatial_betas=args.spatial_betas,
        spatial_layer=args.layer,
        n_pos=args.n_pos,
        n_neg=args.n_neg,
        seed=args.sweep_seed,
        additive_spatial=args.additive,
    )
    result = run_orientation(trained.network, args.out, config)
    _print_orientation(result)
    print(f"results in {args.out}")
    return 0


def _print_orientation(result: dict) -> None:
    from bioattn.analysis.sdt import format_summary

    print("orientation detection, performance increase (pp, mean ± SEM across orientations):")
    print(format_summary(result["feature_summary"]))
    table = result["criterion_sensitivity"]
    print("\nspatial vs feature attention at one layer (means across orientations):")
    columns = ["method", "beta", "tp", "fp", "performance", "dprime", "criterion"]
    print(table[columns].round(3).to_string(index=False))


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole replication on the embedded default (Fashion-MNIST)."""
    from dataclasses import replace

    from bioattn.analysis.sdt import format_summary
    from bioattn.experiments.replication import run_replication

    config = _sweep_config(args)
    if args.quick:
        config = replace(
            config,
            categories=config.categories or ("Trouser", "Bag"),
            betas=(0.0, 0.5, 2.0),
            n_pos=20,
            n_neg=20,
        )
    started = time.perf_counter()
    result = run_replication(args.out, config, _train_settings(args), args.data_dir)
    if args.all:
        _demo_extras(args, Path(args.out))
    metrics = result["metrics"]
    print()
    print(
        f"default network: test accuracy {metrics['test_accuracy']:.4f}; detector balanced "
        f"accuracy {min(metrics['detector_balanced_accuracy'].values()):.3f}–"
        f"{max(metrics['detector_balanced_accuracy'].values()):.3f}"
    )
    print(
        "performance increase from attention, percentage points (mean ± SEM across "
        "categories; best β per category):"
    )
    print(format_summary(result["summary"]))
    print(
        f"\nresults in {args.out} (figures in {Path(args.out) / 'figures'}); "
        f"took {time.perf_counter() - started:.0f} s"
    )
    return 0


def _demo_extras(args: argparse.Namespace, out: Path) -> None:
    """``demo --all``: the orientation/spatial and spatial cueing experiments as well."""
    from dataclasses import replace

    from bioattn.data.fashion_mnist import load_fashion_mnist
    from bioattn.experiments.orientation import OrientationConfig, run_orientation
    from bioattn.experiments.psychophysics import CueingConfig, run_cueing, write_cueing
    from bioattn.models.train import load_default

    trained = load_default(_train_settings(args), args.data_dir)
    small = {"n_pos": 20, "n_neg": 20} if args.quick else {}
    orientation = OrientationConfig(**small)
    if args.quick:
        orientation = replace(
            orientation,
            orientations=("0°", "80°"),
            betas=(0.0, 0.5, 2.0),
            spatial_betas=(0.0, 0.3, 1.0),
            n_train=60,
            n_gradient=20,
        )
    _print_orientation(run_orientation(trained.network, out / "orientation", orientation))
    cueing = CueingConfig(categories=("Trouser", "Bag") if args.quick else None, **small)
    means = write_cueing(
        run_cueing(
            trained.network,
            trained.detectors,
            load_fashion_mnist("test", args.data_dir),
            cueing,
        ),
        out / "cueing",
    )
    print("\nspatial cueing on arrays (means across categories):")
    print(means.round(3).to_string(index=False))


def cmd_record(args: argparse.Namespace) -> int:
    """Record feature-map activity with and without feature attention (default network)."""
    from bioattn.attention.values import load_values
    from bioattn.data.fashion_mnist import load_fashion_mnist
    from bioattn.experiments.recording import RecordingConfig, record
    from bioattn.models.train import load_default

    config = RecordingConfig(
        categories=args.categories,
        attend_layers=args.attend_layers,
        all_layers=args.all_layers,
        betas=args.betas,
        methods=args.methods,
        image_type=args.image_type,
        record_layers=args.record_layers,
        full_maps=args.full_maps,
        n_pos=args.n_pos,
        n_neg=args.n_neg,
        n_reference=args.n_reference,
        seed=args.record_seed,
        snr=args.snr,
    )
    trained = load_default(_train_settings(args), args.data_dir)
    values = load_values(args.values, trained.network)
    test = load_fashion_mnist("test", args.data_dir)
    path = record(trained.network, values, test, args.out, config, detectors=trained.detectors)
    print(f"recording written to {path}")
    return 0


def cmd_mechanisms(args: argparse.Namespace) -> int:
    """Train RAM, soft spatial attention, dasNet feedback and optimal gains; compare with FSGM."""
    from dataclasses import replace

    from bioattn.mechanisms.compare import CompareConfig, run_comparison
    from bioattn.mechanisms.training import Budget

    started = time.perf_counter()
    config = CompareConfig.quick() if args.quick else CompareConfig()
    changes: dict[str, object] = {}
    if args.image_types:
        changes["image_types"] = args.image_types
    if args.categories:
        changes["categories"] = args.categories
    if args.soft_layer:
        changes["soft_layer"] = args.soft_layer
    for name in ("ram", "soft", "dasnet", "optimal", "clutter"):
        steps = getattr(args, f"{name}_steps")
        if steps is not None:
            budget = getattr(config, f"{name}_budget") or Budget(1)
            skip = steps == 0 and name == "clutter"
            changes[f"{name}_budget"] = None if skip else replace(budget, steps=steps)
    result = run_comparison(args.out_dir, replace(config, **changes), args.data_dir)
    columns = ["image_type", "mechanism", "tp", "tn", "performance", "dprime", "criterion"]
    print(result.summary[[*columns, "train_seconds"]].round(3).to_string(index=False))
    if result.clutter:
        print(
            f"RAM on cluttered images: test accuracy {result.clutter['test_accuracy']:.3f} "
            f"(chance {result.clutter['chance']:.2f})"
        )
    print(f"results in {args.out_dir}; took {time.perf_counter() - started:.0f} s")
    return 0


def cmd_analyze_neural(args: argparse.Namespace) -> int:
    """Neural analyses of a recording: CSV tables and figures."""
    from bioattn.analysis.neural import analyze_recording
    from bioattn.experiments.recording import open_recording

    with open_recording(args.recording) as recording:
        report = analyze_recording(
            recording,
            args.out,
            analyses=args.analyses,
            category=args.category,
            min_relative_activity=args.min_activity,
        )
    for name, reason in report.skipped.items():
        print(f"skipped {name}: {reason}")
    if "fsgm_summary" in report.tables:
        table = report.tables["fsgm_summary"]
        table = table[table["relation"] != "upstream"]
        columns = ["attended_layer", "method", "beta", "recorded_layer", "median_slope"]
        print("FSGM test (median slope per rank, median intercept − 1):")
        print(table[[*columns, "median_intercept_minus_1"]].to_string(index=False))
    print(f"{len(report.files)} files written to {args.out}")
    return 0


def _ssn_params(args: argparse.Namespace) -> SSNParams:
    """SSN parameters from ``--param NAME=VALUE`` options (the rest at their defaults); also
    applies ``--threads``."""
    from dataclasses import fields

    from bioattn.ssn import SSNParams

    names = [f.name for f in fields(SSNParams)]
    overrides: dict[str, float | int] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in names:
            raise ConfigError(
                f"--param {item!r}: expected NAME=VALUE with NAME one of {', '.join(names)}"
            )
        try:
            overrides[name] = int(value) if name == "check_every" else float(value)
        except ValueError as error:
            raise ConfigError(f"--param {item!r}: {value!r} is not a number") from error
    params = SSNParams(**overrides)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    return params


def _add_ssn_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an SSN parameter (bioattn.ssn.SSNParams), e.g. --param j_ee=1.1 --param dt=1; "
        "repeatable; unstable settings are refused with the reason",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the image subsets (0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice); use 1 when the cores are busy with other "
        "work: every Euler step waits for all threads (docs/ssn.md)",
    )
    _add_data_dir(parser)


def _finding_lines(findings: dict[str, dict]) -> list[str]:
    """One line per network: whether findings 1 and 2 replicate (``finding_checks`` output)."""
    lines = []
    for name, checks in findings.items():
        verdicts = {"finding1": checks.get("finding1_replicates")}
        verdicts.update(
            (key, value["replicates"])
            for key, value in checks.items()
            if isinstance(value, dict) and "replicates" in value
        )
        lines.append(f"{name}: " + ", ".join(f"{k} replicates: {v}" for k, v in verdicts.items()))
    return lines


def cmd_ssn_replicate(args: argparse.Namespace) -> int:
    """Findings 1 and 2 on the SSN-CNN (attention as input current) next to the plain network."""
    from bioattn.analysis.sdt import format_summary
    from bioattn.ssn.experiments import (
        DEFAULT_SSN_BETAS,
        DEFAULT_SSN_CATEGORIES,
        run_ssn_replication,
    )

    params = _ssn_params(args)
    categories = args.categories or DEFAULT_SSN_CATEGORIES
    sizes: dict[str, int] = {}
    betas = args.betas or DEFAULT_SSN_BETAS
    if args.quick:
        categories = args.categories or ("Trouser", "Bag")
        betas = args.betas or (0.0, 0.1, 0.4)
        sizes = {
            "n_pos": 20,
            "n_neg": 20,
            "n_detector_per_category": 30,
            "n_tuning_per_category": 30,
            "gradient_set_size": 10,
            "n_check_per_category": 20,
        }
    if args.n_pos is not None:
        sizes["n_pos"] = args.n_pos
    if args.n_neg is not None:
        sizes["n_neg"] = args.n_neg
    started = time.perf_counter()
    result = run_ssn_replication(
        args.out,
        categories=None if categories == ("all",) else categories,
        layers=args.layers or "all",
        ssn_betas=betas,
        methods=args.methods,
        params=params,
        fsgm_on_ssn=args.fsgm_on_ssn,
        data_dir=args.data_dir,
        seed=args.seed,
        **sizes,
    )
    for name, key in (("SSN-CNN, input current", "ssn_summary"), ("plain, FSGM", "plain_summary")):
        print(f"\n{name}: performance increase (pp, mean ± SEM across categories):")
        print(format_summary(result[key]))
    for line in _finding_lines(result["findings"]):
        print(line)
    if result["failures"]:
        print(f"{len(result['failures'])} conditions diverged (see config.json)")
    print(f"\nresults in {args.out}; took {time.perf_counter() - started:.0f} s")
    return 0


def cmd_ssn_signatures(args: argparse.Namespace) -> int:
    """Summation, contrast response with attention and time courses at one SSN layer."""
    from bioattn.ssn.signatures import run_ssn_signatures

    numbers = run_ssn_signatures(
        args.out,
        layer=args.layer,
        category=args.category,
        beta=args.beta,
        params=_ssn_params(args),
        n_images=args.n_images,
        data_dir=args.data_dir,
        seed=args.seed,
    )
    print("summation, median r(A+B) / (r(A) + r(B)) by contrast:")
    for row in numbers["summation"]:
        print(f"  c = {row['contrast']:g}: {row.get('median_ratio', float('nan')):.3f}")
    print(
        f"attention (β = {numbers['beta']:g}, {numbers['category']}): Naka–Rushton r_max × "
        f"{numbers['r_max_ratio_attended_over_unattended']:.3f}, c50 × "
        f"{numbers['c50_ratio_attended_over_unattended']:.3f}; attended/unattended "
        f"{numbers['modulation_ratio_lowest_contrast']:.2f} at the lowest contrast, "
        f"{numbers['modulation_ratio_highest_contrast']:.2f} at the highest"
    )
    print(f"numbers, tables and figure in {args.out}")
    return 0


def cmd_ssn_benchmark(args: argparse.Namespace) -> int:
    """Cost per image of the SSN-CNN against the plain network, and convergence in dt and tol."""
    from bioattn.ssn.convergence import run_ssn_benchmark

    tables = run_ssn_benchmark(
        args.out,
        n_images=args.n_images,
        repeats=args.repeats,
        settings=() if args.no_convergence else None,
        params=_ssn_params(args),
        data_dir=args.data_dir,
        seed=args.seed,
    )
    for name, table in tables.items():
        print(f"\n{name}:\n{table.to_string(index=False)}")
    print(f"\ntables in {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="bioattn",
        description="Biologically inspired attention (feature similarity gain) in CNNs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train (or load) the default Fashion-MNIST network")
    _add_data_dir(p)
    _add_training(p)
    p.add_argument("--retrain", action="store_true", help="ignore the cache and train again")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("layers", help="list a model's attendable layers")
    p.add_argument("model", help="fashion-vgg, vgg16, or package.module:callable")
    p.add_argument("--weights", default=None, help="weights file (.safetensors or .pth)")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("values", help="compute tuning and gradient values")
    _add_data_dir(p)
    _add_training(p)
    p.add_argument("--out", type=Path, default=Path("values.nc"), help="netCDF file to write")
    p.add_argument(
        "--image-types",
        type=_csv,
        default=("merged", "array"),
        help="image types for gradient values (default merged,array)",
    )
    p.set_defaults(func=cmd_values)

    p = sub.add_parser(
        "sweep", help="sweep attention and measure detection performance (sharded, resumable)"
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML experiment config (model, data, values, sweep, run); flags override it",
    )
    _add_data_dir(p)
    p.add_argument("--seed", type=int, default=None, help="model seed (default 0)")
    p.add_argument(
        "--device", default=None, help="cpu (default), cuda, cuda:N or auto (CUDA when present)"
    )
    p.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="precision of the sweep's forward passes (default float32); a reduced one is "
        "checked against float32 on the first category and the differences go to config.json",
    )
    _add_sweep_options(p)
    p.add_argument(
        "--values",
        type=Path,
        default=None,
        help="values file from `bioattn values` (default: computed once into the results folder)",
    )
    p.add_argument("--out", type=Path, default=None, help="results folder (runs/sweep)")
    p.add_argument(
        "--executor",
        choices=("local", "process", "submitit"),
        default=None,
        help="run shards here (local, default), in a process pool, or via submitit (Slurm)",
    )
    p.add_argument("--workers", type=int, default=None, help="parallel jobs (default 2)")
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

    p = sub.add_parser("cueing", help="spatial cueing: valid, neutral and invalid cues")
    _add_data_dir(p)
    _add_training(p)
    _add_psychophysics_options(p)
    p.add_argument(
        "--betas",
        type=_floats,
        default=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
        help="spatial cue strengths (default 0,0.1,0.25,0.5,0.75,1)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/cueing"), help="results folder")
    p.set_defaults(func=cmd_cueing)

    p = sub.add_parser("noise", help="detection in white noise with a feature cue")
    _add_data_dir(p)
    _add_training(p)
    _add_psychophysics_options(p)
    p.add_argument(
        "--snrs",
        type=_floats,
        default=(0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0),
        help="signal-to-noise power ratios (default 0.05 ... 20)",
    )
    p.add_argument("--beta", type=float, default=0.5, help="feature cue strength (0.5)")
    p.add_argument("--out", type=Path, default=Path("runs/noise"), help="results folder")
    p.set_defaults(func=cmd_noise)

    p = sub.add_parser("report", help="write RUN_DIR/report.html: figures, tables, config")
    p.add_argument("run_dir", type=Path, help="results folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("plot", help="draw the figures of a results folder")
    p.add_argument("run_dir", type=Path, help="results folder")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("demo", help="the whole replication on the embedded default")
    _add_data_dir(p)
    _add_training(p)
    _add_sweep_options(p)
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
        "orientation",
        help="orientation detection with feature attention; spatial vs feature attention",
    )
    _add_data_dir(p)
    _add_training(p)
    p.add_argument(
        "--orientations",
        type=_csv,
        default=None,
        help="comma-separated orientations on the grid 0°,20°,...,160° (default all nine)",
    )
    p.add_argument(
        "--betas",
        type=_floats,
        default=(0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0),
        help="feature attention strengths of the layer sweep (default 0,0.1,0.25,0.5,1,2,4)",
    )
    p.add_argument(
        "--spatial-betas",
        type=_floats,
        default=(0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
        help="strengths of the spatial/feature comparison (default 0,0.1,0.2,0.3,0.5,0.75,1)",
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
        "--cycles-per-pixel", type=float, default=0.12, help="grating frequency (default 0.12)"
    )
    p.add_argument("--contrast", type=float, default=1.0, help="grating contrast 0–1 (default 1)")
    p.add_argument("--n-pos", type=int, default=50, help="positives per orientation (50)")
    p.add_argument("--n-neg", type=int, default=50, help="negatives per orientation (50)")
    p.add_argument("--sweep-seed", type=int, default=0, help="seed of the test sets (0)")
    p.add_argument("--out", type=Path, default=Path("runs/orientation"), help="results folder")
    p.set_defaults(func=cmd_orientation)

    p = sub.add_parser(
        "record", help="record feature-map activity with and without feature attention"
    )
    _add_data_dir(p)
    _add_training(p)
    p.add_argument("--values", type=Path, required=True, help="values file from `bioattn values`")
    p.add_argument("--out", type=Path, required=True, help="netCDF file to write")
    p.add_argument(
        "--attend-layers",
        type=_csv,
        default=None,
        help="comma-separated layers to attend, one condition each (default all)",
    )
    p.add_argument(
        "--all-layers", action="store_true", help="also attend every layer at once at β/10"
    )
    p.add_argument(
        "--betas", type=_floats, default=(0.5,), help="attention strengths (default 0.5)"
    )
    p.add_argument(
        "--methods",
        type=_csv,
        default=("tuning",),
        help="comma-separated value types, as for sweeps (default tuning)",
    )
    p.add_argument(
        "--categories",
        "--category",
        type=_csv,
        default=None,
        help="comma-separated attended categories (default all; the FSGM test needs 2 or more)",
    )
    p.add_argument(
        "--image-type",
        default="merged",
        help="task images: merged, array, standard or noise (default merged; array adds "
        "quadrant activity for the spatial analysis)",
    )
    p.add_argument(
        "--record-layers", type=_csv, default=None, help="layers to record (default all)"
    )
    p.add_argument(
        "--full-maps",
        type=_csv,
        default=(),
        help="layers whose full maps are recorded too (large; default none)",
    )
    p.add_argument("--n-pos", type=int, default=75, help="positives per category (75)")
    p.add_argument("--n-neg", type=int, default=75, help="negatives per category (75)")
    p.add_argument(
        "--n-reference",
        type=int,
        default=75,
        help="standard images per category for vector angles (75; 0 for none)",
    )
    p.add_argument("--snr", type=float, default=None, help="SNR for the noise image type")
    p.add_argument("--record-seed", type=int, default=0, help="seed of the stimulus sets (0)")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser(
        "mechanisms",
        help="compare RAM, soft spatial, dasNet and optimal gains with FSGM (resumable)",
    )
    _add_data_dir(p)
    p.add_argument("out_dir", type=Path, help="results folder (checkpoints resume from it)")
    p.add_argument("--quick", action="store_true", help="a few-minute smoke version")
    p.add_argument("--image-types", type=_csv, default=None, help="array,merged (default both)")
    p.add_argument("--categories", type=_csv, default=None, help="categories (default all)")
    p.add_argument("--soft-layer", default=None, help="soft spatial attention layer (last)")
    for name, what in (
        ("ram", "RAM detection"),
        ("soft", "soft spatial attention"),
        ("dasnet", "dasNet feedback"),
        ("optimal", "optimal gains (full-batch steps per layer)"),
        ("clutter", "RAM on cluttered images; 0 skips it"),
    ):
        p.add_argument(f"--{name}-steps", type=int, default=None, help=f"training steps of {what}")
    p.set_defaults(func=cmd_mechanisms)

    p = sub.add_parser("ssn", help="the SSN-CNN: replication, neural signatures, benchmark")
    ssn = p.add_subparsers(dest="ssn_command", required=True, metavar="SSN_COMMAND")
    q = ssn.add_parser(
        "replicate", help="findings 1 and 2 with attention as input current, vs the plain network"
    )
    _add_ssn_common(q)
    q.add_argument(
        "--categories",
        type=_csv,
        default=None,
        help="attended categories ('all' for the ten; default T-shirt/top,Pullover,Coat,Shirt,Bag)",
    )
    q.add_argument("--layers", type=_csv, default=None, help="SSN and attended layers (all)")
    q.add_argument(
        "--betas", type=_floats, default=None, help="β grid of the currents (0,0.03,0.1,0.2,0.4)"
    )
    q.add_argument("--methods", type=_csv, default=("tuning", "gradient"), help="tuning,gradient")
    q.add_argument("--n-pos", type=int, default=None, help="positives per category (50)")
    q.add_argument("--n-neg", type=int, default=None, help="negatives per category (50)")
    q.add_argument(
        "--fsgm-on-ssn", action="store_true", help="also multiplicative FSGM on the SSN-CNN"
    )
    q.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (about 8 min on 2 busy cores): Trouser and Bag, 20 + 20 images, "
        "β 0,0.1,0.4, small value sets",
    )
    q.set_defaults(func=cmd_ssn_replicate)
    q = ssn.add_parser("signatures", help="summation, contrast response, time courses")
    _add_ssn_common(q)
    q.add_argument("--layer", default="conv2_1", help="SSN layer (conv2_1)")
    q.add_argument("--category", default="Trouser", help="attended category (Trouser)")
    q.add_argument("--beta", type=float, default=0.15, help="attention strength (0.15)")
    q.add_argument("--n-images", type=int, default=16, help="test images (16)")
    q.set_defaults(func=cmd_ssn_signatures)
    q = ssn.add_parser(
        "benchmark",
        aliases=["convergence"],
        help="cost per image vs the plain network; convergence in Euler step and tolerance",
    )
    _add_ssn_common(q)
    q.add_argument("--n-images", type=int, default=64, help="merged test images (64)")
    q.add_argument("--repeats", type=int, default=2, help="timings of each network (2)")
    q.add_argument("--no-convergence", action="store_true", help="only the cost tables")
    q.set_defaults(func=cmd_ssn_benchmark)

    p = sub.add_parser("analyze", help="analyse recordings")
    analyze = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    q = analyze.add_parser(
        "neural", help="FSGM test, modulation index, vector angle and spatial globality"
    )
    q.add_argument("recording", type=Path, help="recording from `bioattn record`")
    q.add_argument("--out", type=Path, required=True, help="folder for tables and figures")
    q.add_argument(
        "--analyses",
        type=_csv,
        default=None,
        help="comma-separated subset of fsgm, population, modulation, angle, spatial "
        "(default: all the recording supports)",
    )
    q.add_argument(
        "--category", default=None, help="attended category of the population scatter figure"
    )
    q.add_argument(
        "--min-activity",
        type=float,
        default=1e-3,
        help="maps whose unattended activity is below this fraction of their layer's mean get "
        "no activity ratio (default 0.001)",
    )
    q.set_defaults(func=cmd_analyze_neural)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; errors the user can fix are printed as one message (exit status 2)."""
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = _format_warning
    try:
        return args.func(args)
    except BioattnError as error:
        print(f"bioattn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bioattn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
