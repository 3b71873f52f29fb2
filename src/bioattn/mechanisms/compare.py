"""One comparison of attention mechanisms with the feature similarity gain model (FSGM).

Every mechanism answers the same cued question — "is category c in this image?" — on the same
test sets as the FSGM sweep (:func:`bioattn.experiments.sweep.build_test_sets`: per category
``n_pos`` positives and ``n_neg`` negatives of each image type, from the test split). Every
choice a mechanism makes is fitted on training images only:

=================  ========================================================================
``none``           the default network and its detectors, no attention (β = 0)
``fsgm-tuning``    FSGM with tuning values; per category the (layer, β) with the best
``fsgm-gradient``  performance on a training *selection pool* (β = 0 included), with
                   gradient values
``fsgm-optimal``   directly optimised per-map gains (:mod:`~bioattn.mechanisms.optimal`) at
                   every layer on a fitting pool, kept by early stopping on a validation
                   set of other training images (:func:`.holdout_split`); per category the
                   layer whose gains did best on the validation set (no attention if none
                   beat it); its rows carry the train and validation performance
``fsgm-spatial``   (arrays only) covert spatial attention: the spatial gain (1 + β on the
                   cued quadrant, max(0, 1 − β) elsewhere, every map) with a valid cue (the
                   target's quadrant; a random one on negatives), (layer, β) per category
                   from the selection pool
``dasnet``         feedback feature gains from top-layer activity (:mod:`.dasnet`), the
                   policy trained by backprop
``dasnet-snes``    the same feedback policy (hidden layer ``dasnet_snes_hidden``) trained
                   with SNES as in Stollenga et al. (:mod:`.snes`)
``soft-spatial``   softmax weighting over positions of one layer (:mod:`.soft_spatial`)
``ram``            hard spatial attention, a recurrent attention model trained from scratch
                   with REINFORCE on the pixels (:mod:`.ram`); not the default network;
                   trained on fresh training stimuli every step (``ram_fresh``,
                   :class:`~bioattn.mechanisms.common.FreshTasks`), not the training pool
=================  ========================================================================

dasNet, soft spatial attention and RAM train on a larger *training pool* of cued questions
(balanced per category). Separately, a RAM is trained to classify translated, cluttered
Fashion-MNIST (``clutter_size`` × ``clutter_size``, Mnih et al.'s task) and its test accuracy
reported. Results folder: ``comparison.csv`` (mean ± SEM over categories per image type and
mechanism, with training time), ``comparison_by_category.csv``, ``gain_correlations.csv`` (learned
and optimal gains against tuning and gradient values, per layer), ``overt_covert.csv`` (arrays:
overt vs covert spatial vs feature attention, :func:`overt_covert_table`), ``ram_clutter.json``,
``config.json`` (settings, budgets, timings, versions) and ``figures/`` (comparison, RAM
glimpse trajectories, soft attention maps). Training checkpoints go to ``checkpoints/``; running
again with the same folder resumes or reuses them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from matplotlib.figure import Figure

from bioattn.analysis.figures import save_figure
from bioattn.analysis.sdt import detection_metrics
from bioattn.attention.gains import Modulation
from bioattn.attention.rules import FeatureGain, SpatialGain, ValueSource
from bioattn.attention.values import compute_values, load_values, save_values, variable_name
from bioattn.cache import atomic_write_bytes
from bioattn.data.clutter import make_cluttered
from bioattn.data.fashion_mnist import load_fashion_mnist
from bioattn.data.imageset import ImageSet
from bioattn.data.tasks import TaskSet, cue_seed
from bioattn.errors import ConfigError
from bioattn.experiments.engine import target_logits
from bioattn.experiments.evaluate import ModulationEvaluator, make_evaluator
from bioattn.experiments.grid import Arm, Condition, Grid, LayerSetting
from bioattn.experiments.psychophysics import cue_quadrants
from bioattn.experiments.run import PerformanceSink, run
from bioattn.experiments.runfolder import write_run_config
from bioattn.experiments.sweep import COARSE_BETAS, SweepConfig, build_test_sets
from bioattn.mechanisms.common import (
    CuedSet,
    FreshTasks,
    cued_set,
    evaluate_in_batches,
    holdout_split,
    metric_rows,
    training_pool,
)
from bioattn.mechanisms.dasnet import (
    FeedbackPolicy,
    dasnet_pass,
    mean_gains,
    train_dasnet,
    train_dasnet_snes,
)
from bioattn.mechanisms.optimal import (
    OptimalGains,
    check_bounds,
    gain_value_correlations,
    optimise_gains,
)
from bioattn.mechanisms.ram import (
    RAMConfig,
    RecurrentAttentionModel,
    plot_glimpses,
    ram_detection_logits,
    ram_outputs,
    train_ram,
)
from bioattn.mechanisms.soft_spatial import (
    SoftSpatialAttention,
    plot_attention_maps,
    soft_spatial_logits,
    train_soft_spatial,
)
from bioattn.mechanisms.training import Budget, RunOptions
from bioattn.models.detectors import Detectors
from bioattn.models.network import LayerInfo, Network
from bioattn.models.train import load_default

#: Mechanisms in table and figure order.
MECHANISMS = (
    "none",
    "fsgm-tuning",
    "fsgm-gradient",
    "fsgm-optimal",
    "fsgm-spatial",
    "dasnet",
    "dasnet-snes",
    "soft-spatial",
    "ram",
)
#: The overt vs covert comparison on arrays (``overt_covert.csv``): no attention, covert
#: feature gain, covert spatial gain (given and learned), overt attention (glimpses).
OVERT_COVERT = (
    ("none", "no attention"),
    ("fsgm-tuning", "covert, feature (FSGM tuning)"),
    ("fsgm-gradient", "covert, feature (FSGM gradient)"),
    ("fsgm-spatial", "covert, spatial (gain on the cued quadrant)"),
    ("soft-spatial", "covert, spatial (learned soft attention)"),
    ("ram", "overt (glimpses, RAM)"),
)
#: Image types the comparison supports (attention needs something to select among).
COMPARE_IMAGE_TYPES = ("array", "merged")
METRICS = ("tp", "tn", "fp", "performance", "dprime", "criterion")


@dataclass(frozen=True)
class CompareConfig:
    """Everything that defines a comparison run; the defaults are the documented full run.

    Budgets are :class:`~bioattn.mechanisms.training.Budget` (steps, batch size, learning rate;
    for optimal gains the batch size is only the chunk size of the full-batch steps).
    ``clutter_budget = None`` skips the cluttered-classification RAM.
    """

    image_types: tuple[str, ...] = COMPARE_IMAGE_TYPES
    categories: tuple[str, ...] | None = None
    n_pos: int = 75
    n_neg: int = 75
    seed: int = 0
    pool_per_class: int = 100
    select_per_class: int = 20
    fsgm_layers: tuple[str, ...] | None = None
    betas: tuple[float, ...] = COARSE_BETAS
    soft_layer: str | None = None
    dasnet_layers: tuple[str, ...] | None = None
    feedback_steps: int = 2
    ram: RAMConfig = RAMConfig(n_glimpses=4, glimpse_hidden=64, hidden=128)
    ram_budget: Budget = Budget(40_000, 32, 1e-3)
    ram_fresh: bool = True
    soft_budget: Budget = Budget(150, 32, 3e-3)
    dasnet_budget: Budget = Budget(60, 32, 3e-3)
    dasnet_snes_budget: Budget = Budget(100, 64, 1.0)
    dasnet_population: int | None = None  # SNES's default for the policy's size
    dasnet_sigma: float = 0.05
    dasnet_snes_hidden: int = 16
    optimal_budget: Budget = Budget(30, 500, 0.1)
    optimal_l2: float = 1e-3
    optimal_bounds: tuple[float, float] = (0.0, 3.0)
    optimal_per_class: int = 50
    optimal_validation_per_class: int = 25
    optimal_validation_fraction: float = 0.2
    optimal_patience: int | None = 6
    clutter_budget: Budget | None = Budget(300, 32, 1e-3)
    clutter_train: int = 5_000
    clutter_test: int = 1_000
    clutter_size: int = 60
    clutter_pieces: int = 4
    clutter_piece_size: int = 8
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        bad = [t for t in self.image_types if t not in COMPARE_IMAGE_TYPES]
        if bad or not self.image_types:
            raise ConfigError(
                f"image types {bad or '(none)'} cannot be compared; choose from "
                f"{', '.join(COMPARE_IMAGE_TYPES)}"
            )
        for name in (
            "n_pos",
            "n_neg",
            "pool_per_class",
            "select_per_class",
            "feedback_steps",
            "optimal_per_class",
            "optimal_validation_per_class",
            "dasnet_snes_hidden",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("clutter_train", "clutter_test", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_bounds(self.optimal_bounds)
        if self.dasnet_population is not None and (
            self.dasnet_population < 2 or self.dasnet_population % 2
        ):
            raise ConfigError(
                f"dasnet_population must be an even number >= 2 (SNES draws mirrored pairs), "
                f"got {self.dasnet_population}"
            )
        if not self.dasnet_sigma > 0:
            raise ConfigError(f"dasnet_sigma must be > 0, got {self.dasnet_sigma}")
        if not 0.0 < self.optimal_validation_fraction < 1.0:
            raise ConfigError(
                "optimal_validation_fraction must lie strictly between 0 and 1, got "
                f"{self.optimal_validation_fraction}"
            )
        if self.optimal_patience is not None and self.optimal_patience < 1:
            raise ConfigError(
                "optimal_patience must be >= 1 (or None: no early stop), got "
                f"{self.optimal_patience}"
            )
        if self.optimal_l2 < 0:
            raise ConfigError(f"optimal_l2 must be >= 0, got {self.optimal_l2}")
        if not self.betas or any(not np.isfinite(b) for b in self.betas):
            raise ConfigError(f"betas must be finite numbers, got {self.betas}")

    @classmethod
    def quick(cls, **changes: object) -> CompareConfig:
        """A few-minute smoke version: 2 categories, small pools, short budgets."""
        settings: dict[str, object] = {
            "categories": ("Trouser", "Bag"),
            "n_pos": 30,
            "n_neg": 30,
            "pool_per_class": 60,
            "select_per_class": 15,
            "ram_budget": Budget(100, 32, 1e-3),
            "soft_budget": Budget(30, 32, 3e-3),
            "dasnet_budget": Budget(30, 32, 1e-3),
            "dasnet_snes_budget": Budget(20, 32, 1.0),
            "optimal_budget": Budget(8, 300, 0.1),
            "optimal_per_class": 20,
            "optimal_validation_per_class": 10,
            "clutter_budget": Budget(100, 32, 1e-3),
            "clutter_train": 1_000,
            "clutter_test": 200,
        }
        settings.update(changes)
        return cls(**settings)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        """Plain-dict form for ``config.json``."""
        return asdict(self)


@dataclass
class ComparisonResult:
    """Tables and files of one comparison."""

    by_category: pd.DataFrame
    summary: pd.DataFrame
    correlations: pd.DataFrame
    clutter: dict[str, float]
    timings: dict[str, float]
    paths: list[Path] = field(default_factory=list)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator for module initialisation without disturbing the caller."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _options(
    config: CompareConfig, path: Path, progress: bool, every_divisor: int = 1
) -> RunOptions:
    """Checkpoint options of one training run of a comparison."""
    return RunOptions(path, max(1, config.checkpoint_every // every_divisor), progress)


def _split(logits: torch.Tensor, tasks: Mapping[str, TaskSet]) -> dict[str, torch.Tensor]:
    """Logits of a concatenation of ``tasks`` back per category."""
    parts = torch.split(logits, [len(t) for t in tasks.values()])
    return dict(zip(tasks, parts, strict=True))


def _select_fsgm(
    evaluator: ModulationEvaluator,
    source: ValueSource,
    rule: FeatureGain,
    layers: Sequence[LayerInfo],
    betas: Sequence[float],
    select: TaskSet,
) -> Condition | None:
    """The (layer, β) condition with the best performance on ``select`` (None: β = 0 is best);
    ties go to β = 0, then to grid order."""
    grid = Grid.of([LayerSetting.single(layer) for layer in layers], [rule], betas)
    sink = PerformanceSink("selection")
    run({0: select}, grid, evaluator, sink, source, progress=False)
    candidates: list[Condition | None] = [None]
    performance = [sink.rows[0]["performance"]]
    for row, condition in zip(
        (r for r in sink.rows if r["beta"] != 0.0),
        (c for s in grid.settings for c in grid.conditions(s)),
        strict=True,
    ):
        candidates.append(condition)
        performance.append(row["performance"])
    return candidates[int(np.argmax(performance))]


def _spatial_condition(
    setting: LayerSetting, beta: float, task: TaskSet, seed: int, k: int
) -> Condition:
    """The valid spatial cue at ``setting`` and ``beta`` on ``task`` (category index ``k``):
    positives cued at the target's quadrant, negatives at a random one (as in cueing)."""
    generator = torch.Generator().manual_seed(cue_seed(seed, k))
    quadrants = cue_quadrants(task, "valid", generator)
    return Condition(setting, Arm(SpatialGain(), cue="valid"), beta, quadrants)


