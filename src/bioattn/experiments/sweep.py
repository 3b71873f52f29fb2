"""Sweeps: detection performance over layers × β × categories × methods × image types.

A sweep is the commonest experiment: test task sets per (image type, category), a
:class:`~bioattn.experiments.grid.Grid` of layer settings × gain rules × β, evaluated by
:func:`~bioattn.experiments.run.run` into a
:class:`~bioattn.experiments.run.PerformanceSink`. Methods name gain rules
(:mod:`bioattn.attention.rules`: ``tuning``, ``gradient``, ``uniform``, ``shuffled-…``,
``…-positive``, ``response-…``, ``spatial``, ``spatial+…``).

Each (category, layer, method, β) is one condition: the attended category's detector reads
the network's features for that category's test set (positives contain it, negatives never
do). With ``all_layers`` the rule is applied at every layer at once with strength β/10.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import pandas as pd
import xarray as xr

from bioattn.attention.rules import GainRule, ValueSource, parse_rules
from bioattn.attention.values import check_values_match
from bioattn.data.imageset import ImageSet, resolve_categories
from bioattn.data.tasks import (
    BUILT_IMAGE_TYPES,
    IMAGE_TYPES,
    SELECTION_STREAM,
    TEST_STREAM,
    TaskSet,
    make_task_set,
)
from bioattn.errors import ConfigError, DataError
from bioattn.experiments.engine import SweepEngine
from bioattn.experiments.evaluate import Evaluator, make_evaluator
from bioattn.experiments.grid import (
    ALL_LAYERS,
    Condition,
    Grid,
    LayerSetting,
    layer_settings,
    task_seed,
)
from bioattn.experiments.run import PERFORMANCE_COLUMNS, PerformanceSink, run
from bioattn.models.detectors import Detectors
from bioattn.models.network import LayerInfo, Network

#: Default attention strengths. Tuning values are z-scores (|v| up to √(K−1) = 3 for ten
#: categories) and gradient values lie in [−1, 1]; this grid spans both from gentle to strong,
#: finest in 0–1, where the best β of the default network lie.
DEFAULT_BETAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 4.0)
#: The β grid before it was refined: the experiments whose results RESULTS.md reports on it
#: (orientation, the SSN replication's plain network, the mechanisms comparison) keep it.
COARSE_BETAS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
#: Default methods: tuning and gradient values, and the shuffled-values control of each.
DEFAULT_METHODS = ("tuning", "gradient", "shuffled-tuning", "shuffled-gradient")

__all__ = [
    "ALL_LAYERS",
    "COARSE_BETAS",
    "DEFAULT_BETAS",
    "DEFAULT_METHODS",
    "PERFORMANCE_COLUMNS",
    "CheckedSweep",
    "ResolvedSweep",
    "SweepConfig",
    "build_selection_sets",
    "build_test_sets",
    "check_sweep",
    "resolve_sweep",
    "run_sweep",
    "sweep_grid",
]


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep. ``None`` for categories or layers means all of them."""

    task: str = "category"
    image_types: tuple[str, ...] = ("merged", "array")
    categories: tuple[str, ...] | None = None
    layers: tuple[str, ...] | None = None
    all_layers: bool = True
    betas: tuple[float, ...] = DEFAULT_BETAS
    methods: tuple[str, ...] = DEFAULT_METHODS
    n_pos: int = 75
    n_neg: int = 75
    seed: int = 0
    snr: float | None = None
    batch_size: int = 256
    shuffle_seed: int = 1

    def to_dict(self) -> dict:
        """Plain-dict form for the run's config file."""
        return asdict(self)


@dataclass
class ResolvedSweep:
    """A validated sweep: names resolved against the network, detectors and values."""

    config: SweepConfig
    categories: list[str]
    layers: list[LayerInfo]
    methods: list[GainRule]
    grid: Grid
    notes: list[str] = field(default_factory=list)


def sweep_grid(
    config: SweepConfig, network: Network, every: Sequence[LayerInfo] | None = None
) -> Grid:
    """The grid of a sweep config: its layers (and all-layers mode) × methods × β."""
    settings = layer_settings(network, config.layers, config.all_layers, every)
    return Grid.of(settings, parse_rules(config.methods), config.betas)


@dataclass
class CheckedSweep:
    """A sweep's names checked against a network and category names (no values needed)."""

    grid: Grid
    categories: list[str]
    notes: list[str] = field(default_factory=list)


