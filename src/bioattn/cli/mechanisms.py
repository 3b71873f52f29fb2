"""``bioattn mechanisms``: RAM, soft spatial attention, dasNet and optimal gains vs FSGM."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bioattn.cli.common import (
    add_epochs,
    add_model_options,
    csv,
    experiment_config,
    given,
    prepared,
    print_table,
)

#: ``--NAME-steps`` flags: the budget each one sets.
BUDGETS = (
    ("ram", "RAM detection"),
    ("soft", "soft spatial attention"),
    ("dasnet", "dasNet feedback (backprop)"),
    ("dasnet_snes", "dasNet feedback trained by SNES (generations)"),
    ("optimal", "optimal gains (full-batch steps per layer)"),
    ("clutter", "RAM on cluttered images; 0 skips it"),
)


def cmd_mechanisms(args: argparse.Namespace) -> int:
    """Train RAM, soft spatial attention, dasNet feedback (backprop and SNES) and optimal gains;
    compare with FSGM (tuning, gradient and spatial).

    The network, detectors and values come from ``prepare`` (values kept in ``OUT_DIR``).
    """
    from dataclasses import replace

    from bioattn.mechanisms.compare import CompareConfig, compare_mechanisms
    from bioattn.mechanisms.training import Budget

    started = time.perf_counter()
    compare = CompareConfig.quick() if args.quick else CompareConfig()
    changes: dict[str, object] = given(
        image_types=args.image_types, categories=args.categories, soft_layer=args.soft_layer
    )
    for name, _what in BUDGETS:
        steps = getattr(args, f"{name}_steps")
        if steps is not None:
            budget = getattr(compare, f"{name}_budget") or Budget(1)
            skip = steps == 0 and name == "clutter"
            changes[f"{name}_budget"] = None if skip else replace(budget, steps=steps)
    compare = replace(compare, **changes)
    experiment = prepared(
        args,
        experiment_config(args),
        values=True,
        image_types=compare.image_types,
        run_dir=args.out_dir,
    )
    extra = {
        "model": experiment.model_info,
        "model_and_values_seconds": round(time.perf_counter() - started, 1),
    }
    result = compare_mechanisms(
        experiment.network,
        experiment.detectors,
        experiment.values,
        experiment.train_images,
        experiment.test_images,
        compare,
        args.out_dir,
        extra=extra,
    )
    columns = ["image_type", "mechanism", "tp", "tn", "performance", "dprime", "criterion"]
    print_table(result.summary, [*columns, "train_seconds"])
    if result.clutter:
        print(
            f"RAM on cluttered images: test accuracy {result.clutter['test_accuracy']:.3f} "
            f"(chance {result.clutter['chance']:.2f})"
        )
    print(f"results in {args.out_dir}; took {time.perf_counter() - started:.0f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mechanisms``."""
    from bioattn.mechanisms.compare import COMPARE_IMAGE_TYPES

    p = sub.add_parser(
        "mechanisms",
        help="compare RAM, soft spatial, dasNet and optimal gains with FSGM (resumable)",
    )
    add_model_options(p)
    add_epochs(p)
    p.add_argument("out_dir", type=Path, help="results folder (checkpoints resume from it)")
    p.add_argument("--quick", action="store_true", help="a few-minute smoke version")
    p.add_argument(
        "--image-types",
        type=csv,
        default=None,
        help=f"{','.join(COMPARE_IMAGE_TYPES)} (default both)",
    )
    p.add_argument("--categories", type=csv, default=None, help="categories (default all)")
    p.add_argument("--soft-layer", default=None, help="soft spatial attention layer (last)")
    for name, what in BUDGETS:
        flag = name.replace("_", "-")
        p.add_argument(
            f"--{flag}-steps",
            dest=f"{name}_steps",
            type=int,
            default=None,
            help=f"training steps of {what}",
        )
    p.set_defaults(func=cmd_mechanisms)
