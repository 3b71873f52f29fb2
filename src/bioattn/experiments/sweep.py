"""Sweeps: detection performance over layers × β × categories × methods × image types.

A *method* names a gain rule and the values it uses:

========================  ==============================================================
``tuning``/``gradient``   feature similarity gain ``max(0, 1 + β·v)`` (bidirectional)
``…-positive``            the same with negative values set to 0 (only enhancement)
``uniform``               every map scaled by ``max(0, 1 + β)`` (v = 1): a gain control
``shuffled-…``            values permuted across the maps of the layer (seeded): control
``response-…``            additive response gain ``β·v·B_l``, B_l the layer's mean activity
``spatial``               gain ``1 + β`` inside the task's cued quadrant, ``max(0, 1 − β)``
                          outside, on every map (needs task sets with a cued quadrant)
``spatial+…``             spatial and feature gain together, e.g. ``spatial+tuning``: the two
                          factors multiplied; suffix ``-additive`` adds them instead, as the
                          original code did (``g_feature + g_spatial − 1``, unclamped)
========================  ==============================================================

Each (category, layer, method, β) is one condition: the attended category's detector reads
the network's features for that category's test set (positives contain it, negatives never
do). With ``all_layers`` the rule is applied at every layer at once with strength β/10.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm.auto import tqdm

from bioattn.analysis.sdt import detection_metrics, detection_metrics_batch
from bioattn.attention.gains import Modulation, SpatialCue, feature_gain, response_gain_shift
from bioattn.attention.values import check_values_match, layer_scales, layer_values, variable_name
from bioattn.data.imageset import ImageSet, resolve_category
from bioattn.data.tasks import BUILT_IMAGE_TYPES, IMAGE_TYPES, TaskSet, make_task_set
from bioattn.errors import ConfigError, DataError
from bioattn.experiments.engine import SweepEngine, naive_condition_logits, target_logits
from bioattn.models.detectors import Detectors
from bioattn.models.network import LayerInfo, Network

#: Default attention strengths. Tuning values are z-scores (|v| up to √(K−1) = 3 for ten
#: categories) and gradient values lie in [−1, 1]; this grid spans both from gentle to strong.
DEFAULT_BETAS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
DEFAULT_METHODS = ("tuning", "gradient")
ALL_LAYERS = "all"

PERFORMANCE_COLUMNS = [
    "task",
    "image_type",
    "category",
    "layer",
    "layer_number",
    "method",
    "beta",
    "tp",
    "tn",
    "fp",
    "performance",
    "dprime",
    "criterion",
    "n_pos",
    "n_neg",
]


@dataclass(frozen=True)
class Method:
    """A parsed method name: which values, which rule, which control, which spatial cue."""

    name: str
    source: str | None  # "tuning", "gradient", "uniform", or None for spatial attention alone
    additive: bool = False
    positive_only: bool = False
    shuffled: bool = False
    spatial: bool = False
    spatial_additive: bool = False

    def needed_values(self, image_type: str) -> list[str]:
        """Variables of a values file this method reads on ``image_type`` images."""
        needed = (
            [] if self.source in (None, "uniform") else [variable_name(self.source, image_type)]
        )
        if self.additive:
            needed.append("mean_activity")
        return needed


_METHOD_HELP = (
    "valid: tuning, gradient, uniform, optionally prefixed 'response-' (additive) and/or "
    "'shuffled-', or suffixed '-positive' (e.g. shuffled-gradient, response-tuning, "
    "gradient-positive); spatial attention: 'spatial' alone or 'spatial+' one of those "
    "multiplicative feature methods, optionally suffixed '-additive' (e.g. spatial+gradient, "
    "spatial+tuning-additive)"
)


def parse_method(name: str) -> Method:
    """Parse a method name such as ``gradient``, ``shuffled-tuning`` or ``spatial+tuning``."""
    spatial = spatial_additive = False
    feature = name
    if name == "spatial" or name.startswith("spatial+") or name.startswith("spatial-"):
        spatial = True
        feature = name.removeprefix("spatial")
        if feature.endswith("additive"):
            spatial_additive, feature = True, feature.removesuffix("additive").removesuffix("-")
        if not feature:
            return Method(name, None, spatial=True, spatial_additive=spatial_additive)
        feature = feature.removeprefix("+")
    parts = feature.split("-")
    additive = shuffled = positive_only = False
    if parts and parts[0] == "response":
        additive, parts = True, parts[1:]
    if parts and parts[0] == "shuffled":
        shuffled, parts = True, parts[1:]
    if parts and parts[-1] == "positive":
        positive_only, parts = True, parts[:-1]
    if len(parts) == 1 and parts[0] in ("tuning", "gradient", "uniform"):
        if parts[0] == "uniform" and (shuffled or positive_only):
            raise ConfigError(f"method {name!r}: uniform gain cannot be shuffled or positive-only")
        if spatial and additive:
            raise ConfigError(
                f"method {name!r}: a spatial cue combines with a feature gain, not with an "
                "additive response gain; " + _METHOD_HELP
            )
        return Method(name, parts[0], additive, positive_only, shuffled, spatial, spatial_additive)
    raise ConfigError(f"unknown method {name!r}; " + _METHOD_HELP)


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
    methods: list[Method]
    notes: list[str] = field(default_factory=list)


def resolve_sweep(
    config: SweepConfig,
    network: Network,
    detectors: Detectors,
    values: xr.Dataset,
    tasks: Mapping[tuple[str, str], TaskSet] | None = None,
) -> ResolvedSweep:
    """Check every name and setting before any long work; add β = 0 when it is missing.

    With prebuilt ``tasks`` (keyed by (image type, category)) the image types may also be
    those built elsewhere (e.g. ``gratings``), and every (image type, category) of the sweep
    must have its task set; spatial methods need each set's cued quadrant.
    """
    notes: list[str] = []
    betas = tuple(sorted({float(b) for b in config.betas}))
    if not betas:
        raise ConfigError("the β grid is empty; give at least one β, e.g. 0,0.5,1,2")
    if any(not np.isfinite(b) for b in betas):
        raise ConfigError(f"β values must be finite numbers, got {config.betas}")
    if 0.0 not in betas:
        betas = (0.0, *betas)
        notes.append("β = 0 was missing from the grid and has been added (it is the baseline)")
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
    categories = (
        list(detectors.categories)
        if config.categories is None
        else [
            detectors.categories[resolve_category(c, detectors.categories)]
            for c in config.categories
        ]
    )
    layers = network.resolve_layers(config.layers)
    if not layers and not config.all_layers:
        raise ConfigError("no layers to attend: give layers or enable all-layers mode")
    methods = [parse_method(m) for m in config.methods]
    if not methods:
        raise ConfigError("no methods given; e.g. tuning,gradient")
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
    if tasks is not None:
        _check_tasks(tasks, config.image_types, categories, methods)
    elif any(m.spatial for m in methods):
        raise ConfigError(
            "spatial methods need task sets with a cued quadrant (e.g. the orientation task, "
            "`bioattn orientation`); pass them as tasks"
        )
    config = replace(config, betas=betas)
    return ResolvedSweep(config, categories, layers, methods, notes)


def _check_tasks(
    tasks: Mapping[tuple[str, str], TaskSet],
    image_types: Sequence[str],
    categories: Sequence[str],
    methods: Sequence[Method],
) -> None:
    missing = [(t, c) for t in image_types for c in categories if (t, c) not in tasks]
    if missing:
        raise ConfigError(
            f"no task set for {missing[:4]}{' …' if len(missing) > 4 else ''}; the task sets "
            f"given cover {sorted(tasks)[:8]}"
        )
    uncued = [key for key in tasks if tasks[key].cued_quadrant is None]
    if uncued and any(m.spatial for m in methods):
        raise ConfigError(
            f"spatial methods need a cued quadrant, but the task sets {uncued[:4]} have none"
        )


def value_vector(
    values: xr.Dataset,
    method: Method,
    image_type: str,
    category: str,
    layer: LayerInfo,
    shuffle_seed: int = 1,
) -> torch.Tensor:
    """The (C,) values a method uses at one layer: ones for ``uniform``, else tuning or gradient
    values, permuted across maps for ``shuffled-…`` (seeded by layer and category) and clipped
    at 0 for ``…-positive``."""
    if method.source is None:
        raise ConfigError(f"method {method.name!r} uses no values")
    if method.source == "uniform":
        return torch.ones(layer.channels)
    v = layer_values(values, variable_name(method.source, image_type), category, layer)
    if method.shuffled:
        generator = torch.Generator().manual_seed(
            shuffle_seed * 1_000_003 + layer.number * 1009 + hash_name(category)
        )
        v = v[torch.randperm(v.numel(), generator=generator)]
    if method.positive_only:
        v = torch.clamp(v, min=0.0)
    return v


class ValueSource:
    """Per-layer modulations of a sweep's methods, from one values file and the sweep's seeds."""

    def __init__(self, values: xr.Dataset, config: SweepConfig) -> None:
        self.values = values
        self.config = config
        self.scales = layer_scales(values) if "mean_activity" in values else {}

    def vector(
        self, method: Method, image_type: str, category: str, layer: LayerInfo
    ) -> torch.Tensor:
        """See :func:`value_vector`."""
        return value_vector(
            self.values, method, image_type, category, layer, self.config.shuffle_seed
        )

    def modulation(
        self,
        method: Method,
        image_type: str,
        category: str,
        layer: LayerInfo,
        beta: float,
        cued_quadrant: int | None = None,
    ) -> Modulation:
        """The method's modulation of ``layer`` at strength ``beta`` (spatial: on the cue)."""
        cue = None
        if method.spatial:
            if cued_quadrant is None:
                raise ConfigError(f"method {method.name!r} needs a cued quadrant")
            cue = SpatialCue(int(cued_quadrant), beta, additive=method.spatial_additive)
        if method.source is None:
            return Modulation(spatial=cue)
        v = self.vector(method, image_type, category, layer)
        if method.additive:
            shift = response_gain_shift(v, beta, self.scales[layer.alias], method.positive_only)
            return Modulation(shift=shift)
        return Modulation(scale=feature_gain(v, beta, method.positive_only), spatial=cue)


