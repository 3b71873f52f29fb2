"""Classic attention experiments from psychology, run on the model.

* **Spatial cueing** (Posner): 2×2 arrays of Fashion-MNIST objects; a cue directs spatial
  attention (gain ``1 + β`` in the cued quadrant, ``max(0, 1 − β)`` elsewhere, on every map of
  one layer) to a quadrant. *Valid*: positives are cued at the target's quadrant. *Invalid*:
  positives are cued at another quadrant (uniformly among the three). Negatives hold no target;
  in both cued conditions they are cued at the same uniformly drawn quadrant, so cue validity
  only changes what happens on target-present trials. *Neutral*: no cue.
* **Detection in noise** (Lupyan & Ward 2013): an object embedded in white noise at a range of
  signal-to-noise ratios (power ratio var(image)/var(noise)); negatives are other objects in
  noise. A feature cue applies feature similarity gain for the target category (tuning or
  gradient values), or for a wrong category (the next one in the category list), at one layer
  with a fixed β. Psychometric curves: performance and d′ against SNR; the threshold is the SNR
  at which performance crosses 75 % (linear interpolation in log SNR).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from matplotlib.figure import Figure

from bioattn.analysis.figures import mean_and_sem, method_colors, save_figure, sem_lines
from bioattn.attention.rules import SpatialGain, ValueSource, parse_rule
from bioattn.attention.values import add_gradient_values
from bioattn.data.composites import QUADRANTS
from bioattn.data.imageset import ImageSet, resolve_categories
from bioattn.data.tasks import TaskSet, make_task_set
from bioattn.errors import ConfigError, DataError
from bioattn.experiments.evaluate import Evaluator, make_evaluator
from bioattn.experiments.grid import (
    NOISE_GRADIENT_STREAM,
    Arm,
    Condition,
    Grid,
    LayerSetting,
    cue_seed,
    task_seed,
)
from bioattn.experiments.prepare import Experiment
from bioattn.experiments.run import PerformanceSink, run
from bioattn.models.detectors import Detectors
from bioattn.models.network import Network

CUE_TYPES = ("valid", "neutral", "invalid")
NOISE_CUES = ("none", "tuning", "gradient", "wrong-tuning", "wrong-gradient")
PERFORMANCE_THRESHOLD = 0.75


# --- spatial cueing ------------------------------------------------------------------------
def cue_quadrants(task: TaskSet, validity: str, generator: torch.Generator) -> torch.Tensor:
    """Cued quadrant per image (int64 (N,)) for a valid or invalid cue on an array task set."""
    if validity not in ("valid", "invalid"):
        raise ConfigError(f"cue validity must be 'valid' or 'invalid', got {validity!r}")
    n = len(task)
    random_cue = torch.randint(len(QUADRANTS), (n,), generator=generator)
    offset = torch.randint(1, len(QUADRANTS), (n,), generator=generator)
    target_quadrant = task.target_quadrant
    positive = target_quadrant >= 0
    if validity == "valid":
        cued = torch.where(positive, target_quadrant, random_cue)
    else:
        cued = torch.where(positive, (target_quadrant + offset) % len(QUADRANTS), random_cue)
    return cued


@dataclass(frozen=True)
class CueingConfig:
    """Spatial cueing settings; ``layer`` None means the last attendable layer."""

    categories: tuple[str, ...] | None = None
    layer: str | None = None
    betas: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
    n_pos: int = 75
    n_neg: int = 75
    seed: int = 0


def run_cueing(
    network: Network,
    detectors: Detectors,
    test_images: ImageSet,
    config: CueingConfig = CueingConfig(),
    progress: bool = True,
    engine: str | Evaluator = "batched",
) -> pd.DataFrame:
    """Performance, d′ and criterion per cue type and β (performance-table columns).

    Category k's array task set and its cues are seeded by k's index among all categories
    (:func:`~bioattn.experiments.grid.task_seed`), so a run over some categories sees the same
    images and cues as a run over all.
    """
    if test_images.split == "train":
        raise DataError("cueing test sets must not come from training images")
    layer = network.resolve_layer(config.layer or network.layers[-1].alias)
    categories = _categories(config.categories, detectors)
    evaluator = _evaluator(network, detectors, engine)
    tasks = {
        category: make_task_set(
            test_images,
            category,
            "array",
            config.n_pos,
            config.n_neg,
            seed=task_seed(config.seed, test_images.category_index(category)),
        )
        for category in categories
    }
    spatial = SpatialGain()
    arms = tuple(
        Arm(None, cue) if cue == "neutral" else Arm(spatial, cue, cue=cue) for cue in CUE_TYPES
    )
    grid = Grid((LayerSetting.single(layer),), arms, config.betas)

    def conditions_for(category: str, task: TaskSet, setting: LayerSetting) -> list[Condition]:
        k = test_images.category_index(category)
        conditions = []
        for arm in grid.arms:
            quadrants = None
            if arm.rule is not None:
                generator = torch.Generator().manual_seed(cue_seed(config.seed, k))
                quadrants = cue_quadrants(task, arm.cue, generator)
            conditions += [Condition(setting, arm, b, quadrants) for b in grid.nonzero_betas]
        return conditions

    sink = PerformanceSink("cueing")
    run(
        tasks,
        grid,
        evaluator,
        sink,
        ValueSource(xr.Dataset()),
        progress=progress,
        desc="cueing",
        conditions_for=conditions_for,
    )
    return sink.table()


def _evaluator(network: Network, detectors: Detectors, engine: str | Evaluator) -> Evaluator:
    if isinstance(engine, Evaluator):
        return engine
    return make_evaluator(network, detectors, engine)


# --- detection in noise --------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseConfig:
    """Detection-in-noise settings; ``layer`` None means the last layer but one.

    The detectors were fitted on clean images, so noise mostly makes them say "absent"; the
    SNR range reaches 20 so that uncued performance crosses the 75 % threshold.
    """

    categories: tuple[str, ...] | None = None
    snrs: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
    layer: str | None = None
    beta: float = 0.5
    cues: tuple[str, ...] = NOISE_CUES
    gradient_snr: float = 0.2
    n_pos: int = 75
    n_neg: int = 75
    seed: int = 0


def noise_gradient_values(
    values: xr.Dataset,
    network: Network,
    detectors: Detectors,
    train_images: ImageSet,
    snr: float,
    n: int = 100,
    seed: int = 0,
) -> xr.Dataset:
    """``values`` plus ``gradient_noise`` from training images in noise at ``snr``."""
    tasks = {
        category: make_task_set(
            train_images,
            category,
            "noise",
            n,
            n,
            seed=task_seed(seed, train_images.category_index(category), NOISE_GRADIENT_STREAM),
            snr=snr,
        )
        for category in detectors.categories
    }
    return add_gradient_values(values, network, detectors, tasks, "noise")


def _categories(requested: Sequence[str] | None, detectors: Detectors) -> list[str]:
    if requested is None:
        return list(detectors.categories)
    return resolve_categories(requested, detectors.categories)


def run_noise_detection(
    network: Network,
    detectors: Detectors,
    values: xr.Dataset,
    test_images: ImageSet,
    config: NoiseConfig = NoiseConfig(),
    progress: bool = True,
    engine: str | Evaluator = "batched",
) -> pd.DataFrame:
    """Performance per (category, SNR, cue); the performance-table columns plus ``snr``.

    The uncued row has β = 0, the cued rows the config's β; a ``wrong-…`` cue attends the next
    category in the detectors' list.
    """
    if test_images.split == "train":
        raise DataError("noise test sets must not come from training images")
    unknown = [c for c in config.cues if c not in NOISE_CUES]
    if unknown:
        raise ConfigError(f"unknown cues {unknown}; valid cues: {', '.join(NOISE_CUES)}")
    if any(not (s > 0 and math.isfinite(s)) for s in config.snrs) or not config.snrs:
        raise ConfigError(f"SNRs must be positive finite numbers, got {config.snrs}")
    needs_gradient = any("gradient" in c for c in config.cues)
    if needs_gradient and "gradient_noise" not in values:
        raise ConfigError("gradient cues need 'gradient_noise' values (noise_gradient_values)")
    layer = network.resolve_layer(config.layer or network.layers[-2].alias)
    categories = _categories(config.categories, detectors)
    evaluator = _evaluator(network, detectors, engine)
    everyone = list(detectors.categories)

    def next_category(category: str) -> str:
        return everyone[(everyone.index(category) + 1) % len(everyone)]

    arms = tuple(
        Arm(None, cue)
        if cue == "none"
        else Arm(
            parse_rule(cue.removeprefix("wrong-")),
            cue,
            attend=next_category if cue.startswith("wrong-") else None,
        )
        for cue in dict.fromkeys(config.cues)
    )
    grid = Grid((LayerSetting.single(layer),), arms, (0.0, config.beta))
    tasks: dict[tuple[str, float], TaskSet] = {}
    for category in categories:
        k = test_images.category_index(category)
        for snr in sorted(config.snrs):
            tasks[(category, snr)] = make_task_set(
                test_images,
                category,
                "noise",
                config.n_pos,
                config.n_neg,
                seed=task_seed(config.seed, k),
                snr=snr,
            )
    sink = PerformanceSink(
        "noise-detection", columns={key: {"snr": key[1]} for key in tasks}, extra=["snr"]
    )
    run(
        tasks,
        grid,
        evaluator,
        sink,
        ValueSource(values),
        progress=progress,
        desc="detection in noise",
    )
    table = sink.table()
    # one row per cue: the uncued one at β = 0, the cued ones at the cue's β
    uncued = table["method"] == "none"
    keep = (uncued & (table["beta"] == 0.0)) | (~uncued & (table["beta"] != 0.0))
    return table[keep].reset_index(drop=True)


def noise_detection(
    experiment: Experiment, config: NoiseConfig = NoiseConfig(), progress: bool = True
) -> pd.DataFrame:
    """Detection in noise on a prepared experiment: its tuning values plus gradient values of
    noisy training images at ``config.gradient_snr``, then :func:`run_noise_detection`."""
    if experiment.values is None:
        raise ConfigError("detection in noise needs tuning values: prepare(..., values=True)")
    network, detectors = experiment.network, experiment.detectors
    values = noise_gradient_values(
        experiment.values, network, detectors, experiment.train_images, config.gradient_snr
    )
    return run_noise_detection(network, detectors, values, experiment.test_images, config, progress)


def detection_thresholds(table: pd.DataFrame, level: float = PERFORMANCE_THRESHOLD) -> pd.DataFrame:
    """Per cue: the SNR where the mean psychometric curve (across categories) first reaches
    ``level``, and the median of the per-category thresholds (NaN where a curve never does)."""
    rows = []
    for method, group in table.groupby("method", sort=False):
        curve = group.groupby("snr")["performance"].mean().sort_index()
        per_category = [
            _crossing(np.log10(g["snr"].to_numpy()), g["performance"].to_numpy(), level)
            for _, g in group.sort_values("snr").groupby("category", sort=False)
        ]
        mean_threshold = _crossing(np.log10(curve.index.to_numpy()), curve.to_numpy(), level)
        median = float(np.median(per_category))
        rows.append(
            {
                "method": method,
                "threshold_snr": 10**mean_threshold if np.isfinite(mean_threshold) else np.nan,
                "median_category_threshold_snr": 10**median if np.isfinite(median) else np.nan,
                "categories_crossing": int(np.isfinite(per_category).sum()),
            }
        )
    return pd.DataFrame(rows)


def _crossing(x: np.ndarray, y: np.ndarray, level: float) -> float:
    above = np.nonzero(y >= level)[0]
    if above.size == 0:
        return math.nan
    i = int(above[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (level - y0) * (x1 - x0) / (y1 - y0))


# --- figures -------------------------------------------------------------------------------
def plot_cueing(table: pd.DataFrame, out_stem: Path) -> list[Path]:
    """Write :func:`cueing_figure` as PNG and SVG; return their paths."""
    return save_figure(cueing_figure(table), out_stem)


def cueing_figure(table: pd.DataFrame) -> Figure:
    """Performance, d′ and criterion against β for valid, neutral and invalid cues (mean ±
    SEM across categories)."""
    means = mean_and_sem(table, ["method", "beta"], ["performance", "dprime", "criterion"])
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    shown = set(means["method"])
    colors = method_colors(c for c in CUE_TYPES if c in shown)
    for ax, column, label in zip(
        axes,
        ["performance", "dprime", "criterion"],
        ["performance", "d′", "criterion c"],
        strict=True,
    ):
        sem_lines(ax, means, "beta", column, colors)
        ax.set_xlabel("β (spatial cue strength)")
        ax.set_ylabel(f"{label} (mean ± SEM)")
    axes[2].axhline(0.0, color="0.6", lw=0.8, label="c = 0 (no bias)")
    axes[0].legend(frameon=False, fontsize=8)
    axes[2].legend(frameon=False, fontsize=8)
    layer = table["layer"].iloc[0]
    fig.suptitle(f"spatial cueing on 2×2 arrays, cue at {layer} (mean ± SEM across categories)")
    return fig


def plot_psychometric(table: pd.DataFrame, out_stem: Path) -> list[Path]:
    """Write :func:`psychometric_figure` as PNG and SVG; return their paths."""
    return save_figure(psychometric_figure(table), out_stem)


def psychometric_figure(table: pd.DataFrame) -> Figure:
    """Performance and d′ against SNR (log axis) for each cue (mean ± SEM across categories),
    with the performance level that defines the detection threshold."""
    means = mean_and_sem(table, ["method", "snr"], ["performance", "dprime"])
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = method_colors(table["method"])
    for ax, column, label in zip(
        axes, ["performance", "dprime"], ["performance", "d′"], strict=True
    ):
        sem_lines(ax, means, "snr", column, colors)
        ax.set_xscale("log")
        ax.set_xlabel("SNR (signal power / noise power)")
        ax.set_ylabel(f"{label} (mean ± SEM)")
    axes[0].axhline(
        PERFORMANCE_THRESHOLD,
        color="0.6",
        lw=0.8,
        ls=":",
        label=f"threshold (performance {PERFORMANCE_THRESHOLD:g})",
    )
    axes[0].legend(frameon=False, fontsize=8)
    layer = table["layer"].iloc[0]
    fig.suptitle(f"detection in noise with a feature cue at {layer} (mean ± SEM across categories)")
    return fig


# --- results folders -----------------------------------------------------------------------
def write_cueing(table: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """Write the cueing table, its per-cue means and figure; return the means."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out_dir / "cueing.parquet", index=False)
    means = (
        table.groupby(["method", "beta"])[["tp", "fp", "performance", "dprime", "criterion"]]
        .mean()
        .reset_index()
    )
    means.to_csv(out_dir / "cueing_summary.csv", index=False)
    plot_cueing(table, out_dir / "figures" / "cueing")
    return means


def write_noise(table: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """Write the detection-in-noise table, thresholds and psychometric figure; return thresholds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out_dir / "noise_detection.parquet", index=False)
    thresholds = detection_thresholds(table)
    thresholds.to_csv(out_dir / "noise_thresholds.csv", index=False)
    plot_psychometric(table, out_dir / "figures" / "psychometric")
    return thresholds
