"""The Lindsay & Miller (2018) object-category experiment end to end, and its results folder.

A results folder (one per run) holds:

* ``config.json``: the run's full configuration (sweep, training settings, versions);
* ``values.nc``: tuning and gradient values (netCDF);
* ``performance.parquet``: the long-form performance table, one row per condition;
* ``gains.csv``: best β and performance increase per (image type, category, layer, method);
* ``summary.csv``: mean ± SEM of the increase across categories per layer and method;
* ``figures/``: PNG and SVG figures.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from bioattn.attention.values import compute_values, save_values
from bioattn.data.fashion_mnist import load_fashion_mnist
from bioattn.experiments.runfolder import plot_run, write_run_config, write_tables
from bioattn.experiments.sweep import SweepConfig, run_sweep
from bioattn.models.train import TrainSettings, load_default


def run_replication(
    out_dir: str | Path,
    config: SweepConfig = SweepConfig(),
    settings: TrainSettings = TrainSettings(),
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Train or load the default network, compute values, sweep, write tables and figures.

    Returns a dict with the summary table, the paths written and timings.
    """
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    trained = load_default(settings, data_dir, progress=progress)
    timings["model"] = time.perf_counter() - started

    train = load_fashion_mnist("train", data_dir)
    test = load_fashion_mnist("test", data_dir)
    step = time.perf_counter()
    values = compute_values(
        trained.network,
        trained.detectors,
        train,
        config.image_types,
        seed=config.seed,
        progress=progress,
    )
    save_values(values, out_dir / "values.nc")
    timings["values"] = time.perf_counter() - step

    step = time.perf_counter()
    table = run_sweep(trained.network, trained.detectors, values, test, config, progress)
    timings["sweep"] = time.perf_counter() - step
    gains, summary = write_tables(table, out_dir)
    figures = plot_run(out_dir)
    timings["total"] = time.perf_counter() - started
    write_run_config(
        out_dir,
        "replication",
        {"sweep": config.to_dict(), "training": asdict(settings)},
        model={
            "name": trained.network.name,
            "metrics": trained.metrics,
            "cache": str(trained.path),
        },
        timings=timings,
    )
    return {
        "summary": summary,
        "gains": gains,
        "figures": figures,
        "timings": timings,
        "metrics": trained.metrics,
    }