def _select_spatial(
    evaluator: ModulationEvaluator,
    layers: Sequence[LayerInfo],
    betas: Sequence[float],
    select: TaskSet,
    baseline: float,
    seed: int,
    k: int,
) -> tuple[LayerSetting, float] | None:
    """The (layer, β) of the valid spatial cue with the best performance on ``select`` (None:
    no attention, whose performance there is ``baseline``); ties go to no attention."""
    candidates = [(LayerSetting.single(la), b) for la in layers for b in betas if b != 0.0]
    conditions = [_spatial_condition(s, b, select, seed, k) for s, b in candidates]
    logits = evaluator.evaluate(select, conditions, ValueSource(xr.Dataset())).logits
    scores = [detection_metrics(row, select.is_target)["performance"] for row in logits]
    best = int(np.argmax(scores)) if scores else -1
    if best < 0 or scores[best] <= baseline:
        return None
    return candidates[best]


def overt_covert_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Overt vs covert attention on arrays: the comparison's rows of :data:`OVERT_COVERT`
    (performance ± SEM, TP, TN, d′ and criterion, mean over categories)."""
    arrays = summary[summary["image_type"] == "array"].set_index("mechanism")
    rows = []
    for mechanism, kind in OVERT_COVERT:
        if mechanism not in arrays.index:
            continue
        row = arrays.loc[mechanism]
        rows.append(
            {
                "mechanism": mechanism,
                "attention": kind,
                **{m: float(row[m]) for m in ("performance", "performance_sem", "tp", "tn")},
                "dprime": float(row["dprime"]),
                "criterion": float(row["criterion"]),
            }
        )
    return pd.DataFrame(rows)


def _optimal_choice(results: Sequence[OptimalGains], k: int) -> OptimalGains | None:
    """The layer whose gains did best for category index ``k`` on the set they were kept by
    (the validation split); None when no layer beat β = 0 there."""
    best = max(results, key=lambda r: float(r.selection_performance[k]))
    if float(best.selection_performance[k]) <= float(best.selection_baseline[k]):
        return None
    return best


def _rows_for(
    logits: torch.Tensor | Mapping[str, torch.Tensor],
    tasks: Mapping[str, TaskSet],
    image_type: str,
    mechanism: str,
    layer: str = "",
) -> list[dict[str, object]]:
    by_category = logits if isinstance(logits, Mapping) else _split(logits, tasks)
    return metric_rows(by_category, tasks, image_type=image_type, mechanism=mechanism, layer=layer)


def summarise(by_category: pd.DataFrame, timings: Mapping[str, float]) -> pd.DataFrame:
    """Mean ± SEM over categories per (image type, mechanism), with training seconds (and,
    for optimal gains, the mean performance on their fitting pool and validation set)."""
    rows = []
    for (image_type, mechanism), group in by_category.groupby(["image_type", "mechanism"]):
        row: dict[str, object] = {"image_type": image_type, "mechanism": mechanism}
        for metric in METRICS:
            values = group[metric].astype(float)
            row[metric] = float(values.mean())
            row[f"{metric}_sem"] = (
                float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
            )
        for fitted in ("train_performance", "validation_performance"):  # optimal gains only
            if fitted in group and group[fitted].notna().any():
                row[fitted] = float(group[fitted].astype(float).mean())
        row["n_categories"] = int(group["category"].nunique())
        row["train_seconds"] = round(float(timings.get(f"{image_type}/{mechanism}", 0.0)), 1)
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["_order"] = out["mechanism"].map({m: i for i, m in enumerate(MECHANISMS)})
    out = out.sort_values(["image_type", "_order"], kind="mergesort").drop(columns="_order")
    return out.reset_index(drop=True)


def plot_comparison(summary: pd.DataFrame, stem: str | Path) -> list[Path]:
    """TP, TN, d′ and criterion (mean ± SEM over categories) per mechanism and image type."""
    fig = Figure(figsize=(13, 3.6))
    mechanisms = [m for m in MECHANISMS if m in set(summary["mechanism"])]
    image_types = sorted(summary["image_type"].unique())
    width = 0.8 / max(1, len(image_types))
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c")
    labels = {"tp": "TP (hit rate)", "tn": "TN (correct rejection)", "dprime": "d′"}
    for p, metric in enumerate(("tp", "tn", "dprime", "criterion")):
        ax = fig.add_subplot(1, 4, p + 1)
        for i, image_type in enumerate(image_types):
            part = summary[summary["image_type"] == image_type].set_index("mechanism")
            part = part.reindex(mechanisms)
            x = np.arange(len(mechanisms)) + (i - (len(image_types) - 1) / 2) * width
            ax.bar(
                x,
                part[metric],
                width,
                yerr=part[f"{metric}_sem"],
                color=colors[i % len(colors)],
                label=image_type,
                capsize=2,
            )
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(np.arange(len(mechanisms)))
        ax.set_xticklabels(mechanisms, rotation=45, ha="right", fontsize=8)
        ax.set_title(labels.get(metric, metric), fontsize=10)
        ax.set_xlabel("mechanism", fontsize=8)
        ax.set_ylabel(f"{labels.get(metric, metric)} (mean ± SEM)", fontsize=8)
        if metric in ("tp", "tn"):
            ax.set_ylim(0, 1)
    fig.axes[0].legend(fontsize=8, title="images", title_fontsize=8)
    fig.suptitle(
        "Attention mechanisms on the same detection test sets (mean ± SEM over categories)",
        fontsize=10,
    )
    fig.subplots_adjust(wspace=0.3)
    return save_figure(fig, stem)


def _clutter_kwargs(config: CompareConfig) -> dict[str, int]:
    return {
        "size": config.clutter_size,
        "n_clutter": config.clutter_pieces,
        "clutter_size": config.clutter_piece_size,
    }


def _clutter_run(
    train: ImageSet,
    test: ImageSet,
    config: CompareConfig,
    folder: Path,
    figures: Path,
    progress: bool,
) -> tuple[dict[str, float], list[Path]]:
    """Train and test a classification RAM on translated, cluttered images."""
    assert config.clutter_budget is not None
    kwargs = _clutter_kwargs(config)
    started = time.perf_counter()
    train_set = make_cluttered(train, config.clutter_train, seed=config.seed, **kwargs)
    test_set = make_cluttered(test, config.clutter_test, seed=config.seed + 1, **kwargs)
    with _seeded(config.seed):
        model = RecurrentAttentionModel(train.images.shape[1], len(train.categories), 0, config.ram)
    log = train_ram(
        model,
        train_set,
        config.clutter_budget,
        config.seed,
        _options(config, folder / "clutter_ram.pt", progress),
    )
    out = ram_outputs(model, test_set.images)
    accuracy = float((out.logits.argmax(1) == test_set.labels).float().mean())
    shown = slice(0, 6)
    paths = plot_glimpses(
        test_set.images[shown],
        out.locations[shown],
        config.ram,
        figures / "ram_glimpses_clutter",
        [
            f"{test.categories[int(y)]} → {test.categories[int(p)]}"
            for y, p in zip(test_set.labels[shown], out.logits[shown].argmax(1), strict=True)
        ],
    )
    result = {
        "test_accuracy": accuracy,
        "chance": 1.0 / len(train.categories),
        "n_train": config.clutter_train,
        "n_test": config.clutter_test,
        "steps": log.steps,
        "train_seconds": round(log.seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return result, paths


def compare_mechanisms(
    network: Network,
    detectors: Detectors,
    values: xr.Dataset,
    train: ImageSet,
    test: ImageSet,
    config: CompareConfig = CompareConfig(),
    out_dir: str | Path = "runs/mechanisms",
    progress: bool = True,
    extra: Mapping[str, object] | None = None,
) -> ComparisonResult:
    """Train every mechanism, evaluate all of them on the same test sets, write the results.

    ``extra`` entries (e.g. the model's metrics) are added to ``config.json``.
    """

    out_dir = Path(out_dir)
    folder, figures = out_dir / "checkpoints", out_dir / "figures"
    chosen = detectors.categories if config.categories is None else config.categories
    categories = [detectors.categories[detectors.index(c)] for c in chosen]
    layers = network.resolve_layers(config.fsgm_layers)
    soft_layer = network.resolve_layer(config.soft_layer or network.layers[-1].alias)
    dasnet_layers = network.resolve_layers(config.dasnet_layers)
    if config.clutter_budget is not None:  # bad clutter settings fail now, not after training
        make_cluttered(train.subset([0]), 1, seed=config.seed, **_clutter_kwargs(config))
    sweep = SweepConfig(
        image_types=config.image_types,
        categories=tuple(categories),
        n_pos=config.n_pos,
        n_neg=config.n_neg,
        seed=config.seed,
    )
    test_sets = build_test_sets(test, categories, sweep)
    k_all = len(detectors.categories)
    cat_index = [detectors.index(c) for c in categories]
    betas = sorted({0.0, *(float(b) for b in config.betas)})
    evaluator = make_evaluator(network, detectors)
    source = ValueSource(values)
    rows: list[dict[str, object]] = []
    correlations: list[pd.DataFrame] = []
    timings: dict[str, float] = {}
    paths: list[Path] = []
    started = time.perf_counter()

    for image_type in config.image_types:
        tasks = {c: test_sets[(image_type, c)] for c in categories}
        test_cued = cued_set(list(tasks.values()), detectors.categories)

        def pooled(
            images: ImageSet, per_class: int, seed: int, image_type: str = image_type
        ) -> CuedSet:
            tasks = training_pool(images, categories, image_type, per_class, seed)
            return cued_set(list(tasks.values()), detectors.categories)

        pool = pooled(train, config.pool_per_class, config.seed)
        selection_tasks = training_pool(
            train, categories, image_type, config.select_per_class, config.seed + 1
        )

        def timed(name: str, seconds: float, image_type: str = image_type) -> None:
            timings[f"{image_type}/{name}"] = seconds

        # no attention
        baseline = {c: target_logits(network, detectors, tasks[c]) for c in categories}
        rows += _rows_for(baseline, tasks, image_type, "none")

        # FSGM with tuning and gradient values: (layer, β) chosen on the selection pool
        for method in ("tuning", "gradient"):
            step = time.perf_counter()
            for c in categories:
                chosen = _select_fsgm(
                    evaluator, source, FeatureGain(method), layers, betas, selection_tasks[c]
                )
                if chosen is None:
                    logits = baseline[c]
                else:
                    mods = chosen.modulations(source, tasks[c])
                    logits = target_logits(network, detectors, tasks[c], mods)
                for row in _rows_for({c: logits}, tasks, image_type, f"fsgm-{method}"):
                    row.update(
                        layer=chosen.setting.name if chosen else "",
                        beta=chosen.beta if chosen else 0.0,
                    )
                    rows.append(row)
            timed(f"fsgm-{method}", time.perf_counter() - step)

        # optimal gains at every layer, fitted on one part of the training split and kept
        # (early stopping, and the layer per category) by a validation set from the other part
        fit_images, validation_images = holdout_split(
            train, config.optimal_validation_fraction, config.seed
        )
        fit = pooled(fit_images, config.optimal_per_class, config.seed)
        validation = pooled(validation_images, config.optimal_validation_per_class, config.seed + 2)
        results = [
            optimise_gains(
                network,
                detectors,
                layer,
                fit,
                config.optimal_budget,
                config.optimal_l2,
                config.optimal_bounds,
                _options(config, folder / f"{image_type}_optimal_{layer.alias}.pt", progress, 5),
                validation=validation,
                patience=config.optimal_patience,
            )
            for layer in layers
        ]
        for c, k in zip(categories, cat_index, strict=True):
            choice = _optimal_choice(results, k)
            if choice is None:
                logits = baseline[c]
            else:
                mod = {choice.layer: Modulation(scale=choice.gains[k])}
                logits = target_logits(network, detectors, tasks[c], mod)
            kept = choice or results[0]  # no layer chosen: β = 0's scores (the same at every layer)
            for row in _rows_for({c: logits}, tasks, image_type, "fsgm-optimal"):
                row.update(
                    layer=choice.layer.alias if choice else "",
                    train_performance=float(
                        kept.train_performance[k] if choice else kept.baseline_train[k]
                    ),
                    validation_performance=float(
                        kept.validation_performance[k] if choice else kept.baseline_validation[k]
                    ),
                    optimal_step=int(kept.best_step[k]) if choice else 0,
                )
                rows.append(row)
        # training time from the checkpoints (every session), as for the trained mechanisms
        timed("fsgm-optimal", sum(r.log.seconds for r in results))
        optimal_gains = {r.layer.alias: r.gains[cat_index] for r in results}
        correlations.append(
            gain_value_correlations(optimal_gains, values, categories, image_type, layers).assign(
                image_type=image_type, gains="optimal"
            )
        )

        # covert spatial attention with a valid cue (arrays: there is a quadrant to cue)
        if image_type == "array":
            step = time.perf_counter()
            for c, k in zip(categories, cat_index, strict=True):
                select = selection_tasks[c]
                unattended = target_logits(network, detectors, select)
                base = detection_metrics(unattended, select.is_target)["performance"]
                chosen_spatial = _select_spatial(
                    evaluator, layers, betas, select, base, config.seed + 3, k
                )
                if chosen_spatial is None:
                    logits = baseline[c]
                else:
                    condition = _spatial_condition(*chosen_spatial, tasks[c], config.seed, k)
                    logits = evaluator.evaluate(tasks[c], [condition], source).logits[0]
                for row in _rows_for({c: logits}, tasks, image_type, "fsgm-spatial"):
                    row.update(
                        layer=chosen_spatial[0].name if chosen_spatial else "",
                        beta=chosen_spatial[1] if chosen_spatial else 0.0,
                    )
                    rows.append(row)
            timed("fsgm-spatial", time.perf_counter() - step)

        # dasNet-style feedback gains: trained by backprop, and by SNES as in dasNet
        for name, hidden, budget, trainer in (
            ("dasnet", 64, config.dasnet_budget, train_dasnet),
            (
                "dasnet-snes",
                config.dasnet_snes_hidden,
                config.dasnet_snes_budget,
                partial(
                    train_dasnet_snes,
                    population=config.dasnet_population,
                    sigma=config.dasnet_sigma,
                ),
            ),
        ):
            with _seeded(config.seed):
                policy = FeedbackPolicy(
                    detectors.n_features, [la.channels for la in dasnet_layers], k_all, hidden
                )
            log = trainer(
                network,
                detectors,
                policy,
                dasnet_layers,
                pool,
                budget,
                config.feedback_steps,
                config.seed,
                _options(config, folder / f"{image_type}_{name.replace('-', '_')}.pt", progress),
            )
            timed(name, log.seconds)
            feedback = partial(
                dasnet_pass,
                network,
                detectors,
                policy,
                dasnet_layers,
                feedback_steps=config.feedback_steps,
            )
            with torch.no_grad():
                parts = evaluate_in_batches(feedback, test_cued.images, test_cued.category)
            rows += _rows_for(torch.cat([p[0] for p in parts]), tasks, image_type, name, "all")
            gains = [torch.cat(per_layer) for per_layer in zip(*(p[1] for p in parts), strict=True)]
            learned = {
                la.alias: g[cat_index]
                for la, g in zip(
                    dasnet_layers, mean_gains(gains, test_cued.category, k_all), strict=True
                )
            }
            correlations.append(
                gain_value_correlations(
                    learned, values, categories, image_type, dasnet_layers
                ).assign(image_type=image_type, gains=name)
            )

        # soft spatial attention
        with _seeded(config.seed):
            attention = SoftSpatialAttention(soft_layer.channels, k_all)
        log = train_soft_spatial(
            network,
            detectors,
            attention,
            soft_layer,
            pool,
            config.soft_budget,
            config.seed,
            _options(config, folder / f"{image_type}_soft_spatial.pt", progress),
        )
        timed("soft-spatial", log.seconds)
        record: list[torch.Tensor] = []
        soft = partial(
            soft_spatial_logits, network, detectors, attention, soft_layer, record=record
        )
        logits = torch.cat(evaluate_in_batches(soft, test_cued.images, test_cued.category))
        weights = torch.cat(record)
        rows += _rows_for(logits, tasks, image_type, "soft-spatial", soft_layer.alias)
        shown = _examples(test_cued)
        cues = [f"cue: {test_cued.categories[int(c)]}" for c in test_cued.category[shown]]
        stem = figures / f"soft_attention_{image_type}"
        paths += plot_attention_maps(test_cued.images[shown], weights[shown], stem, cues)

        # hard spatial attention (RAM)
        with _seeded(config.seed):
            ram = RecurrentAttentionModel(train.images.shape[1], k_all, k_all, config.ram)
        ram_data: CuedSet | FreshTasks = pool
        if config.ram_fresh:  # new training stimuli every step: a fixed pool is memorised
            ram_data = FreshTasks(
                train,
                tuple(categories),
                image_type,
                tuple(detectors.categories),
                per_class=max(1, config.ram_budget.batch_size // 2),
                seed=config.seed,
            )
        log = train_ram(
            ram,
            ram_data,
            config.ram_budget,
            config.seed,
            _options(config, folder / f"{image_type}_ram.pt", progress),
        )
        timed("ram", log.seconds)
        logits = ram_detection_logits(ram, test_cued.images, test_cued.category)
        rows += _rows_for(logits, tasks, image_type, "ram")
        out = ram_outputs(ram, test_cued.images[shown], test_cued.category[shown])
        stem = figures / f"ram_glimpses_{image_type}"
        paths += plot_glimpses(test_cued.images[shown], out.locations, config.ram, stem, cues)

    clutter: dict[str, float] = {}
    if config.clutter_budget is not None:
        clutter, clutter_paths = _clutter_run(train, test, config, folder, figures, progress)
        paths += clutter_paths
        timings["clutter/ram"] = clutter["train_seconds"]
    timings["total"] = time.perf_counter() - started

    by_category = pd.DataFrame(rows)
    by_category.insert(0, "task", "category")
    summary = summarise(by_category, timings)
    corr = pd.concat(correlations, ignore_index=True) if correlations else pd.DataFrame()
    out_dir.mkdir(parents=True, exist_ok=True)
    by_category.to_csv(out_dir / "comparison_by_category.csv", index=False)
    summary.to_csv(out_dir / "comparison.csv", index=False)
    corr.to_csv(out_dir / "gain_correlations.csv", index=False)
    if "array" in config.image_types:
        overt_covert_table(summary).to_csv(out_dir / "overt_covert.csv", index=False)
        paths.append(out_dir / "overt_covert.csv")
    atomic_write_bytes(out_dir / "ram_clutter.json", json.dumps(clutter, indent=2).encode())
    paths += plot_comparison(summary, figures / "comparison")
    paths += [out_dir / n for n in ("comparison.csv", "comparison_by_category.csv")]
    write_run_config(
        out_dir,
        "mechanisms",
        {"comparison": config.to_dict()},
        model={"name": network.name, **(extra or {})},
        results={"ram_clutter": clutter},
        timings=timings,
    )
    return ComparisonResult(by_category, summary, corr, clutter, timings, paths)


def _examples(data: CuedSet, n: int = 6) -> torch.Tensor:
    """Indices of up to ``n`` positives of different cued categories (for figures)."""
    chosen: list[int] = []
    seen: set[int] = set()
    for i in torch.nonzero(data.is_target).squeeze(1).tolist():
        cue = int(data.category[i])
        if cue not in seen:
            chosen.append(i)
            seen.add(cue)
        if len(chosen) == n:
            break
    return torch.tensor(chosen, dtype=torch.int64)


def run_comparison(
    out_dir: str | Path,
    config: CompareConfig = CompareConfig(),
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> ComparisonResult:
    """The whole comparison on the default network and Fashion-MNIST (see the module docstring).

    Tuning and gradient values are computed as the replication computes them and kept in
    ``OUT_DIR/values.nc`` (reused when present and complete); ``config.json`` records the
    settings, budgets, timings (training seconds per mechanism, summed over resumed sessions)
    and versions.
    """

    out_dir = Path(out_dir)
    started = time.perf_counter()
    trained = load_default(data_dir=data_dir, progress=progress)
    train = load_fashion_mnist("train", data_dir)
    test = load_fashion_mnist("test", data_dir)
    values_path = out_dir / "values.nc"
    needed = [variable_name(m, t) for m in ("tuning", "gradient") for t in config.image_types]
    values = load_values(values_path, trained.network) if values_path.exists() else None
    if values is None or any(name not in values for name in needed):
        values = compute_values(
            trained.network,
            trained.detectors,
            train,
            config.image_types,
            seed=config.seed,
            progress=progress,
        )
        save_values(values, values_path)
    values_seconds = time.perf_counter() - started
    return compare_mechanisms(
        trained.network,
        trained.detectors,
        values,
        train,
        test,
        config,
        out_dir,
        progress,
        extra={
            "model_metrics": trained.metrics,
            "model_and_values_seconds": round(values_seconds, 1),
        },
    )
