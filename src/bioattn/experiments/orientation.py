"""Orientation detection with feature attention, and spatial attention to a cued quadrant.

The orientation part of Lindsay & Miller (2018) on the default network:

* **Detectors**: one logistic detector per grid orientation (0°–160°), fitted on the network's
  readout features of single gratings, each in a random quadrant of the grey 2×2 layout (the
  "standard" images of this task). Detectors fitted on full-field gratings instead were perfect
  on full-field gratings but called almost every two-grating image "absent" (performance at
  chance for 8 of 9 orientations), which leaves nothing for a criterion/d′ analysis to read.
* **Values**: tuning from the same kind of single-grating images; gradient values from
  two-grating task images (both drawn with training seeds, never the test seeds).
* **Task images** (``image_type = "gratings"``): 2×2 layouts of grating tiles with two quadrants
  filled. For target orientation k the cued quadrant is ``k mod 4``. Positives have orientation
  k in the cued quadrant and a grating of another orientation in another quadrant; negatives
  have a non-target grating in the cued quadrant and another non-target grating elsewhere, so
  they never contain k.
* **Sweeps**: feature attention (tuning, gradient) over layers × β, as for objects; and at one
  layer (default: the last) spatial attention to the cued quadrant alone, feature attention
  alone, and both together, to ask whether attention moves the criterion or raises d′.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch
import xarray as xr

from bioattn.attention.values import add_gradient_values, save_values, tuning_values
from bioattn.data.composites import QUADRANTS
from bioattn.data.gratings import (
    ORIENTATION_NAMES,
    ORIENTATIONS,
    GratingSpec,
    grating_image_set,
    grating_pairs,
    resolve_orientation,
)
from bioattn.data.tasks import TaskSet
from bioattn.errors import ConfigError
from bioattn.experiments.runfolder import plot_run, write_run_config, write_tables
from bioattn.experiments.sweep import COARSE_BETAS, SweepConfig, run_sweep
from bioattn.models.detectors import Detectors, evaluate_detectors, fit_detectors
from bioattn.models.network import Network

#: Seeds of the training (detectors, values) and test image families never overlap.
TRAIN_SEED_OFFSET = 1_000
TEST_SEED_OFFSET = 2_000_000

SPATIAL_METHODS = ("spatial", "tuning", "gradient", "spatial+tuning", "spatial+gradient")


def cued_quadrant(orientation_index: int) -> int:
    """The quadrant cued for a target orientation: its index modulo 4."""
    return orientation_index % len(QUADRANTS)


def orientation_task_set(
    target: int | str,
    spec: GratingSpec = GratingSpec(),
    n_pos: int = 50,
    n_neg: int = 50,
    seed: int = 0,
    split: str = "test",
    quadrant: int | None = None,
) -> TaskSet:
    """Two-grating task images for one target orientation (positives first).

    ``quadrant`` (0–3) overrides the cued quadrant (default ``target mod 4``).
    """
    k = target if isinstance(target, int) else resolve_orientation(target)
    if not 0 <= k < len(ORIENTATIONS):
        raise ConfigError(f"orientation index {k} is off the grid 0..{len(ORIENTATIONS) - 1}")
    if n_pos < 1 or n_neg < 1:
        raise ConfigError(f"need at least one positive and one negative, got {n_pos}, {n_neg}")
    cue = cued_quadrant(k) if quadrant is None else int(quadrant)
    if not 0 <= cue < len(QUADRANTS):
        raise ConfigError(
            f"quadrant {quadrant} is outside 1–4 (given 0-based here: 0–3 = {', '.join(QUADRANTS)})"
        )
    generator = torch.Generator().manual_seed(seed)
    n = n_pos + n_neg
    others = torch.tensor([o for o in range(len(ORIENTATIONS)) if o != k])
    table = torch.full((n, len(QUADRANTS)), -1, dtype=torch.int64)
    in_cue = others[torch.randint(len(others), (n,), generator=generator)]
    in_cue[:n_pos] = k
    table[:, cue] = in_cue
    free = torch.tensor([q for q in range(len(QUADRANTS)) if q != cue])
    second_quadrant = free[torch.randint(len(free), (n,), generator=generator)]
    # the second grating differs from both k and the cued grating
    second = torch.empty(n, dtype=torch.int64)
    for i in range(n):
        choices = others[others != in_cue[i]]
        second[i] = choices[torch.randint(len(choices), (1,), generator=generator)]
    table[torch.arange(n), second_quadrant] = second
    pairs = grating_pairs(table, spec, generator)
    is_target = torch.zeros(n, dtype=torch.bool)
    is_target[:n_pos] = True
    return TaskSet(
        images=pairs.images,
        is_target=is_target,
        contents=table,
        target=k,
        categories=ORIENTATION_NAMES,
        image_type="gratings",
        split=split,
        seed=seed,
        cued_quadrant=cue,
    )


def orientation_task_sets(
    orientations: Sequence[str | int] | None = None,
    spec: GratingSpec = GratingSpec(),
    n_pos: int = 50,
    n_neg: int = 50,
    seed: int = 0,
    split: str = "test",
) -> dict[tuple[str, str], TaskSet]:
    """Task sets keyed by ("gratings", orientation name), as :func:`run_sweep` takes them."""
    indices = (
        list(range(len(ORIENTATIONS)))
        if orientations is None
        else [resolve_orientation(o) for o in orientations]
    )
    offset = TEST_SEED_OFFSET if split == "test" else TRAIN_SEED_OFFSET
    return {
        ("gratings", ORIENTATION_NAMES[k]): orientation_task_set(
            k, spec, n_pos, n_neg, seed=offset + seed * 7919 + k, split=split
        )
        for k in indices
    }


def check_grating_fits(network: Network, spec: GratingSpec) -> None:
    """Refuse gratings whose 2×2 layout (2·size pixels a side) exceeds the model's input."""
    side = 2 * spec.size
    if network.input_size is not None and side > network.input_size:
        raise ConfigError(
            f"gratings of {spec.size} px make {side} px task images, larger than the "
            f"{network.input_size} px input of {network.name}; use a grating size of at most "
            f"{network.input_size // 2} px"
        )


