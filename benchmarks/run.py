"""Sweep engine benchmark: the batched engine against one full forward pass per condition.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/run.py``). In one process, on the
trained default network (cached; trained first if missing) and real Fashion-MNIST test images:

1. measures this machine's dense float32 matmul rate (``torch.mm``, best of several), the
   practical ceiling for the convolutions;
2. runs the same sweep with (a) :class:`bioattn.experiments.engine.SweepEngine` and (b) the
   naive path (``run_sweep(..., engine="naive")``), alternating category by category so that
   any other load on the machine falls on both alike, and checks that the tables agree;
3. counts multiply-adds: the FLOP floor (every condition's remaining layers once, plus one
   forward pass per image set for the β = 0 baseline), what the naive path executes and what
   the engine executes;
4. reports wall times and their ratio, the engine's achieved GFLOP/s against the matmul rate,
   the FLOP-floor time, and peak resident memory;
5. profiles the engine on one category (``torch.profiler``) and groups the time by kind of work.

The default sweep subset is the first three categories (T-shirt/top, Trouser, Pullover) with
everything else as in the default sweep: all six layers and all-layers mode, the default β grid,
tuning and gradient values, merged and array images (``--categories all``: the whole default
sweep). Results go to ``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn

from bioattn.attention.rules import ValueSource, parse_rule
from bioattn.attention.values import compute_values, load_values, save_values
from bioattn.cache import cache_dir
from bioattn.data.fashion_mnist import load_fashion_mnist
from bioattn.data.tasks import make_task_set
from bioattn.experiments.engine import SweepEngine, naive_condition_logits
from bioattn.experiments.sweep import (
    ALL_LAYERS,
    SweepConfig,
    run_sweep,
)
from bioattn.models.network import Network
from bioattn.models.train import load_default

HERE = Path(__file__).resolve().parent
METRICS = ["tp", "tn", "fp", "performance", "dprime", "criterion"]
TARGETS = {"speedup": 2.5, "floor_multiple": 2.0, "peak_rss_gb": 3.0}


# --- machine ---------------------------------------------------------------------------------
def machine_info() -> dict:
    """CPU model, cores, torch version and threads, load average."""
    model = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def matmul_gflops(size: int = 2048, repeats: int = 7) -> float:
    """Dense float32 matmul rate (GFLOP/s), best of ``repeats``."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def benchmark_values(trained, train, image_types) -> xr.Dataset:
    """Tuning and gradient values of the default network, cached next to the trained model."""
    path = cache_dir() / "benchmark" / f"values-{trained.path.name}.nc"
    if path.exists():
        return load_values(path, trained.network)
    values = compute_values(trained.network, trained.detectors, train, image_types, progress=False)
    save_values(values, path)
    return values


#: Share of the machine's CPU time used by other processes above which a measurement counts as
#: disturbed (and is repeated, up to --attempts times).
DISTURBED = 0.05


class CpuMeter:
    """Share of all cores' time that *other* processes used during a ``with`` block (Linux)."""

    def __init__(self) -> None:
        self.other = 0.0

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        times = os.times()
        return times.user + times.system

    def __enter__(self) -> CpuMeter:
        self._start = (self._busy(), self._own(), time.perf_counter())
        return self

    def __exit__(self, *_exc: object) -> None:
        busy0, own0, wall0 = self._start
        busy1, own1, wall1 = self._busy(), self._own(), time.perf_counter()
        if busy0 is None or busy1 is None:
            return
        capacity = (wall1 - wall0) * (os.cpu_count() or 1)
        self.other = max(0.0, (busy1 - busy0) - (own1 - own0)) / capacity


# --- multiply-adds ---------------------------------------------------------------------------
def call_macs(module: nn.Conv2d | nn.Linear, output: torch.Tensor) -> int:
    """Multiply-adds of one call of a conv or linear layer, per image, from its output."""
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * int(np.prod(module.kernel_size))
    else:
        per_output = module.in_features
    return output[0].numel() * per_output


