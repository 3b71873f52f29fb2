"""Architectures benchmark: the sweep engine on ResNet-18 (a branching graph) vs one full pass per
condition.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/architectures.py``). In one process:

1. generates an image folder (``train/`` and ``test/``, four categories of 64 × 64 RGB PNGs with
   category-dependent patterns) in a temporary directory and loads it at 64 px;
2. builds ``resnet18`` with random weights (seed 0), fits detectors on the readout features of
   the training images and computes tuning and gradient values (merged images, a small gradient
   set);
3. runs the same sweep with :func:`bioattn.run` twice, with the ``naive`` evaluator (one full
   forward pass per condition) and the ``batched`` one (:class:`SweepEngine`: the network before
   the attended site runs once per task set, only the rest runs per condition), alternating,
   best of ``--repeats`` wall times each;
4. checks that the two performance tables agree (numeric columns, max |Δ| ≤ 1e-4) and that the
   engine's logits equal the naive path's (``SweepEngine.condition_logits`` vs
   ``naive_condition_logits`` on one task set, every condition, max |Δ| ≤ 1e-5 × max(1, max
   |logit|): float32 rounding of the channels-last tails; also shown for NCHW tails);
5. times each site alone the same way, and counts multiply-adds per site (the share of the
   network before it, which the engine shares) and what each path executed (from the engine's
   work counters).

Sweep: four sites spread over the network (``layer1.0.relu:0``, ``layer2.0.relu:1``,
``layer3.1.relu:0``, ``layer4.0.relu:1``), tuning and gradient rules, β ∈ {0, 0.5, 1, 2},
merged task sets of 16 + 16 images for two categories. Results go to
``benchmarks/architectures_results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bioattn  # noqa: E402
from bioattn.attention.values import compute_values  # noqa: E402
from bioattn.data.image_folder import load_image_folder  # noqa: E402
from bioattn.data.tasks import task_seed  # noqa: E402
from bioattn.experiments.engine import SweepEngine, naive_condition_logits  # noqa: E402
from bioattn.models.detectors import fit_detectors  # noqa: E402
from run import DISTURBED, CpuMeter, counted_pass, machine_info, peak_rss_gb  # noqa: E402

MODEL = "resnet18"
SIZE = 64
CATEGORIES = ("checks", "hstripes", "rings", "vstripes")
SITES = ("layer1.0.relu:0", "layer2.0.relu:1", "layer3.1.relu:0", "layer4.0.relu:1")
RULES = ("tuning", "gradient")
BETAS = (0.0, 0.5, 1.0, 2.0)
IMAGE_TYPE = "merged"
METRICS = ["tp", "tn", "fp", "performance", "dprime", "criterion"]
#: Largest difference allowed between the two tables' metrics, and between their logits
#: relative to the logits' scale (max(1, max |logit|)): float32 rounding, since the engine's
#: channels-last convolutions sum in another order (with NCHW tails the logits are identical).
TABLE_TOLERANCE = 1e-4
LOGIT_TOLERANCE = 1e-5


# --- data ------------------------------------------------------------------------------------
def write_folder(root: Path, per_category: int, size: int = SIZE, seed: int = 0) -> Path:
    """``root/train`` and ``root/test``: one sub-folder per category of patterned RGB PNGs.

    Each category has its own pattern (checkerboard, horizontal stripes, rings, vertical
    stripes) with a random period and phase per image, a category tint and pixel noise.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    tints = np.array([[1.0, 0.6, 0.6], [0.6, 1.0, 0.6], [0.6, 0.6, 1.0], [1.0, 1.0, 0.5]])
    for split in ("train", "test"):
        for k, name in enumerate(CATEGORIES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_category):
                period = rng.uniform(6.0, 14.0)
                phase = rng.uniform(0.0, 2 * np.pi)
                w = 2 * np.pi / period
                if name == "checks":
                    pattern = np.sin(w * x + phase) * np.sin(w * y + phase)
                elif name == "hstripes":
                    pattern = np.sin(w * y + phase)
                elif name == "vstripes":
                    pattern = np.sin(w * x + phase)
                else:
                    cy, cx = rng.uniform(size / 4, 3 * size / 4, 2)
                    pattern = np.sin(w * np.hypot(x - cx, y - cy) + phase)
                grey = 0.5 + 0.4 * pattern
                image = grey[:, :, None] * tints[k][None, None, :]
                image = image + rng.normal(0.0, 0.08, image.shape)
                pixels = (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


# --- multiply-adds ---------------------------------------------------------------------------
def site_macs(network, layers, image_shape: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    """Multiply-adds per image of the whole network up to the readout, and of each site's head
    (every conv and linear called before the site in one forward pass)."""
    done = [0]
    at_site: dict[str, int] = {}
    at_readout: list[int] = []

    def count(_name: str, macs: int) -> None:
        done[0] += macs

    readout = network.submodule(network.readout)
    handles = [readout.register_forward_pre_hook(lambda *_: at_readout.append(done[0]))]
    removers = []
    for layer in layers:

        def mark(x, alias=layer.alias):
            at_site[alias] = done[0]

        removers.append(network.hook_site(layer, mark))
    counted_pass(network, image_shape, count, handles, removers)
    return at_readout[0], at_site


# --- checks ----------------------------------------------------------------------------------
def compare_tables(naive: pd.DataFrame, batched: pd.DataFrame) -> dict:
    """How far the batched table is from the naive one (same rows, numeric metrics)."""
    keys = [c for c in naive.columns if c not in METRICS]
    same_keys = len(naive) == len(batched) and bool(
        (naive[keys].astype(str).values == batched[keys].astype(str).values).all()
    )
    diff = np.abs(naive[METRICS].to_numpy(float) - batched[METRICS].to_numpy(float))
    return {
        "rows": len(naive),
        "same_conditions": same_keys,
        "rows_differing": int((diff > 1e-12).any(axis=1).sum()),
        "max_abs_metric_difference": float(np.nanmax(diff)) if diff.size else 0.0,
    }


def logit_agreement(network, detectors, grid, source, task) -> dict:
    """Max |engine − naive| target logit over every condition of the grid on one task set, for
    the default engine (channels-last tails) and for one with NCHW tails."""
    conditions = [
        c.modulations(source, task) for setting in grid.settings for c in grid.conditions(setting)
    ]
    with torch.no_grad():
        slow = naive_condition_logits(network, detectors, task, conditions)
        worst = {}
        for name, channels_last in (("", True), ("_nchw", False)):
            engine = SweepEngine(network, detectors, channels_last=channels_last)
            engine.baseline_logits(task)
            fast = engine.condition_logits(task, conditions)
            worst[f"max_abs_logit_difference{name}"] = float((fast - slow).abs().max())
    return {"conditions": len(conditions), **worst, "max_abs_logit": float(slow.abs().max())}


# --- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "architectures_results.json")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each (best kept)")
    parser.add_argument("--per-category", type=int, default=20, help="images per category/split")
    parser.add_argument("--n", type=int, default=16, help="positives (and negatives) per task")
    parser.add_argument("--task-categories", type=int, default=2, help="task sets (first N)")
    parser.add_argument("--gradient-images", type=int, default=8, help="gradient set size")
    args = parser.parse_args(argv)

    machine = machine_info()
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), load {machine['load_average_at_start']}"
    )
    setup = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        root = write_folder(Path(folder), args.per_category)
        train = load_image_folder(root / "train", size=SIZE, resize=SIZE)
        test = load_image_folder(root / "test", size=SIZE, resize=SIZE)
    network = bioattn.build_network(MODEL, seed=0)
    detectors = fit_detectors(
        network.readout_features(train.images), train.labels, train.categories
    )
    values = compute_values(
        network,
        detectors,
        train,
        (IMAGE_TYPE,),
        gradient_set_size=args.gradient_images,
        progress=False,
    )
    source = bioattn.ValueSource(values)
    grid = bioattn.Grid.of(bioattn.layer_settings(network, SITES, False), RULES, BETAS)
    categories = list(test.categories[: args.task_categories])
    tasks = {
        (IMAGE_TYPE, category): bioattn.make_task_set(
            test, category, IMAGE_TYPE, args.n, args.n, seed=task_seed(0, k)
        )
        for k, category in enumerate(categories)
    }
    setup_s = time.perf_counter() - setup
    print(f"setup (folder, model, detectors, values): {setup_s:.1f} s")
    print(
        f"sweep: {MODEL} at {SIZE} px, {len(tasks)} {IMAGE_TYPE} task sets of {2 * args.n} "
        f"images x {len(SITES)} sites x {len(RULES)} rules x {len(BETAS)} betas "
        f"({len(grid)} conditions per task set)"
    )

    def sweep(kind: str, part=grid) -> tuple[pd.DataFrame, float, SweepEngine | None]:
        start = time.perf_counter()
        evaluator = bioattn.make_evaluator(network, detectors, kind)
        sink = bioattn.PerformanceSink("detection")
        bioattn.run(tasks, part, evaluator, sink, source, progress=False)
        return sink.table(), time.perf_counter() - start, evaluator.engine

    tables: dict[str, pd.DataFrame] = {}
    times: dict[str, list[float]] = {"naive": [], "batched": []}
    engine = None
    # (the engine warns about a fallback once per model class and process: record from the start)
    with warnings.catch_warnings(record=True) as caught, CpuMeter() as meter:
        warnings.simplefilter("always")
        # Warm up both paths (kernel selection, allocator, the fx split) once, untimed.
        sweep("naive")
        sweep("batched")
        for _ in range(args.repeats):  # alternating, so both see the same machine load
            for kind in ("naive", "batched"):
                tables[kind], seconds, used = sweep(kind)
                times[kind].append(round(seconds, 2))
                engine = used or engine
        # Each site alone (its own grid, baseline included), to see how the ratio follows the
        # share of the network before the site.
        per_site: dict[str, dict[str, list[float]]] = {}
        site_work = {}
        for part in grid.split():
            site = per_site.setdefault(part.settings[0].name, {"naive": [], "batched": []})
            for _ in range(args.repeats):
                for kind in ("naive", "batched"):
                    _table, seconds, used = sweep(kind, part)
                    site[kind].append(round(seconds, 3))
                    if used is not None:
                        site_work[part.settings[0].name] = used.work
    fallbacks = [str(w.message) for w in caught if "sweep engine" in str(w.message)]
    assert engine is not None

    # Multiply-adds: the naive path runs the whole network per condition and per baseline; the
    # engine, per its work counters, full passes, heads and condition rows through the tails.
    shape = tuple(test.images.shape[1:])
    total, heads = site_macs(network, [s.layers[0] for s in grid.settings], shape)
    n = 2 * args.n

    def executed_gmac(counters) -> float:
        macs = 0
        for (kind, alias, _shape), count in counters.items():
            if kind == "full":
                macs += count * total
            elif kind == "head":
                macs += count * heads[alias]
            else:
                macs += count * (total - heads[alias])
        return macs / 1e9

    def naive_gmac(conditions: int) -> float:
        return len(tasks) * n * (1 + conditions) * total / 1e9

    executed = executed_gmac(engine.work)
    work = {f"{kind} {alias}".strip(): count for (kind, alias, _s), count in engine.work.items()}

    results: dict = {
        "command": " ".join(
            [".venv/bin/python benchmarks/architectures.py", *(argv or sys.argv[1:])]
        ),
        "machine": machine,
        "sweep": {
            "model": MODEL,
            "weights": "random (seed 0)",
            "image_size": SIZE,
            "categories_in_folder": list(test.categories),
            "images_per_category_and_split": args.per_category,
            "task_categories": categories,
            "image_type": IMAGE_TYPE,
            "images_per_task": n,
            "sites": list(SITES),
            "rules": list(RULES),
            "betas": list(BETAS),
            "conditions_per_task": len(grid),
            "gradient_images": args.gradient_images,
        },
        "setup_seconds": round(setup_s, 1),
        "other_cpu_share_while_timing": round(meter.other, 3),
    }
    for kind, measured in times.items():
        results[f"{kind}_seconds_all"] = measured
        results[f"{kind}_seconds"] = min(measured)
    tables_check = compare_tables(tables["naive"], tables["batched"])
    first = next(iter(tasks.values()))
    logits_check = logit_agreement(network, detectors, grid, source, first)
    results.update(
        rows=tables_check["rows"],
        speedup_naive_over_batched=round(results["naive_seconds"] / results["batched_seconds"], 2),
        tables=tables_check,
        logits=logits_check,
        head_share_of_macs={alias: round(heads[alias] / total, 3) for alias in SITES},
        per_site={
            name: {
                "naive_seconds": min(t["naive"]),
                "batched_seconds": min(t["batched"]),
                "speedup": round(min(t["naive"]) / min(t["batched"]), 2),
                "head_share_of_macs": round(heads[name] / total, 3),
                "gmac_naive_over_batched": round(
                    naive_gmac(len(grid) // len(SITES)) / executed_gmac(site_work[name]), 2
                ),
            }
            for name, t in per_site.items()
        },
        gmac_per_image=round(total / 1e9, 4),
        gmac={
            "naive": round(naive_gmac(len(grid)), 2),
            "batched": round(executed, 2),
            "naive_over_batched": round(naive_gmac(len(grid)) / executed, 2),
        },
        engine_work=work,
        engine_fallback_warnings=fallbacks,
        peak_rss_gb=round(peak_rss_gb(), 2),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    for key in ("rows", "naive_seconds", "batched_seconds", "speedup_naive_over_batched"):
        print(f"{key}: {results[key]}")
    print(f"all runs: naive {times['naive']} s, batched {times['batched']} s")
    print(
        f"multiply-adds: naive {results['gmac']['naive']} GMAC, batched "
        f"{results['gmac']['batched']} GMAC; share of the network before each site: "
        + ", ".join(f"{a} {s:.0%}" for a, s in results["head_share_of_macs"].items())
    )
    for name, row in results["per_site"].items():
        print(
            f"  {name} alone: naive {row['naive_seconds']:.2f} s, batched "
            f"{row['batched_seconds']:.2f} s, {row['speedup']:.2f}x "
            f"({row['head_share_of_macs']:.0%} of the multiply-adds before it; multiply-adds "
            f"naive / batched {row['gmac_naive_over_batched']:.2f})"
        )
    print(
        f"max |metric difference| {tables_check['max_abs_metric_difference']:.2e} "
        f"({tables_check['rows_differing']} of {tables_check['rows']} rows differ); "
        f"max |logit difference| {logits_check['max_abs_logit_difference']:.2e} "
        f"({logits_check['max_abs_logit_difference_nchw']:.2e} with NCHW tails; max |logit| "
        f"{logits_check['max_abs_logit']:.1f}); results in {args.out}"
    )
    if meter.other > DISTURBED:
        print(
            f"warning: other processes used {100 * meter.other:.0f} % of the CPU while timing; "
            "the best-of runs may be disturbed (run again on a quiet machine)"
        )
    failed = []
    if fallbacks:
        failed.append(f"the engine fell back to the naive path: {fallbacks}")
    baseline_images = len(tasks) * n
    if any(
        counters["full", "", shape] != baseline_images
        for counters in [engine.work, *site_work.values()]
    ):
        failed.append("the engine ran full passes besides the baselines (a naive fallback)")
    if not tables_check["same_conditions"]:
        failed.append("the two tables do not list the same conditions")
    if tables_check["max_abs_metric_difference"] > TABLE_TOLERANCE:
        failed.append(f"tables differ by more than {TABLE_TOLERANCE}")
    scale = max(1.0, logits_check["max_abs_logit"])
    if logits_check["max_abs_logit_difference"] > LOGIT_TOLERANCE * scale:
        failed.append(f"logits differ by more than {LOGIT_TOLERANCE} x {scale:.1f}")
    for reason in failed:
        print(f"FAILED: {reason}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
