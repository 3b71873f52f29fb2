"""Recording benchmark: `bioattn record` through the sweep engine vs one full pass per condition.

Records the same default set twice in one process, side by side — with the naive evaluator (one
full forward pass per condition, what recordings did before the redesign) and with the batched
engine (prefix sharing: the network before the attended layer runs once per task set) — checks
that the two files agree, and writes the best of ``--repeats`` wall times and their ratio to
``benchmarks/recording_results.json``.

Default set: the trained default network, merged images, all 10 categories, every layer and
all-layers mode attended, tuning values, β ∈ {0.5, 1}, every layer recorded, 75 + 75 task images
and 75 reference images per category (otherwise ``bioattn record``'s defaults).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bioattn.data.fashion_mnist import load_fashion_mnist  # noqa: E402
from bioattn.experiments.recording import RecordingConfig, load_recording, record  # noqa: E402
from bioattn.models.train import load_default  # noqa: E402
from run import benchmark_values, machine_info, peak_rss_gb  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", default="all", help="'all' or comma-separated names")
    parser.add_argument("--out", type=Path, default=HERE / "recording_results.json")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each (best kept)")
    args = parser.parse_args(argv)
    trained = load_default(progress=False)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    values = benchmark_values(trained, train, ("merged", "array"))
    categories = None if args.categories == "all" else tuple(args.categories.split(","))
    config = RecordingConfig(categories=categories, all_layers=True, betas=(0.5, 1.0))
    results: dict = {"machine": machine_info(), "config": config.to_dict()}
    with tempfile.TemporaryDirectory() as folder:
        paths: dict[str, Path] = {}
        times: dict[str, list[float]] = {"naive": [], "batched": []}
        for _ in range(args.repeats):  # alternating, so both see the same machine load
            for engine in ("naive", "batched"):
                start = time.perf_counter()
                paths[engine] = record(
                    trained.network,
                    values,
                    test,
                    Path(folder) / f"{engine}.nc",
                    config,
                    detectors=trained.detectors,
                    progress=False,
                    engine=engine,
                )
                times[engine].append(round(time.perf_counter() - start, 2))
        for engine, measured in times.items():
            results[f"{engine}_seconds_all"] = measured
            results[f"{engine}_seconds"] = min(measured)
        naive, batched = load_recording(paths["naive"]), load_recording(paths["batched"])
        rows = int(naive.sizes["stimulus"])
        difference = np.abs(naive["activity"].values - batched["activity"].values)
        scale = float(np.abs(naive["activity"].values).max())
        logit_diff = np.abs(naive["target_logit"].values - batched["target_logit"].values)
    results.update(
        rows=rows,
        speedup_naive_over_batched=round(results["naive_seconds"] / results["batched_seconds"], 2),
        max_abs_activity_difference=float(difference.max()),
        max_abs_activity=scale,
        max_abs_logit_difference=float(np.nanmax(logit_diff)),
        peak_rss_gb=round(peak_rss_gb(), 2),
    )
    args.out.write_text(json.dumps(results, indent=2))
    for key in ("rows", "naive_seconds", "batched_seconds", "speedup_naive_over_batched"):
        print(f"{key}: {results[key]}")
    print(
        f"max |activity difference| {results['max_abs_activity_difference']:.2e} "
        f"(max |activity| {scale:.1f}); results in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