def counted_pass(
    network: Network,
    image_shape: tuple[int, ...],
    on_call: Callable[[str, int], None],
    handles: Sequence[Any] = (),
    removers: Sequence[Callable[[], None]] = (),
) -> None:
    """One zero-image forward pass calling ``on_call(module path, multiply-adds per image)``
    after every conv and linear call; every hook (also ``handles`` and ``removers``, which the
    caller registered for the pass) is removed afterwards."""
    handles = list(handles)
    for name, module in network.module.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):

            def hook(mod, _inputs, output, name=name):
                on_call(name, call_macs(mod, output))

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            network(network.preprocess(torch.zeros(1, *image_shape)))
    finally:
        for handle in handles:
            handle.remove()
        for remove in removers:
            remove()


def module_macs(network: Network, image_shape: tuple[int, ...]) -> list[tuple[str, int]]:
    """(module path, multiply-adds per image) of every conv and linear, in call order.

    The readout module and anything called after it are left out: detectors read its input.
    """
    calls: list[tuple[str, int]] = []
    counted_pass(network, image_shape, lambda name, macs: calls.append((name, macs)))
    names = [name for name, _ in calls]
    if network.readout in names:
        calls = calls[: names.index(network.readout)]
    return calls


def layer_costs(network: Network, image_shape: tuple[int, ...]) -> dict[str, dict[str, int]]:
    """Per attended layer: multiply-adds per image up to it (head) and after it (tail)."""
    calls = module_macs(network, image_shape)
    names = [name for name, _ in calls]
    total = sum(macs for _, macs in calls)
    costs = {}
    for layer in network.layers:
        position = names.index(layer.name) + 1  # modules after the attended conv
        head = sum(macs for _, macs in calls[:position])
        costs[layer.alias] = {"head": head, "tail": total - head}
    costs["total"] = {"head": 0, "tail": total}
    return costs


def count_work(
    network: Network, engine: SweepEngine, config: SweepConfig, n_categories: int
) -> dict[str, float]:
    """Multiply-adds of the sweep in GMAC: the floor, the naive path and what the engine did.

    The floor is every condition's remaining layers once plus one forward pass per image set
    (the β = 0 baseline). The engine's figure comes from its work counters (images through
    full passes and heads, condition × image rows through tails), so ``engine`` must be the
    engine that ran the sweep, with nothing else run on it.
    """
    layers = network.resolve_layers(config.layers)
    settings = [[layer] for layer in layers]
    if config.all_layers:
        settings.append(list(network.layers))
    conditions = len([b for b in config.betas if b != 0.0]) * len(config.methods)
    n = config.n_pos + config.n_neg
    floor = naive = 0.0
    costs = {}
    for image_type in config.image_types:
        side = 56 if image_type == "array" else 28
        shape = (1, side, side)
        costs[shape] = cost = layer_costs(network, shape)
        full = cost["total"]["tail"]
        naive += n * full * (1 + conditions * len(settings))
        floor += n * full
        for attended in settings:
            first_layer = min(attended, key=lambda la: la.number)
            floor += conditions * n * cost[first_layer.alias]["tail"]
    executed = 0.0
    for (kind, alias, shape), count in engine.work.items():
        cost = costs[shape]
        if kind == "full":
            executed += count * cost["total"]["tail"]
        else:
            executed += count * cost[alias][kind]
    return {
        "floor": floor * n_categories / 1e9,
        "naive": naive * n_categories / 1e9,
        "engine": executed / 1e9,
    }


# --- checks ----------------------------------------------------------------------------------
def compare_tables(fast, slow) -> dict[str, float]:
    """How far the engine's table is from the naive one."""
    keys = [c for c in fast.columns if c not in METRICS]
    same_keys = bool((fast[keys].astype(str).values == slow[keys].astype(str).values).all())
    diff = np.abs(fast[METRICS].to_numpy(float) - slow[METRICS].to_numpy(float))
    return {
        "rows": len(fast),
        "same_conditions": same_keys,
        "rows_differing": int((diff > 1e-12).any(axis=1).sum()),
        "max_abs_metric_difference": float(diff.max()),
    }