def check_sweep(
    config: SweepConfig,
    network: Network,
    categories: Sequence[str],
    tasks: Mapping[tuple[str, str], TaskSet] | None = None,
) -> CheckedSweep:
    """Check a sweep's image types, sizes, layers, methods and categories; add β = 0 when it
    is missing. Needs only the network's architecture and the category names, so that a plan
    (:mod:`bioattn.experiments.plan`) refuses bad names before any training or values."""
    notes: list[str] = []
    known_types = IMAGE_TYPES if tasks is None else IMAGE_TYPES + BUILT_IMAGE_TYPES
    for image_type in config.image_types:
        if image_type not in known_types:
            raise ConfigError(
                f"unknown image type {image_type!r}; valid: {', '.join(known_types)}"
                + ("" if tasks is not None else f" ({', '.join(BUILT_IMAGE_TYPES)}: pass tasks)")
            )
    if "noise" in config.image_types and config.snr is None:
        raise ConfigError("image type 'noise' needs an SNR (--snr)")
    if config.n_pos < 1 or config.n_neg < 1:
        raise ConfigError(
            f"a task set needs at least one positive and one negative image, got "
            f"n_pos={config.n_pos}, n_neg={config.n_neg}"
        )
    grid = sweep_grid(config, network)
    if 0.0 not in {float(b) for b in config.betas}:
        notes.append("β = 0 was missing from the grid and has been added (it is the baseline)")
        grid = replace(grid, betas=(0.0, *grid.betas))
    chosen = (
        list(categories)
        if config.categories is None
        else resolve_categories(config.categories, categories)
    )
    if tasks is not None:
        _check_tasks(tasks, config.image_types, chosen)
    elif any(m.spatial for m in grid.rules):
        raise ConfigError(
            "spatial methods need task sets with a cued quadrant (e.g. the orientation task, "
            "`bioattn orientation`); pass them as tasks"
        )
    return CheckedSweep(grid, chosen, notes)


def resolve_sweep(
    config: SweepConfig,
    network: Network,
    detectors: Detectors,
    values: xr.Dataset,
    tasks: Mapping[tuple[str, str], TaskSet] | None = None,
) -> ResolvedSweep:
    """Check every name and setting (:func:`check_sweep`) and that the values fit the network,
    its detectors and the methods; add β = 0 when it is missing.

    With prebuilt ``tasks`` (keyed by (image type, category)) the image types may also be
    those built elsewhere (e.g. ``gratings``), and every (image type, category) of the sweep
    must have its task set; spatial methods need each set's cued quadrant. Duplicate
    categories, layers (one layer named two ways) and methods are merged with a note.
    """
    checked = check_sweep(config, network, detectors.categories, tasks)
    grid, categories = checked.grid, checked.categories
    methods = grid.rules
    check_values_match(values, network)
    value_categories = [str(c) for c in values["category"].values]
    if value_categories != list(detectors.categories):
        raise ConfigError(
            f"values are for categories {value_categories} but the detectors are for "
            f"{list(detectors.categories)}"
        )
    for method in methods:
        needed = {v for t in config.image_types for v in method.needed_values(t)}
        missing = sorted(v for v in needed if v not in values)
        if missing:
            raise ConfigError(
                f"method {method.name!r} needs values {missing}, which the values file lacks; "
                "compute them with `bioattn values` for these image types"
            )
    config = replace(
        config,
        betas=grid.betas,
        categories=None if config.categories is None else tuple(categories),
        methods=tuple(m.name for m in methods),
    )
    layers = [la for s in grid.settings for la in s.layers if s.name != ALL_LAYERS]
    return ResolvedSweep(config, categories, layers, methods, grid, checked.notes)


def _check_tasks(
    tasks: Mapping[tuple[str, str], TaskSet],
    image_types: Sequence[str],
    categories: Sequence[str],
) -> None:
    missing = [(t, c) for t in image_types for c in categories if (t, c) not in tasks]
    if missing:
        raise ConfigError(
            f"no task set for {missing[:4]}{' …' if len(missing) > 4 else ''}; the task sets "
            f"given cover {sorted(tasks)[:8]}"
        )


def build_test_sets(
    source: ImageSet, categories: Sequence[str], config: SweepConfig
) -> dict[tuple[str, str], TaskSet]:
    """Test task sets per (image type, category), from ``source`` (which must not be training).

    Each set's seed is :func:`~bioattn.experiments.grid.task_seed` of the category's place in
    ``source.categories``, so a sweep over some categories sees the same images as over all.
    """
    if source.split == "train":
        raise DataError(
            "test task sets must not be built from training images; pass the test split"
        )
    return _task_sets(source, categories, config, TEST_STREAM)


def build_selection_sets(
    source: ImageSet, categories: Sequence[str], config: SweepConfig
) -> dict[tuple[str, str], TaskSet]:
    """Selection task sets per (image type, category): training-split images on which β and
    layers are chosen, so that no test image takes part in a choice.

    Built like :func:`build_test_sets` (same sizes) from their own seed stream
    (:data:`~bioattn.data.tasks.SELECTION_STREAM`: drawn independently of the gradient values'
    images, which come from the same split).
    """
    if source.split != "train":
        raise DataError(
            f"selection task sets come from the training split, got split {source.split!r}; "
            "test images must never be used to choose β or layers"
        )
    return _task_sets(source, categories, config, SELECTION_STREAM)


