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

import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
import xarray as xr

from bioattn import __version__
from bioattn.analysis.figures import (
    plot_dprime_criterion_vs_beta,
    plot_performance_increase,
    plot_rates_vs_beta,
)
from bioattn.analysis.sdt import layer_summary, performance_gains
from bioattn.attention.values import add_gradient_values, save_values, tuning_values
from bioattn.cache import atomic_write_bytes
from bioattn.data.fashion_mnist import load_fashion_mnist
from bioattn.data.imageset import ImageSet
from bioattn.data.tasks import make_task_set
from bioattn.errors import DataError
from bioattn.experiments.sweep import SweepConfig, run_sweep
from bioattn.models.detectors import Detectors
from bioattn.models.network import Network
from bioattn.models.train import TrainSettings, load_default

#: Positives and negatives per category for gradient values (training images, not test ones).
GRADIENT_SET_SIZE = 100


def compute_values(
    network: Network,
    detectors: Detectors,
    train_images: ImageSet,
    image_types: Sequence[str] = ("merged", "array"),
    gradient_set_size: int = GRADIENT_SET_SIZE,
    seed: int = 0,
    progress: bool = True,
    tuning_images: ImageSet | None = None,
) -> xr.Dataset:
    """Tuning values from standard training images and gradient values per image type.

    Gradient values use task sets (``gradient_set_size`` positives and as many negatives per
    category) built from the training split with their own seed, so no test image is used.
    Tuning values use ``tuning_images`` when given (a subset, for slow networks such as the
    SSN-CNN), else ``train_images``.
    """
    tuning_images = train_images if tuning_images is None else tuning_images
    for images in (train_images, tuning_images):
        if images.split != "train":
            raise DataError(f"values must come from training images, got split {images.split!r}")
    values = tuning_values(network, tuning_images)
    for image_type in image_types:
        if image_type == "noise":
            raise DataError("gradient values for noise images are not computed by the replication")
        tasks = {
            category: make_task_set(
                train_images,
                category,
                image_type,
                n_pos=gradient_set_size,
                n_neg=gradient_set_size,
                seed=10_000 + seed * 7919 + k,
            )
            for k, category in enumerate(detectors.categories)
        }
        values = add_gradient_values(
            values, network, detectors, tasks, image_type, progress=progress
        )
    return values


def write_tables(table: pd.DataFrame, out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the performance table, per-category gains and layer summary; return the last two."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".performance.parquet.tmp"
    table.to_parquet(tmp, index=False)
    tmp.replace(out_dir / "performance.parquet")
    gains = performance_gains(table)
    summary = layer_summary(gains)
    gains.to_csv(out_dir / "gains.csv", index=False)
    summary.to_csv(out_dir / "summary.csv", index=False)
    return gains, summary


def plot_run(run_dir: str | Path) -> list[Path]:
    """(Re)draw every figure of a results folder from its performance table."""
    run_dir = Path(run_dir)
    table_path = run_dir / "performance.parquet"
    if not table_path.exists():
        raise DataError(
            f"{run_dir} has no performance.parquet; give a results folder written by "
            "`bioattn sweep` or `bioattn demo`"
        )
    table = pd.read_parquet(table_path)
    summary = layer_summary(performance_gains(table))
    figures = run_dir / "figures"
    paths = plot_performance_increase(summary, figures / "performance_increase")
    paths += plot_rates_vs_beta(table, figures / "tp_fp_vs_beta")
    paths += plot_dprime_criterion_vs_beta(table, figures / "dprime_criterion_vs_beta")
    return paths


def environment_info() -> dict[str, str]:
    """Software versions and machine, recorded with every run."""
    return {
        "bioattn": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": str(torch.get_num_threads()),
    }


def format_summary(summary: pd.DataFrame) -> str:
    """A text table: mean ± SEM performance increase (pp) per layer, by image type and method."""
    cells = summary.assign(
        cell=summary["mean_delta_pp"].map("{:.1f}".format)
        + " ± "
        + summary["sem_delta_pp"].map("{:.1f}".format),
        # all-layers mode (layer_number 0) goes last
        order=summary["layer_number"].where(summary["layer_number"] > 0, 10_000),
    )
    pivot = cells.pivot_table(
        index=["order", "layer"], columns=["image_type", "method"], values="cell", aggfunc="first"
    )
    pivot.index = pivot.index.get_level_values("layer")
    return pivot.to_string()


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
    run_config = {
        "sweep": config.to_dict(),
        "training": asdict(settings),
        "model": trained.network.name,
        "model_metrics": trained.metrics,
        "model_cache": str(trained.path),
        "environment": environment_info(),
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    atomic_write_bytes(out_dir / "config.json", json.dumps(run_config, indent=2).encode())
    return {
        "summary": summary,
        "gains": gains,
        "figures": figures,
        "timings": timings,
        "metrics": trained.metrics,
    }