def fit_orientation_detectors(
    network: Network,
    spec: GratingSpec = GratingSpec(),
    n_per_orientation: int = 200,
    seed: int = 0,
    l2: float = 1e-3,
) -> tuple[Detectors, pd.DataFrame]:
    """Orientation detectors on single gratings in one quadrant; also their held-out accuracy."""
    check_grating_fits(network, spec)
    train = grating_image_set(
        n_per_orientation, spec, seed=TRAIN_SEED_OFFSET + seed, in_quadrant=True
    )
    test = grating_image_set(
        max(20, n_per_orientation // 4),
        spec,
        seed=TEST_SEED_OFFSET + seed,
        split="test",
        in_quadrant=True,
    )
    detectors = fit_detectors(
        network.readout_features(train.images), train.labels, train.categories, l2=l2
    )
    table = evaluate_detectors(detectors, network.readout_features(test.images), test.labels)
    return detectors, table


def orientation_values(
    network: Network,
    detectors: Detectors,
    spec: GratingSpec = GratingSpec(),
    n_tuning: int = 200,
    n_gradient: int = 50,
    seed: int = 0,
) -> xr.Dataset:
    """Tuning (single gratings) and ``gradient_gratings`` values (two-grating task images)."""
    tuning_images = grating_image_set(
        n_tuning, spec, seed=TRAIN_SEED_OFFSET + 17 + seed, in_quadrant=True
    )
    values = tuning_values(network, tuning_images)
    tasks = {
        name: task
        for (_, name), task in orientation_task_sets(
            None, spec, n_gradient, n_gradient, seed=seed + 1, split="train"
        ).items()
    }
    return add_gradient_values(values, network, detectors, tasks, "gratings")


@dataclass(frozen=True)
class OrientationConfig:
    """Settings of the orientation and spatial experiments."""

    spec: GratingSpec = GratingSpec()
    orientations: tuple[str, ...] | None = None
    betas: tuple[float, ...] = COARSE_BETAS
    methods: tuple[str, ...] = ("tuning", "gradient")  # of the feature sweep
    spatial_betas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
    spatial_layer: str | None = None  # None: the last attendable layer
    n_pos: int = 50
    n_neg: int = 50
    seed: int = 0
    additive_spatial: bool = False
    n_train: int = 200  # single gratings per orientation for the detectors and for tuning
    n_gradient: int = 50  # positives (and as many negatives) per orientation for gradients


def run_orientation(
    network: Network,
    out_dir: str | Path,
    config: OrientationConfig = OrientationConfig(),
    progress: bool = True,
) -> dict:
    """Fit detectors and values, then run both sweeps; write ``orientation/`` and ``spatial/``.

    Each subfolder is a results folder like the object replication's (performance table, gains,
    summary, figures), so ``bioattn plot`` works on either.
    """

    out_dir = Path(out_dir)
    started = time.perf_counter()
    spatial_layer = network.resolve_layer(config.spatial_layer or network.layers[-1].alias)
    detectors, detector_table = fit_orientation_detectors(
        network, config.spec, config.n_train, seed=config.seed
    )
    values = orientation_values(
        network, detectors, config.spec, config.n_train, config.n_gradient, seed=config.seed
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_values(values, out_dir / "orientation_values.nc")
    detector_table.to_csv(out_dir / "orientation_detectors.csv", index=False)
    tasks = orientation_task_sets(
        config.orientations, config.spec, config.n_pos, config.n_neg, seed=config.seed
    )
    feature = SweepConfig(
        task="orientation",
        image_types=("gratings",),
        categories=config.orientations,
        betas=config.betas,
        methods=config.methods,
        n_pos=config.n_pos,
        n_neg=config.n_neg,
        seed=config.seed,
    )
    table = run_sweep(network, detectors, values, None, feature, progress, tasks=tasks)
    _, feature_summary = write_tables(table, out_dir / "orientation")
    plot_run(out_dir / "orientation")

    methods = SPATIAL_METHODS
    if config.additive_spatial:
        methods = (*methods, "spatial+tuning-additive", "spatial+gradient-additive")
    spatial = replace(
        feature,
        task="orientation-spatial",
        layers=(spatial_layer.alias,),
        all_layers=False,
        betas=config.spatial_betas,
        methods=methods,
    )
    spatial_table = run_sweep(network, detectors, values, None, spatial, progress, tasks=tasks)
    _, spatial_summary = write_tables(spatial_table, out_dir / "spatial")
    plot_run(out_dir / "spatial")
    criterion_sensitivity = criterion_sensitivity_table(spatial_table)
    criterion_sensitivity.to_csv(out_dir / "spatial" / "criterion_sensitivity.csv", index=False)
    elapsed = time.perf_counter() - started
    write_run_config(
        out_dir,
        "orientation",
        {"orientation": asdict(config), "spatial_layer": spatial_layer.alias},
        model={"name": network.name},
        results={
            "detector_balanced_accuracy": dict(
                zip(
                    detector_table["category"],
                    detector_table["balanced_accuracy"].round(4),
                    strict=True,
                )
            )
        },
        timings={"total": elapsed},
    )
    return {
        "detectors": detector_table,
        "feature_summary": feature_summary,
        "spatial_summary": spatial_summary,
        "spatial_table": spatial_table,
        "criterion_sensitivity": criterion_sensitivity,
        "seconds": elapsed,
    }


def criterion_sensitivity_table(spatial_table: pd.DataFrame) -> pd.DataFrame:
    """Mean TP, FP, performance, d′ and criterion across orientations per method and β.

    Also the change of each from β = 0 (``delta_…`` columns), which says whether a method moves
    the criterion (TP and FP rise together, c falls) or raises sensitivity (d′ rises).
    """
    columns = ["tp", "fp", "performance", "dprime", "criterion"]
    keys = ["layer", "method"]
    means = spatial_table.groupby([*keys, "beta"], sort=True)[columns].mean().reset_index()
    baseline = means.loc[means["beta"] == 0.0, [*keys, *columns]]
    merged = means.merge(baseline, on=keys, suffixes=("", "_baseline"))
    for column in columns:
        merged[f"delta_{column}"] = merged[column] - merged[f"{column}_baseline"]
    return merged.drop(columns=[f"{c}_baseline" for c in columns])
