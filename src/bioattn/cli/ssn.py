"""``bioattn ssn replicate|signatures|benchmark``: the SSN-CNN of the default network.

The SSN-CNN is built from the trained default network on Fashion-MNIST
(:func:`~bioattn.ssn.experiments.build_default_ssn`), so these commands take the shared model
options only to refuse what they cannot do, with the reason.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bioattn.cli.common import (
    add_model_options,
    csv,
    default_of,
    experiment_config,
    floats,
    given,
    require_default,
)
from bioattn.errors import ConfigError

if TYPE_CHECKING:
    from bioattn.ssn import SSNParams

#: Why the SSN commands run only on the default network.
DEFAULT_ONLY = (
    "the SSN-CNN commands build the SSN-CNN from the trained default network on Fashion-MNIST "
    "and run it on the CPU in float32 (bioattn.ssn.experiments.build_default_ssn)"
)
#: ``ssn replicate --quick``: the smoke run (flags that are given win).
QUICK_REPLICATION: dict[str, Any] = {
    "categories": ("Trouser", "Bag"),
    "ssn_betas": (0.0, 0.1, 0.4),
    "n_pos": 20,
    "n_neg": 20,
    "n_detector_per_category": 30,
    "n_tuning_per_category": 30,
    "gradient_set_size": 10,
    "n_check_per_category": 20,
}


def ssn_params(args: argparse.Namespace) -> SSNParams:
    """SSN parameters from ``--param NAME=VALUE`` options (the rest at their defaults); also
    applies ``--threads``."""
    from dataclasses import fields

    from bioattn.ssn import SSNParams

    kinds = {f.name: f.type for f in fields(SSNParams)}
    names = list(kinds)
    overrides: dict[str, float | int | str] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in names:
            raise ConfigError(
                f"--param {item!r}: expected NAME=VALUE with NAME one of {', '.join(names)}"
            )
        if kinds[name] in ("str", str):
            overrides[name] = value.strip().lower()
            continue
        try:
            overrides[name] = int(value) if kinds[name] in ("int", int) else float(value)
        except ValueError as error:
            raise ConfigError(f"--param {item!r}: {value!r} is not a number") from error
    params = SSNParams(**overrides)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    return params


def ssn_setup(args: argparse.Namespace) -> tuple[SSNParams, dict[str, Any]]:
    """The SSN parameters and the arguments every SSN experiment takes (data folder, seed),
    after refusing model options the SSN-CNN cannot follow."""
    params = ssn_params(args)
    config = experiment_config(args)
    require_default(config, DEFAULT_ONLY)
    return params, given(data_dir=config.data.path or None, seed=args.subset_seed)


def cmd_ssn_replicate(args: argparse.Namespace) -> int:
    """Findings 1 and 2 on the SSN-CNN (attention as input current) next to the plain network."""
    from bioattn.analysis.findings import format_findings
    from bioattn.analysis.sdt import format_summary
    from bioattn.ssn.experiments import run_ssn_replication

    params, common = ssn_setup(args)
    options = given(
        categories=args.categories,
        layers=args.layers,
        ssn_betas=args.betas,
        methods=args.methods,
        n_pos=args.n_pos,
        n_neg=args.n_neg,
    )
    if args.quick:
        options = {**QUICK_REPLICATION, **options}
    if tuple(c.lower() for c in options.get("categories") or ()) == ("all",):
        options["categories"] = None
    started = time.perf_counter()
    result = run_ssn_replication(
        args.out, params=params, fsgm_on_ssn=args.fsgm_on_ssn, **common, **options
    )
    shown = [("SSN-CNN, input current", "ssn"), ("plain, FSGM", "plain")]
    if args.fsgm_on_ssn:
        shown.append(("SSN-CNN, FSGM", "ssn_fsgm"))
    for name, key in shown:
        print(f"\n{name}: performance increase, β chosen on selection images (pp, mean ± SEM")
        print("across categories):")
        print(format_summary(result[f"{key}_summary"]))
        print(f"findings, verdicts computed from this run ({args.out / key / 'findings.csv'}):")
        print(format_findings(result["verdicts"][key]))
    if result["failures"]:
        print(f"{len(result['failures'])} conditions failed to settle (see config.json)")
    print(f"\nresults in {args.out}; took {time.perf_counter() - started:.0f} s")
    return 0


def cmd_ssn_signatures(args: argparse.Namespace) -> int:
    """Summation, contrast response with attention and time courses at one SSN layer."""
    from bioattn.ssn.signatures import run_ssn_signatures

    params, common = ssn_setup(args)
    options = given(
        layer=args.layer, category=args.category, beta=args.beta, n_images=args.n_images
    )
    numbers = run_ssn_signatures(args.out, params=params, **common, **options)
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

    params, common = ssn_setup(args)
    options = given(
        n_images=args.n_images, repeats=args.repeats, settings=() if args.no_convergence else None
    )
    tables = run_ssn_benchmark(args.out, params=params, **common, **options)
    for name, table in tables.items():
        print(f"\n{name}:\n{table.to_string(index=False)}")
    print(f"\ntables in {args.out}")
    return 0


def _add_common(parser: argparse.ArgumentParser, experiment: Any) -> None:
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an SSN parameter (bioattn.ssn.SSNParams), e.g. --param j_ee=1.1 --param dt=1; "
        "repeatable; unstable settings are refused with the reason",
    )
    parser.add_argument(
        "--seed",
        dest="subset_seed",
        type=int,
        default=None,
        help=f"seed of the image subsets ({default_of(experiment, 'seed')})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice); use 1 when the cores are busy with other "
        "work: every Euler step waits for all threads (docs/ssn.md)",
    )
    add_model_options(parser, seed=False, note=f"Only the defaults: {DEFAULT_ONLY}.")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ssn`` with ``replicate``, ``signatures`` and ``benchmark`` (alias ``convergence``)."""
    from bioattn.ssn.convergence import run_ssn_benchmark
    from bioattn.ssn.experiments import run_ssn_replication
    from bioattn.ssn.signatures import run_ssn_signatures

    def replication(name: str) -> str:
        return default_of(run_ssn_replication, name)

    p = sub.add_parser("ssn", help="the SSN-CNN: replication, neural signatures, benchmark")
    ssn = p.add_subparsers(dest="ssn_command", required=True, metavar="SSN_COMMAND")
    q = ssn.add_parser(
        "replicate", help="findings 1 and 2 with attention as input current, vs the plain network"
    )
    _add_common(q, run_ssn_replication)
    q.add_argument(
        "--categories",
        type=csv,
        default=None,
        help=f"attended categories ('all' for every one; default {replication('categories')})",
    )
    q.add_argument(
        "--layers",
        type=csv,
        default=None,
        help=f"SSN and attended layers ({replication('layers')})",
    )
    q.add_argument(
        "--betas",
        type=floats,
        default=None,
        help=f"β grid of the currents ({replication('ssn_betas')})",
    )
    q.add_argument(
        "--methods", type=csv, default=None, help=f"value types ({replication('methods')})"
    )
    q.add_argument(
        "--n-pos", type=int, default=None, help=f"positives per category ({replication('n_pos')})"
    )
    q.add_argument(
        "--n-neg", type=int, default=None, help=f"negatives per category ({replication('n_neg')})"
    )
    q.add_argument(
        "--fsgm-on-ssn", action="store_true", help="also multiplicative FSGM on the SSN-CNN"
    )
    q.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (a few minutes on 2 cores): Trouser and Bag, 20 + 20 images, "
        "β 0,0.1,0.4, small value sets",
    )
    q.set_defaults(func=cmd_ssn_replicate)

    def signature(name: str) -> str:
        return default_of(run_ssn_signatures, name)

    q = ssn.add_parser("signatures", help="summation, contrast response, time courses")
    _add_common(q, run_ssn_signatures)
    q.add_argument("--layer", default=None, help=f"SSN layer ({signature('layer')})")
    q.add_argument("--category", default=None, help=f"attended category ({signature('category')})")
    q.add_argument(
        "--beta", type=float, default=None, help=f"attention strength ({signature('beta')})"
    )
    q.add_argument(
        "--n-images", type=int, default=None, help=f"test images ({signature('n_images')})"
    )
    q.set_defaults(func=cmd_ssn_signatures)

    def benchmark(name: str) -> str:
        return default_of(run_ssn_benchmark, name)

    q = ssn.add_parser(
        "benchmark",
        aliases=["convergence"],
        help="cost per image vs the plain network; convergence in Euler step and tolerance",
    )
    _add_common(q, run_ssn_benchmark)
    q.add_argument(
        "--n-images", type=int, default=None, help=f"merged test images ({benchmark('n_images')})"
    )
    q.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timings of each network ({benchmark('repeats')})",
    )
    q.add_argument("--no-convergence", action="store_true", help="only the cost tables")
    q.set_defaults(func=cmd_ssn_benchmark)