def logit_agreement(network, detectors, values, test, config, engine) -> dict[str, float]:
    """Max |engine − naive| logit on one category, every layer setting, both image types."""
    source = ValueSource(values, config.shuffle_seed)
    category = detectors.categories[0]
    worst = scale = 0.0
    for image_type in config.image_types:
        task = make_task_set(test, category, image_type, config.n_pos, config.n_neg, seed=0)
        settings = [[la] for la in network.layers] + [list(network.layers)]
        for attended in settings:
            factor = 0.1 if len(attended) > 1 else 1.0
            conditions = [
                {
                    la: parse_rule(m).modulation(source, image_type, category, la, b * factor)
                    for la in attended
                }
                for m in config.methods
                for b in config.betas
                if b != 0.0
            ]
            fast = engine.condition_logits(task, conditions)
            slow = naive_condition_logits(network, detectors, task, conditions)
            worst = max(worst, float((fast - slow).abs().max()))
            scale = max(scale, float(slow.abs().max()))
    return {"max_abs_logit_difference": worst, "max_abs_logit": scale}


# --- profile ---------------------------------------------------------------------------------
KINDS = {
    "convolution (tail and head)": ("convolution", "conv2d"),
    "detector readout (mm)": ("aten::mm", "aten::addmm", "aten::matmul"),
    "elementwise (relu, gains, bias)": ("clamp", "relu", "mul", "add", "threshold"),
    "pooling": ("pool",),
    "copies and layout changes": ("copy_", "clone", "contiguous", "repeat_interleave"),
}


def profile_engine(network, detectors, values, test, config) -> dict:
    """torch.profiler over the engine on one category: self time per kind of work."""
    from torch.profiler import ProfilerActivity, profile

    subset = SweepConfig(**{**config.to_dict(), "categories": config.categories[:1]})
    engine = SweepEngine(network, detectors)
    run_sweep(network, detectors, values, test, subset, progress=False, engine=engine)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_sweep(network, detectors, values, test, subset, progress=False, engine=engine)
    wall = time.perf_counter() - start
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    kinds = dict.fromkeys([*KINDS, "other"], 0.0)
    top = []
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total):
        seconds = event.self_cpu_time_total / 1e6
        kind = next((k for k, keys in KINDS.items() if any(s in event.key for s in keys)), "other")
        kinds[kind] += seconds
        if len(top) < 12:
            top.append({"op": event.key, "self_s": round(seconds, 3), "calls": event.count})
    return {
        "categories": list(subset.categories),
        "wall_s_under_profiler": round(wall, 2),
        "self_cpu_s": round(total, 2),
        "share_by_kind": {k: round(v / total, 3) for k, v in kinds.items()},
        "top_ops": top,
    }