def _task_sets(
    source: ImageSet, categories: Sequence[str], config: SweepConfig, stream: int
) -> dict[tuple[str, str], TaskSet]:
    return {
        (image_type, category): make_task_set(
            source,
            category,
            image_type,
            n_pos=config.n_pos,
            n_neg=config.n_neg,
            seed=task_seed(config.seed, source.category_index(category), stream),
            snr=config.snr,
        )
        for image_type in config.image_types
        for category in categories
    }


def run_sweep(
    network: Network,
    detectors: Detectors,
    values: xr.Dataset,
    test_images: ImageSet | None,
    config: SweepConfig = SweepConfig(),
    progress: bool = True,
    engine: str | SweepEngine | Evaluator = "batched",
    tasks: Mapping[tuple[str, str], TaskSet] | None = None,
    every: Sequence[LayerInfo] | None = None,
    chosen_betas: Mapping[tuple[str, str, str, str], float] | None = None,
) -> pd.DataFrame:
    """Run the sweep and return the long-form performance table (see ``PERFORMANCE_COLUMNS``).

    β = 0 is evaluated once per (image type, category) and its row repeated for every
    (layer, method), since with β = 0 every rule leaves the network unchanged.

    ``engine`` chooses how conditions are evaluated: ``"batched"`` (default: a
    :class:`~bioattn.experiments.engine.SweepEngine`, the network before the attended layer runs
    once per image set and layer), ``"naive"`` (the whole network once per condition), a
    configured ``SweepEngine``, or any :class:`~bioattn.experiments.evaluate.Evaluator` (e.g.
    the SSN-CNN's input currents). ``"batched"`` and ``"naive"`` give the same table (logits
    agree to float32 rounding).

    ``tasks`` gives prebuilt test task sets keyed by (image type, category) (e.g. the orientation
    task's two-grating images); ``test_images`` is then not used and may be ``None``.
    ``every`` gives the layers of the all-layers setting (default: every layer).
    Conditions an evaluator could not compute (an SSN that diverged) leave their rows out and
    are listed in ``table.attrs["failures"]``.

    ``chosen_betas`` maps (image type, category, layer, method) to the one β to evaluate there
    (chosen on other images, see :func:`bioattn.analysis.sdt.choose_betas`); the table then
    holds the β = 0 row and the chosen β's row of each (layer, method), and nothing else.
    """
    resolved = resolve_sweep(config, network, detectors, values, tasks)
    for note in resolved.notes:
        warnings.warn(note, stacklevel=2)
    config = resolved.config
    grid = (
        resolved.grid
        if every is None
        else replace(sweep_grid(config, network, every), betas=resolved.grid.betas)
    )
    evaluator = (
        engine
        if isinstance(engine, Evaluator)
        else make_evaluator(network, detectors, engine, batch_size=config.batch_size)
    )
    for rule in grid.rules:  # before the task sets are built
        evaluator.check(rule)
    if tasks is None:
        if test_images is None:
            raise ConfigError("run_sweep needs test images or prebuilt task sets (tasks=)")
        tasks = build_test_sets(test_images, resolved.categories, config)
    else:
        tasks = {(t, c): tasks[(t, c)] for t in config.image_types for c in resolved.categories}
    sink = PerformanceSink(config.task)
    run(
        tasks,
        grid,
        evaluator,
        sink,
        ValueSource(values, config.shuffle_seed),
        progress=progress,
        desc=f"sweep ({config.task})",
        conditions_for=None if chosen_betas is None else _chosen(grid, chosen_betas),
    )
    return sink.table()


def _chosen(
    grid: Grid, chosen_betas: Mapping[tuple[str, str, str, str], float]
) -> Callable[[object, TaskSet, LayerSetting], list[Condition]]:
    """The conditions of one (task, setting): each arm at its chosen β."""
    allowed = set(grid.betas)

    def conditions(key: object, task: TaskSet, setting: LayerSetting) -> list[Condition]:
        out = []
        for arm in grid.arms:
            where = (task.image_type, task.target_name, setting.name, arm.label)
            if where not in chosen_betas:
                raise ConfigError(
                    f"no chosen β for (image type, category, layer, method) = {where}; "
                    "choose β on selection images for every condition of the sweep first"
                )
            beta = float(chosen_betas[where])
            if beta not in allowed:
                raise ConfigError(
                    f"chosen β = {beta:g} for {where} is not in the sweep's β grid "
                    f"{list(grid.betas)}"
                )
            out.append(Condition(setting, arm, beta))
        return out

    return conditions