def hash_name(name: str) -> int:
    """A small deterministic integer for a name (Python's hash() is salted per process)."""
    return sum((i + 1) * ord(ch) for i, ch in enumerate(name)) % 100_003


def build_test_sets(
    source: ImageSet, categories: Sequence[str], config: SweepConfig
) -> dict[tuple[str, str], TaskSet]:
    """Test task sets per (image type, category), from ``source`` (which must not be training).

    Each set's seed depends on the category's place in ``source.categories``, not in
    ``categories``, so a sweep over some categories sees the same images as a sweep over all.
    """
    if source.split == "train":
        raise DataError(
            "test task sets must not be built from training images; pass the test split"
        )
    sets = {}
    for image_type in config.image_types:
        for category in categories:
            k = resolve_category(category, source.categories)
            sets[(image_type, category)] = make_task_set(
                source,
                category,
                image_type,
                n_pos=config.n_pos,
                n_neg=config.n_neg,
                seed=config.seed * 7919 + k,
                snr=config.snr,
            )
    return sets


#: How :func:`run_sweep` evaluates conditions.
ENGINES = ("batched", "naive")


def run_sweep(
    network: Network,
    detectors: Detectors,
    values: xr.Dataset,
    test_images: ImageSet | None,
    config: SweepConfig = SweepConfig(),
    progress: bool = True,
    engine: str | SweepEngine = "batched",
    tasks: Mapping[tuple[str, str], TaskSet] | None = None,
) -> pd.DataFrame:
    """Run the sweep and return the long-form performance table (see ``PERFORMANCE_COLUMNS``).

    β = 0 is evaluated once per (image type, category) and its row repeated for every
    (layer, method), since with β = 0 every rule leaves the network unchanged.

    ``engine`` chooses how the other conditions are evaluated: ``"batched"`` (default) uses a
    :class:`~bioattn.experiments.engine.SweepEngine` (the network before the attended layer runs
    once per image set and layer; conditions run batched through the rest), ``"naive"`` runs
    the whole network once per condition. Both give the same table (logits agree to float32
    rounding). A configured ``SweepEngine`` may be passed instead (e.g. another memory budget).

    ``tasks`` gives prebuilt test task sets keyed by (image type, category) (e.g. the orientation
    task's two-grating images); ``test_images`` is then not used and may be ``None``.
    """
    if isinstance(engine, str) and engine not in ENGINES:
        raise ConfigError(f"unknown sweep engine {engine!r}; valid: {', '.join(ENGINES)}")
    if isinstance(engine, SweepEngine) and (
        engine.network is not network or engine.detectors is not detectors
    ):
        raise ConfigError("the SweepEngine passed to run_sweep was built for another model")
    resolved = resolve_sweep(config, network, detectors, values, tasks)
    for note in resolved.notes:
        warnings.warn(note, stacklevel=2)
    config = resolved.config
    if tasks is None:
        if test_images is None:
            raise ConfigError("run_sweep needs test images or prebuilt task sets (tasks=)")
        tasks = build_test_sets(test_images, resolved.categories, config)
    else:
        tasks = {(t, c): tasks[(t, c)] for t in config.image_types for c in resolved.categories}
    source = ValueSource(values, config)
    if engine == "batched":
        engine = SweepEngine(network, detectors, batch_size=config.batch_size)

    def condition_logits(
        task: TaskSet, conditions: list[dict[LayerInfo, Modulation]]
    ) -> torch.Tensor:
        if isinstance(engine, SweepEngine):
            return engine.condition_logits(task, conditions)
        return naive_condition_logits(network, detectors, task, conditions, config.batch_size)

    layer_settings: list[tuple[str, int, list[LayerInfo], float]] = [
        (layer.alias, layer.number, [layer], 1.0) for layer in resolved.layers
    ]
    if config.all_layers:
        layer_settings.append((ALL_LAYERS, 0, list(network.layers), 0.1))
    nonzero = [b for b in config.betas if b != 0.0]
    total = len(tasks) * (1 + len(layer_settings) * len(resolved.methods) * len(nonzero))
    bar = tqdm(total=total, desc=f"sweep ({config.task})", disable=not progress)
    rows = []
    with network.autocast():  # half precision when the network asks for it
        for (image_type, category), task in tasks.items():
            base = {"task": config.task, "image_type": image_type, "category": category}
            is_target = task.is_target
            baseline_logits = (
                engine.baseline_logits(task)
                if isinstance(engine, SweepEngine)
                else target_logits(network, detectors, task, batch_size=config.batch_size)
            )
            baseline = detection_metrics(baseline_logits, is_target)
            bar.update(1)
            for alias, number, layers, factor in layer_settings:
                # Every (method, β ≠ 0) of this layer setting, evaluated together.
                keys = [(method, beta) for method in resolved.methods for beta in nonzero]
                conditions = [
                    {
                        layer: source.modulation(
                            method, image_type, category, layer, beta * factor, task.cued_quadrant
                        )
                        for layer in layers
                    }
                    for method, beta in keys
                ]
                metrics = (
                    detection_metrics_batch(condition_logits(task, conditions), is_target)
                    if conditions
                    else {}
                )
                by_key = {
                    key: {name: column[i].item() for name, column in metrics.items()}
                    for i, key in enumerate(keys)
                }
                for method in resolved.methods:
                    common = {**base, "layer": alias, "layer_number": number, "method": method.name}
                    rows.append({**common, "beta": 0.0, **baseline})
                    rows.extend(
                        {**common, "beta": beta, **by_key[(method, beta)]} for beta in nonzero
                    )
                bar.update(len(keys))
    bar.close()
    return pd.DataFrame(rows, columns=PERFORMANCE_COLUMNS)