# --- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--categories",
        default="3",
        help="how many categories (first N) or 'all' for the whole default sweep (default 3)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile")
    parser.add_argument(
        "--attempts",
        type=int,
        default=3,
        help="measure a category again (up to this many times) when other processes used more "
        f"than {100 * DISTURBED:.0f} %% of the CPU meanwhile; the least disturbed run counts",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also time engine variants (own head passes, NCHW layout, other chunk sizes)",
    )
    args = parser.parse_args(argv)

    machine = machine_info()
    if machine["load_average_at_start"][0] > 0.5:
        print(
            "warning: the machine is busy (load average above 0.5); absolute timings will be "
            "low, the side-by-side ratio less so"
        )
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), load {machine['load_average_at_start']}"
    )
    setup = time.perf_counter()
    trained = load_default(progress=False)
    network, detectors = trained.network, trained.detectors
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    categories = list(detectors.categories)
    if args.categories != "all":
        categories = categories[: int(args.categories)]
    config = SweepConfig(categories=tuple(categories))
    values = benchmark_values(trained, train, config.image_types)
    print(f"setup (model, data, values): {time.perf_counter() - setup:.1f} s")
    print(
        f"sweep: {', '.join(categories)} x {len(config.image_types)} image types x "
        f"{len(network.layers)} layers + all x {len(config.betas)} betas x "
        f"{len(config.methods)} methods"
    )

    rate = matmul_gflops()
    print(f"dense matmul: {rate:.1f} GFLOP/s")

    # Warm up both paths (kernel selection, allocator) on a small sweep.
    warm = SweepConfig(categories=tuple(categories[:1]), betas=(0.0, 1.0), n_pos=10, n_neg=10)
    run_sweep(network, detectors, values, test, warm, progress=False)
    run_sweep(network, detectors, values, test, warm, progress=False, engine="naive")

    # Engine and naive alternate category by category, so that any other load on the machine
    # falls on both alike. The first engine run sets the peak memory the engine needs.
    engine = SweepEngine(network, detectors, batch_size=config.batch_size)
    engine_s = naive_s = 0.0
    fast_parts, slow_parts, per_category = [], [], []
    rss_engine = 0.0
    for category in categories:
        part = replace(config, categories=(category,))
        best = None
        for _attempt in range(args.attempts):
            with CpuMeter() as meter:
                start = time.perf_counter()
                fast_part = run_sweep(
                    network, detectors, values, test, part, progress=False, engine=engine
                )
                fast_s = time.perf_counter() - start
                rss_engine = rss_engine or peak_rss_gb()
                start = time.perf_counter()
                slow_part = run_sweep(
                    network, detectors, values, test, part, progress=False, engine="naive"
                )
                slow_s = time.perf_counter() - start
            print(
                f"{category}: engine {fast_s:.1f} s, naive {slow_s:.1f} s "
                f"(other processes used {100 * meter.other:.0f} % of the CPU)"
            )
            if best is None or meter.other < best[0]:
                best = (meter.other, fast_s, slow_s, fast_part, slow_part)
            if meter.other < DISTURBED:
                break
        other, fast_s, slow_s, fast_part, slow_part = best  # type: ignore[misc]
        engine_s, naive_s = engine_s + fast_s, naive_s + slow_s
        fast_parts.append(fast_part)
        slow_parts.append(slow_part)
        per_category.append(
            {
                "category": category,
                "engine_s": round(fast_s, 2),
                "naive_s": round(slow_s, 2),
                "other_cpu_share": round(other, 3),
            }
        )
    fast = pd.concat(fast_parts, ignore_index=True)
    slow = pd.concat(slow_parts, ignore_index=True)
    rss_naive = peak_rss_gb()
    print(
        f"engine {engine_s:.1f} s, naive {naive_s:.1f} s; peak RSS {rss_engine:.2f} GB after "
        f"the first engine run, {rss_naive:.2f} GB in all"
    )
    rate_after = matmul_gflops()
    ceiling = max(rate, rate_after)

    ablation = {}
    if args.ablation:
        for name, options in [
            ("head pass per (image set, layer)", {"keep_activity": False}),
            ("NCHW layout (no channels_last)", {"channels_last": False}),
            ("chunks of 4 MiB", {"chunk_bytes": 4 * 2**20}),
            ("chunks of 96 MiB", {"chunk_bytes": 96 * 2**20}),
        ]:
            variant = SweepEngine(network, detectors, **options)
            with CpuMeter() as meter:
                start = time.perf_counter()
                run_sweep(network, detectors, values, test, config, progress=False, engine=variant)
                seconds = time.perf_counter() - start
            ablation[name] = {
                "engine_s": round(seconds, 2),
                "other_cpu_share": round(meter.other, 3),
            }
            print(f"engine, {name}: {seconds:.1f} s (others: {100 * meter.other:.0f} % CPU)")

    work = count_work(network, engine, config, len(categories))
    floor_s = 2 * work["floor"] / ceiling
    results = {
        "command": "make bench  # .venv/bin/python benchmarks/run.py " + " ".join(argv or []),
        "machine": {**machine, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "sweep": {
            "categories": categories,
            "image_types": list(config.image_types),
            "layers": [la.alias for la in network.layers] + [ALL_LAYERS],
            "betas": list(config.betas),
            "methods": list(config.methods),
            "images_per_set": config.n_pos + config.n_neg,
            "conditions": len(fast),
        },
        "matmul_gflops": round(ceiling, 1),
        "matmul_gflops_before_after": [round(rate, 1), round(rate_after, 1)],
        "per_category": per_category,
        "max_other_cpu_share": max(row["other_cpu_share"] for row in per_category),
        "engine_s": round(engine_s, 2),
        "naive_s": round(naive_s, 2),
        "speedup": round(naive_s / engine_s, 2),
        "gmac": {k: round(v, 1) for k, v in work.items()},
        "flop_floor_s": round(floor_s, 2),
        "engine_over_floor": round(engine_s / floor_s, 2),
        "engine_gflops_useful": round(2 * work["floor"] / engine_s, 1),
        "engine_gflops_executed": round(2 * work["engine"] / engine_s, 1),
        "naive_gflops": round(2 * work["naive"] / naive_s, 1),
        "peak_rss_gb_after_engine": round(rss_engine, 2),
        "peak_rss_gb_after_naive": round(rss_naive, 2),
        "tables": compare_tables(fast, slow),
        "logits": logit_agreement(network, detectors, values, test, config, engine),
        "ablation_engine_s": ablation,
    }
    if not args.no_profile:
        results["profile"] = profile_engine(network, detectors, values, test, config)
    results["targets"] = {
        "speedup >= 2.5": results["speedup"] >= TARGETS["speedup"],
        "engine <= 2 x floor": results["engine_over_floor"] <= TARGETS["floor_multiple"],
        "peak RSS < 3 GB": rss_engine < TARGETS["peak_rss_gb"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_report(results)
    print(f"written: {args.out}")
    return 0


def print_report(r: dict) -> None:
    """The side-by-side table."""
    rows = [
        ("wall time (s)", f"{r['engine_s']:.1f}", f"{r['naive_s']:.1f}"),
        ("speed-up (naive / engine)", f"{r['speedup']:.2f}x", ""),
        (
            "multiply-adds executed (GMAC)",
            f"{r['gmac']['engine']:.0f}",
            f"{r['gmac']['naive']:.0f}",
        ),
        (
            "achieved GFLOP/s (executed)",
            f"{r['engine_gflops_executed']:.0f}",
            f"{r['naive_gflops']:.0f}",
        ),
        ("useful GFLOP/s (floor work / time)", f"{r['engine_gflops_useful']:.0f}", ""),
        ("dense matmul GFLOP/s (ceiling)", f"{r['matmul_gflops']:.0f}", ""),
        (
            "FLOP floor (GMAC / time at matmul rate)",
            f"{r['gmac']['floor']:.0f} / {r['flop_floor_s']:.1f} s",
            "",
        ),
        ("engine time / floor time", f"{r['engine_over_floor']:.2f}", ""),
        (
            "peak RSS (GB)",
            f"{r['peak_rss_gb_after_engine']:.2f}",
            f"{r['peak_rss_gb_after_naive']:.2f}",
        ),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"\n{'':{width}}  {'engine':>16}  {'naive':>10}")
    for label, a, b in rows:
        print(f"{label:{width}}  {a:>16}  {b:>10}")
    t = r["tables"]
    print(
        f"\ntables: {t['rows']} rows, {t['rows_differing']} differ "
        f"(max metric difference {t['max_abs_metric_difference']:.2g}); logits: max |engine − "
        f"naive| {r['logits']['max_abs_logit_difference']:.2g} "
        f"(max |logit| {r['logits']['max_abs_logit']:.1f})"
    )
    print(
        f"other processes used at most {100 * r['max_other_cpu_share']:.0f} % of the CPU during "
        "a timed category"
        + (" (disturbed: rerun on a quiet machine)" if r["max_other_cpu_share"] > DISTURBED else "")
    )
    for name, ok in r["targets"].items():
        print(f"target {name}: {'met' if ok else 'NOT met'}")
    if "profile" in r:
        print("engine profile, share of self CPU time:")
        for kind, share in r["profile"]["share_by_kind"].items():
            print(f"  {kind:34} {100 * share:5.1f} %")


if __name__ == "__main__":
    sys.exit(main())
