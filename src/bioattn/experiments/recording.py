"""Recording feature-map activity with and without feature attention, streamed to disk.

A *recording* runs stimulus sets through the network once unattended (the baseline) and once per
attention condition, and keeps the post-ReLU activity of every recorded feature map, averaged
over space (optionally also per quadrant of 2×2 images, and the full maps of chosen layers).
What :mod:`bioattn.analysis.neural` needs to ask whether the network's activity looks like the
monkey's (Lindsay & Miller 2018, "Attention's effects on neural activity").

**Conditions.** For every *attended category* c (one stimulus set per category):

* the unattended **baseline** on c's task set (positives contain c, negatives never do);
* **reference** rows: standard (single) images of c, unattended, for the vector-angle analysis;
* one **attended** condition per attended layer × method × β on the same task images: feature
  attention to c with the sweeps' gain rules (:mod:`bioattn.attention.rules`; ``tuning`` and
  ``gradient`` are the bidirectional FSGM ``max(0, 1 + β·v)``); the all-layers mode
  (``all_layers``) applies it at every layer at strength β/10, as sweeps do.

Conditions run through the one run loop (:func:`bioattn.experiments.run.run`) with a
:class:`RecordingSink`; the evaluator (by default the batched engine) reads the recorded layers
through a :class:`~bioattn.experiments.evaluate.Probe`.

The category axis is generic: :func:`record_tasks` accepts any task sets keyed by the name of
their target (categories today, orientations when such task sets exist).

**File format** (netCDF4/HDF5 written with h5netcdf, read with xarray). One row per image per
condition along the unlimited dimension ``stimulus``; the rows of a condition are contiguous.

================================  =====================================================
``activity``                      (stimulus, unit) float32: spatially averaged activity
``quadrant_activity``             (stimulus, unit, quadrant): mean over each quadrant of
                                  the map (2×2 array images only; NaN on reference rows)
``maps_<alias>``                  (stimulus, <alias>_channel, <alias>_y, <alias>_x): full
                                  maps of the layers in ``full_maps`` (NaN where the
                                  reference images' maps have another size)
``target_logit``                  (stimulus,): logit of the task category's detector
                                  (only when detectors are given)
``tuning``                        (category, unit): tuning values of the recorded maps
================================  =====================================================

Every variable and coordinate carries CF ``units`` and ``long_name``, the file the CF-1.8
global attributes (:mod:`bioattn.netcdf`); the global ``layers`` and ``layer_modules`` (string
lists) name the recorded layers. Per-unit coordinates ``layer`` (alias) and ``channel``
(Brain-Score's convention). Per-row
coordinates: ``condition`` (integer id), ``role`` (``task`` or ``reference``),
``task_category`` (whose stimulus set the image belongs to), ``image`` (index in that set),
``is_target`` (positive image), ``target_quadrant`` (0–3 for array positives, −1 otherwise),
and the condition: ``attended_category``, ``attended_layer`` (an alias or ``all``),
``method`` (value type and rule, as in sweeps) and ``beta``. Unattended rows have
``attended_category``, ``attended_layer`` and ``method`` equal to ``"none"`` and β = 0.

**Memory and disk.** Activity is reduced inside the forward hooks, and rows are appended to
the file whenever :data:`WRITE_BUFFER_BYTES` (8 MiB) of them are queued (and at the end), so
memory holds one batch plus that buffer, whatever the number of conditions; task sets are
built one category at a time. The size is estimated before anything runs
(:func:`estimate_recording_bytes`) and the recording is refused when it would not fit in the
free disk space. The file is written under a temporary name and renamed when complete, so an
interrupted recording never looks finished.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5netcdf
import h5py
import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from bioattn import __version__
from bioattn.analysis.neural import (
    RECORDING_FORMAT,
    ROLE_REFERENCE,
    ROLE_TASK,
    ROW_COORDS,
    UNATTENDED,
)
from bioattn.attention.rules import ALL_LAYERS_FACTOR, GainRule, ValueSource, parse_rules
from bioattn.attention.values import check_values_match
from bioattn.data.composites import QUADRANTS
from bioattn.data.imageset import ImageSet, resolve_categories
from bioattn.data.tasks import IMAGE_TYPES, TaskSet, make_task_set
from bioattn.errors import ConfigError, DataError
from bioattn.experiments.evaluate import (
    Evaluator,
    ModulationEvaluator,
    Outputs,
    Probe,
    make_evaluator,
)
from bioattn.experiments.grid import (
    REFERENCE_STREAM,
    Condition,
    Grid,
    LayerSetting,
    layer_settings,
    task_seed,
)
from bioattn.experiments.run import LazyTasks, run
from bioattn.logs import progress_bar
from bioattn.models.detectors import Detectors
from bioattn.models.hooks import capture_activity
from bioattn.models.network import LayerInfo, Network
from bioattn.netcdf import annotate_file, layer_attrs

_STRING_ROWS = ("role", "task_category", "attended_category", "attended_layer", "method")
_ROW_DTYPES = {"condition": "i4", "image": "i4", "is_target": "i1", "target_quadrant": "i1"}
#: Bytes per row besides the float32 data: numeric coordinates plus five variable-length
#: strings in the HDF5 global heap (measured at about 150 B; rounded up).
ROW_OVERHEAD_BYTES = 256
#: Fixed bytes of a file besides its rows (HDF5 metadata, attributes, small variables).
FILE_OVERHEAD_BYTES = 1 << 20
#: Rows are written to the file once this many bytes of them are queued (bounds memory).
WRITE_BUFFER_BYTES = 8 << 20
#: The recording is refused when its estimate times this factor exceeds the free space.
DISK_MARGIN = 1.05
#: ``title`` attribute of recording files.
RECORDING_TITLE = "bioattn recording of feature-map activity with and without feature attention"


@dataclass(frozen=True)
class RecordingConfig:
    """What to record. ``None`` for categories, attended or recorded layers means all of them.

    Attributes:
        categories: attended categories; each gets its own task set and baseline.
        attend_layers: layers attention is applied at, one condition each.
        all_layers: also record the all-layers mode (every layer at β/10), ``attended_layer``
            ``"all"``.
        betas: attention strengths; β = 0 is the baseline, which is always recorded, and is
            dropped from the list.
        methods: value types and rules, as sweeps name them (``tuning``, ``gradient``,
            ``uniform``, ``shuffled-…``, ``…-positive``, ``response-…``).
        image_type: task images: ``standard``, ``merged``, ``array`` or ``noise``.
        record_layers: layers whose map means are recorded.
        full_maps: layers whose full maps are recorded too (large: use for a few layers).
        n_pos, n_neg: positives and negatives per task set.
        n_reference: standard images of the attended category recorded unattended (0: none).
        seed: seed of the stimulus sets (category k uses ``seed * 7919 + k``, k its index
            among all categories, so an all-category recording sees the sweeps' test sets).
        snr: SNR for noise images.
        batch_size: images per forward pass (and per chunk written).
        shuffle_seed: seed of the shuffled-values controls (as in sweeps).
    """

    categories: tuple[str, ...] | None = None
    attend_layers: tuple[str, ...] | None = None
    all_layers: bool = False
    betas: tuple[float, ...] = (0.5,)
    methods: tuple[str, ...] = ("tuning",)
    image_type: str = "merged"
    record_layers: tuple[str, ...] | None = None
    full_maps: tuple[str, ...] = ()
    n_pos: int = 75
    n_neg: int = 75
    n_reference: int = 75
    seed: int = 0
    snr: float | None = None
    batch_size: int = 128
    shuffle_seed: int = 1

    def to_dict(self) -> dict:
        """Plain-dict form, stored in the recording's attributes."""
        return asdict(self)


@dataclass
class RecordingPlan:
    """A validated recording: every name resolved, sizes known, nothing run yet."""

    config: RecordingConfig
    categories: list[str]  # attended categories, in the values' order
    category_index: dict[str, int]  # index of each among all categories of the values
    settings: list[LayerSetting]
    methods: list[GainRule]
    betas: list[float]
    record_layers: list[LayerInfo]
    full_map_layers: list[LayerInfo]
    quadrants: bool
    n_task: dict[str, int]  # task images per category
    n_reference: dict[str, int]  # reference images per category
    n_value_categories: int = 0  # categories of the values (rows of the tuning table)
    map_shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # task images
    reference_map_shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        """Recorded maps (length of the ``unit`` dimension)."""
        return sum(layer.channels for layer in self.record_layers)

    @property
    def n_attended(self) -> int:
        """Attended conditions per category."""
        return len(self.settings) * len(self.methods) * len(self.betas)

    @property
    def n_rows(self) -> int:
        """Rows the file will hold (images × conditions, plus reference images)."""
        return sum(
            self.n_task[c] * (1 + self.n_attended) + self.n_reference[c] for c in self.categories
        )


def _validate_betas(betas: Sequence[float]) -> list[float]:
    try:
        values = sorted({float(b) for b in betas})
    except (TypeError, ValueError):
        raise ConfigError(f"β values must be numbers, got {betas!r}") from None
    if any(not math.isfinite(b) for b in values):
        raise ConfigError(f"β values must be finite numbers, got {list(betas)}")
    nonzero = [b for b in values if b != 0.0]
    if not nonzero:
        raise ConfigError(
            "no attention strength to record: give at least one non-zero β (e.g. 0.5); "
            "the unattended baseline (β = 0) is always recorded"
        )
    return nonzero


def _check_methods(
    methods: Sequence[str | GainRule], values: xr.Dataset, image_type: str
) -> list[GainRule]:
    parsed = parse_rules(list(methods))
    for method in parsed:
        if method.spatial:
            raise ConfigError(
                f"method {method.name!r}: recordings take feature attention only (tuning, "
                "gradient, uniform and their variants); spatial cues need a cued task"
            )
        missing = [v for v in method.needed_values(image_type) if v not in values]
        if missing:
            raise ConfigError(
                f"method {method.name!r} on {image_type} images needs values {missing}, which "
                f"the values file lacks (it has {', '.join(map(str, values.data_vars))}); "
                f"compute them with `bioattn values --image-types {image_type}`"
            )
    return parsed


def plan_recording(
    network: Network,
    values: xr.Dataset,
    config: RecordingConfig,
    task_sizes: Mapping[str, int],
    reference_sizes: Mapping[str, int],
    task_image_shape: tuple[int, int, int],
    reference_image_shape: tuple[int, int, int] | None,
) -> RecordingPlan:
    """Validate ``config`` against the network and values and work out every size.

    ``task_sizes`` and ``reference_sizes`` give the number of task and reference images per
    attended category; the image shapes are (C, H, W) of one task and one reference image
    (used to find the size of each recorded layer's maps). Raises :class:`LayerError` for an
    unknown layer, :class:`CategoryError` for an unknown category and :class:`ConfigError` for
    bad settings, before anything runs.
    """
    check_values_match(values, network)
    if "tuning" not in values:
        raise ConfigError(
            "the values file has no tuning values, which the neural analyses rank maps by; "
            "compute values with `bioattn values`"
        )
    for name in ("n_pos", "n_neg", "batch_size"):
        if int(getattr(config, name)) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.n_reference < 0:
        raise ConfigError(f"n_reference must be 0 or more, got {config.n_reference}")
    all_categories = [str(c) for c in values["category"].values]
    names = list(task_sizes) if config.categories is None else list(config.categories)
    if not names:
        raise ConfigError("no categories to attend; give at least one")
    categories = sorted(resolve_categories(names, all_categories), key=all_categories.index)
    betas = _validate_betas(config.betas)
    methods = _check_methods(config.methods, values, config.image_type)
    settings = layer_settings(network, config.attend_layers, config.all_layers)
    record_layers = network.resolve_layers(config.record_layers)
    if not record_layers:
        raise ConfigError("no layers to record; give at least one (or all)")
    record_layers = sorted(dict.fromkeys(record_layers), key=lambda la: la.number)
    full = sorted(
        dict.fromkeys(network.resolve_layer(s) for s in config.full_maps),
        key=lambda la: la.number,
    )
    missing = [c for c in categories if c not in task_sizes]
    if missing:
        raise DataError(f"no task set for attended categories {missing}")
    plan = RecordingPlan(
        config=config,
        categories=categories,
        category_index={c: all_categories.index(c) for c in categories},
        settings=settings,
        methods=methods,
        betas=betas,
        record_layers=record_layers,
        full_map_layers=full,
        quadrants=config.image_type == "array",
        n_task={c: int(task_sizes[c]) for c in categories},
        n_reference={c: int(reference_sizes.get(c, 0)) for c in categories},
        n_value_categories=len(all_categories),
    )
    hooked = list(dict.fromkeys([*record_layers, *full]))
    plan.map_shapes = map_shapes(network, hooked, task_image_shape)
    if reference_image_shape is not None and any(plan.n_reference.values()):
        plan.reference_map_shapes = map_shapes(network, hooked, reference_image_shape)
    return plan


def map_shapes(
    network: Network, layers: Sequence[LayerInfo], image_shape: tuple[int, int, int]
) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of each layer's maps for one image of ``image_shape`` (one forward pass)."""
    with torch.no_grad(), capture_activity(network, layers) as store:
        network(network.preprocess(torch.zeros(1, *image_shape)))
    return {alias: tuple(int(s) for s in out.shape[1:]) for alias, out in store.items()}


def estimate_recording_bytes(plan: RecordingPlan) -> int:
    """Upper estimate of the recording's file size in bytes.

    Per row: float32 map means (and quadrant means for arrays), the full maps of the chosen
    layers (task rows only; reference rows of another size leave those chunks unwritten),
    :data:`ROW_OVERHEAD_BYTES` for the coordinates; plus the tuning table and
    :data:`FILE_OVERHEAD_BYTES`.
    """
    units = plan.n_units
    per_row = 4 * units + 4 + ROW_OVERHEAD_BYTES  # activity, target logit, coordinates
    if plan.quadrants:
        per_row += 4 * units * len(QUADRANTS)
    maps = sum(4 * math.prod(plan.map_shapes[la.alias]) for la in plan.full_map_layers)
    reference_maps = sum(
        4 * math.prod(plan.map_shapes[la.alias])
        for la in plan.full_map_layers
        if plan.reference_map_shapes.get(la.alias) == plan.map_shapes[la.alias]
    )
    task_rows = sum(plan.n_task[c] * (1 + plan.n_attended) for c in plan.categories)
    reference_rows = sum(plan.n_reference[c] for c in plan.categories)
    return (
        plan.n_rows * per_row
        + task_rows * maps
        + reference_rows * reference_maps
        + 4 * units * max(plan.n_value_categories, 1)
        + FILE_OVERHEAD_BYTES
    )


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def check_disk_space(plan: RecordingPlan, out: Path) -> int:
    """Raise :class:`DataError` unless the estimated recording fits in the free space at ``out``.

    Returns the estimate in bytes. The estimate times :data:`DISK_MARGIN` must not exceed the
    free space of the file system holding ``out``'s folder.
    """
    needed = estimate_recording_bytes(plan)
    folder = out.parent
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed * DISK_MARGIN > free:
        full = ", ".join(la.alias for la in plan.full_map_layers) or "none"
        raise DataError(
            f"the recording would need about {_format_bytes(needed)} ({plan.n_rows} rows × "
            f"{plan.n_units} maps; full maps of: {full}) but only {_format_bytes(free)} is free "
            f"on {probe}; record fewer full-map layers, conditions or images, or write the "
            "recording to a disk with more space"
        )
    return needed


class _Writer:
    """Appends rows to a recording file with an unlimited ``stimulus`` dimension."""

    def __init__(
        self,
        path: Path,
        plan: RecordingPlan,
        tuning: np.ndarray,
        categories: Sequence[str],
        logits: bool,
        attrs: Mapping[str, object],
    ) -> None:
        self.path = path
        self.plan = plan
        units = plan.n_units
        self.rows = 0
        self.pending: list[tuple] = []
        self.pending_kind: tuple = ()
        self.pending_bytes = 0
        self.file = h5netcdf.File(path, "w")
        f = self.file
        f.dimensions["stimulus"] = None
        f.dimensions["unit"] = units
        f.dimensions["category"] = len(categories)
        text = h5py.string_dtype()
        chunk = max(1, min(256, (1 << 20) // (4 * units * (4 if plan.quadrants else 1))))
        f.create_variable("unit", ("unit",), "i8", data=np.arange(units))
        layer_names = [la.alias for la in plan.record_layers for _ in range(la.channels)]
        channels = [k for la in plan.record_layers for k in range(la.channels)]
        f.create_variable("layer", ("unit",), text, data=np.array(layer_names, dtype=object))
        f.create_variable("channel", ("unit",), "i8", data=np.array(channels, dtype=np.int64))
        f.create_variable(
            "category", ("category",), text, data=np.array(list(categories), dtype=object)
        )
        tuning_var = f.create_variable(
            "tuning", ("category", "unit"), "f4", data=tuning.astype(np.float32)
        )
        tuning_var.attrs["coordinates"] = "layer channel"
        tuning_var.attrs["description"] = "tuning values (z-scored mean activity) of the maps"
        self.coords: dict[str, h5netcdf.Variable] = {}
        for name in ROW_COORDS:
            dtype = text if name in _STRING_ROWS else _ROW_DTYPES.get(name, "f8")
            var = f.create_variable(name, ("stimulus",), dtype, chunks=(chunk,))
            if name == "is_target":
                var.attrs["dtype"] = "bool"  # xarray decodes it as bool
            self.coords[name] = var
        row_coords = " ".join(ROW_COORDS)
        self.activity = f.create_variable(
            "activity", ("stimulus", "unit"), "f4", chunks=(chunk, units), fillvalue=np.nan
        )
        self.activity.attrs["coordinates"] = f"{row_coords} layer channel"
        self.activity.attrs["description"] = "spatially averaged post-ReLU activity"
        self.quadrant = None
        if plan.quadrants:
            f.dimensions["quadrant"] = len(QUADRANTS)
            f.create_variable(
                "quadrant", ("quadrant",), text, data=np.array(QUADRANTS, dtype=object)
            )
            self.quadrant = f.create_variable(
                "quadrant_activity",
                ("stimulus", "unit", "quadrant"),
                "f4",
                chunks=(chunk, units, len(QUADRANTS)),
                fillvalue=np.nan,
            )
            self.quadrant.attrs["coordinates"] = f"{row_coords} layer channel"
            self.quadrant.attrs["description"] = "activity averaged over each quadrant of a map"
        self.maps: dict[str, h5netcdf.Variable] = {}
        for layer in plan.full_map_layers:
            c, h, w = plan.map_shapes[layer.alias]
            dims = (f"{layer.alias}_channel", f"{layer.alias}_y", f"{layer.alias}_x")
            for dim, size in zip(dims, (c, h, w), strict=True):
                f.dimensions[dim] = size
            var = f.create_variable(
                f"maps_{layer.alias}",
                ("stimulus", *dims),
                "f4",
                chunks=(1, c, h, w),
                fillvalue=np.nan,
            )
            var.attrs["coordinates"] = row_coords
            var.attrs["description"] = f"full post-ReLU maps of {layer.alias}"
            self.maps[layer.alias] = var
        self.logit = None
        if logits:
            self.logit = f.create_variable(
                "target_logit", ("stimulus",), "f4", chunks=(chunk,), fillvalue=np.nan
            )
            self.logit.attrs["coordinates"] = row_coords
            self.logit.attrs["description"] = "logit of the task category's detector"
        for key, value in attrs.items():
            f.attrs[key] = value
        # every variable exists now: give each its units and long name (CF)
        annotate_file(f, RECORDING_TITLE, "bioattn.experiments.recording.record")

    def append(
        self,
        coords: Mapping[str, np.ndarray],
        activity: np.ndarray,
        quadrant: np.ndarray | None,
        maps: Mapping[str, np.ndarray],
        logits: np.ndarray | None,
    ) -> None:
        """Queue one batch of rows; written once :data:`WRITE_BUFFER_BYTES` are queued.

        Batches are buffered only with batches of the same kind (with or without quadrant
        means, full maps of the file's size, logits), so that rows without them leave their
        chunks unwritten (read as NaN) instead of storing NaNs.
        """
        maps = {
            alias: array
            for alias, array in maps.items()
            if alias in self.maps and array.shape[1:] == self.maps[alias].shape[1:]
        }
        kind = (quadrant is not None, tuple(sorted(maps)), logits is not None)
        if self.pending and kind != self.pending_kind:
            self.flush()
        self.pending_kind = kind
        self.pending.append((dict(coords), activity, quadrant, maps, logits))
        self.pending_bytes += activity.nbytes + sum(a.nbytes for a in maps.values())
        if quadrant is not None:
            self.pending_bytes += quadrant.nbytes
        if self.pending_bytes >= WRITE_BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows to the file."""
        if not self.pending:
            return
        pieces, self.pending, self.pending_bytes = self.pending, [], 0
        n = sum(piece[1].shape[0] for piece in pieces)
        start, stop = self.rows, self.rows + n
        self.file.resize_dimension("stimulus", stop)
        for name, var in self.coords.items():
            value = np.concatenate([np.asarray(piece[0][name]) for piece in pieces])
            var[start:stop] = value.astype(object) if name in _STRING_ROWS else value
        self.activity[start:stop] = np.concatenate([piece[1] for piece in pieces])
        has_quadrant, aliases, has_logits = self.pending_kind
        if self.quadrant is not None and has_quadrant:
            self.quadrant[start:stop] = np.concatenate([piece[2] for piece in pieces])
        for alias in aliases:
            self.maps[alias][start:stop] = np.concatenate([piece[3][alias] for piece in pieces])
        if self.logit is not None and has_logits:
            self.logit[start:stop] = np.concatenate([piece[4] for piece in pieces])
        self.rows = stop

    def close(self) -> None:
        """Write what is queued and close the file."""
        try:
            self.flush()
        finally:
            self.file.close()

    def abort(self) -> None:
        """Close the file without writing what is queued (after an error)."""
        self.pending = []
        self.file.close()


def _attrs(
    network: Network,
    plan: RecordingPlan,
    split: str,
    extra: Mapping[str, object],
) -> dict[str, object]:
    config = plan.config
    return {
        "format": RECORDING_FORMAT,
        "model": network.name,
        "bioattn_version": __version__,
        "image_type": config.image_type,
        "source_split": split,
        **layer_attrs(plan.record_layers),
        "network_layers": json.dumps([la.alias for la in network.layers]),
        "attended_categories": json.dumps(plan.categories),
        "attend_layers": json.dumps([s.name for s in plan.settings]),
        "methods": json.dumps([m.name for m in plan.methods]),
        "betas": json.dumps(plan.betas),
        "full_maps": json.dumps([la.alias for la in plan.full_map_layers]),
        "all_layers_factor": ALL_LAYERS_FACTOR,
        "config": json.dumps(config.to_dict()),
        **extra,
    }


def _row_coords(
    n: int,
    start_image: int,
    condition: int,
    role: str,
    task_category: str,
    is_target: np.ndarray,
    target_quadrant: np.ndarray,
    attended_category: str,
    attended_layer: str,
    method: str,
    beta: float,
) -> dict[str, np.ndarray]:
    return {
        "condition": np.full(n, condition, dtype=np.int32),
        "role": np.full(n, role, dtype=object),
        "task_category": np.full(n, task_category, dtype=object),
        "image": np.arange(start_image, start_image + n, dtype=np.int32),
        "is_target": is_target.astype(np.int8),
        "target_quadrant": target_quadrant.astype(np.int8),
        "attended_category": np.full(n, attended_category, dtype=object),
        "attended_layer": np.full(n, attended_layer, dtype=object),
        "method": np.full(n, method, dtype=object),
        "beta": np.full(n, beta, dtype=np.float64),
    }


def _target_quadrants(task: TaskSet) -> np.ndarray:
    if task.image_type != "array":
        return np.full(len(task), -1, dtype=np.int8)
    return task.target_quadrant.numpy().astype(np.int8)


class RecordingSink:
    """Writes a run's readings to a recording file, condition after condition.

    For each task (one per attended category): the unattended rows, then the category's
    reference images (unattended, read by the same evaluator without quadrant means), then one
    block of rows per attended condition. Condition ids count up in that order.
    """

    def __init__(
        self,
        writer: _Writer,
        plan: RecordingPlan,
        evaluator: Evaluator,
        reference_for: Callable[[str], torch.Tensor | None],
        logits: bool,
        bar: tqdm,
    ) -> None:
        self.writer = writer
        self.plan = plan
        self.evaluator = evaluator
        self.reference_for = reference_for
        self.logits = logits
        self.bar = bar
        self.condition = 0

    def _write(
        self,
        readings: Mapping[str, torch.Tensor],
        logits: torch.Tensor,
        meta: dict,
        is_target: np.ndarray,
        quadrants: np.ndarray,
    ) -> None:
        n = logits.shape[0]
        coords = _row_coords(
            n, 0, is_target=is_target, target_quadrant=quadrants, condition=self.condition, **meta
        )
        quadrant = readings.get("quadrant")
        self.writer.append(
            coords,
            readings["mean"].numpy(),
            None if quadrant is None else quadrant.numpy(),
            {
                k.removeprefix("maps_"): v.numpy()
                for k, v in readings.items()
                if k.startswith("maps_")
            },
            logits.numpy() if self.logits else None,
        )
        self.condition += 1
        self.bar.update(1)

    def baseline(self, key: Hashable, task: TaskSet, outputs: Outputs) -> None:
        category = str(key)
        meta = _unattended(category)
        is_target = task.is_target.numpy()
        self._write(outputs.row(0), outputs.logits[0], meta, is_target, _target_quadrants(task))
        reference = self.reference_for(category) if self.plan.n_reference[category] else None
        if reference is not None and reference.shape[0]:
            n = reference.shape[0]
            ref_task = TaskSet(
                reference,
                torch.ones(n, dtype=torch.bool),
                torch.full((n, 1), task.target, dtype=torch.int64),
                task.target,
                task.categories,
                "standard",
                task.split,
            )
            probe = Probe(self.plan.record_layers, False, self.plan.full_map_layers)
            out = self.evaluator.baseline(ref_task, probe)
            no_quadrant = np.full(n, -1, dtype=np.int8)
            meta = {**meta, "role": ROLE_REFERENCE}
            self._write(out.row(0), out.logits[0], meta, np.ones(n, dtype=bool), no_quadrant)

    def conditions(
        self,
        key: Hashable,
        task: TaskSet,
        setting: LayerSetting,
        conditions: Sequence[Condition],
        outputs: Outputs,
    ) -> None:
        category = str(key)
        is_target = task.is_target.numpy()
        quadrants = _target_quadrants(task)
        for i, condition in enumerate(conditions):
            meta = {
                **_unattended(category),
                "attended_category": category,
                "attended_layer": setting.name,
                "method": condition.arm.label,
                "beta": condition.beta,
            }
            self._write(outputs.row(i), outputs.logits[i], meta, is_target, quadrants)


def _unattended(category: str) -> dict[str, object]:
    return {
        "role": ROLE_TASK,
        "task_category": category,
        "attended_category": UNATTENDED,
        "attended_layer": UNATTENDED,
        "method": UNATTENDED,
        "beta": 0.0,
    }


def _record(
    network: Network,
    values: xr.Dataset,
    plan: RecordingPlan,
    task_for: Callable[[str], TaskSet],
    reference_for: Callable[[str], torch.Tensor | None],
    out: Path,
    detectors: Detectors | None,
    split: str,
    extra_attrs: Mapping[str, object],
    progress: bool,
    engine: str | Evaluator = "batched",
) -> Path:
    config = plan.config
    check_disk_space(plan, out)
    aliases = {la.alias for la in plan.record_layers}
    units = values["layer"].isin(list(aliases)).values
    tuning = np.asarray(values["tuning"].values[:, units], dtype=np.float32)
    categories = [str(c) for c in values["category"].values]
    if isinstance(engine, Evaluator):
        evaluator = engine
    elif detectors is None:  # no logits to compute: full passes read the activity
        evaluator = ModulationEvaluator(network, None, None, config.batch_size)
    else:
        evaluator = make_evaluator(network, detectors, engine, config.batch_size)
    grid = Grid.of(plan.settings, plan.methods, plan.betas)
    probe = Probe(tuple(plan.record_layers), plan.quadrants, tuple(plan.full_map_layers))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    writer = _Writer(
        partial,
        plan,
        tuning,
        categories,
        detectors is not None,
        _attrs(network, plan, split, extra_attrs),
    )
    total = sum(1 + plan.n_attended + (plan.n_reference[c] > 0) for c in plan.categories)
    bar = progress_bar(total=total, desc="recording", disable=not progress)
    sink = RecordingSink(writer, plan, evaluator, reference_for, detectors is not None, bar)
    try:
        run(
            LazyTasks(plan.categories, task_for),
            grid,
            evaluator,
            sink,
            ValueSource(values, config.shuffle_seed),
            probe=probe,
            progress=False,
        )
        writer.close()
        partial.replace(out)
    except BaseException:
        writer.abort()
        partial.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    return out


def _check_split(split: str) -> None:
    if split == "train":
        raise DataError(
            "recordings must not use training images (tuning values come from them); "
            "pass the test split"
        )


def record_tasks(
    network: Network,
    values: xr.Dataset,
    tasks: Mapping[str, TaskSet],
    out: str | Path,
    config: RecordingConfig = RecordingConfig(),
    *,
    references: Mapping[str, torch.Tensor] | None = None,
    detectors: Detectors | None = None,
    progress: bool = True,
    engine: str | Evaluator = "batched",
) -> Path:
    """Record the conditions of ``config`` on given task sets, keyed by their target's name.

    ``tasks`` must all be of ``config.image_type``; ``config.categories`` (default: every key of
    ``tasks``) picks the attended ones, and ``config.n_pos``/``n_neg``/``seed`` are not used.
    ``references`` maps a category to unattended reference images (N, C, H, W), e.g. single
    images of it. With ``detectors`` the logit of each task's detector is recorded too.
    Returns the path of the finished netCDF file.
    """
    out = Path(out)
    if not tasks:
        raise ConfigError("no task sets given; give at least one")
    for name, task in tasks.items():
        _check_split(task.split)
        if task.image_type != config.image_type:
            raise ConfigError(
                f"task set {name!r} holds {task.image_type} images but the recording is for "
                f"{config.image_type} images; set image_type accordingly"
            )
    references = dict(references or {})
    first = next(iter(tasks.values()))
    ref_shape = next((tuple(r.shape[1:]) for r in references.values() if r.shape[0]), None)
    plan = plan_recording(
        network,
        values,
        config,
        {name: len(task) for name, task in tasks.items()},
        {name: int(r.shape[0]) for name, r in references.items()},
        tuple(first.images.shape[1:]),
        ref_shape,
    )
    return _record(
        network,
        values,
        plan,
        lambda c: tasks[c],
        lambda c: references.get(c),
        out,
        detectors,
        first.split,
        {},
        progress,
        engine,
    )


def reference_images(source: ImageSet, category: str, n: int, seed: int = 0) -> torch.Tensor:
    """Up to ``n`` standard images of ``category`` from ``source`` (all if fewer), seeded."""
    index = source.category_index(category)
    members = (source.labels == index).nonzero().squeeze(1)
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(members), generator=generator)[: max(0, int(n))]
    return source.images[members[order]]


def record(
    network: Network,
    values: xr.Dataset,
    source: ImageSet,
    out: str | Path,
    config: RecordingConfig = RecordingConfig(),
    *,
    detectors: Detectors | None = None,
    progress: bool = True,
    engine: str | Evaluator = "batched",
) -> Path:
    """Record the conditions of ``config`` on task sets drawn from ``source`` (a test split).

    For attended category k (index among all categories) the task set is
    ``make_task_set(source, k, image_type, n_pos, n_neg, seed=seed * 7919 + k)`` and the
    reference images are ``n_reference`` standard images of k drawn with seed
    ``seed * 7919 + k + 500_009``. Task sets are built one category at a time, so memory holds
    one category's images. Everything is validated, and the size checked against the free
    disk space, before anything runs. ``engine``: ``"batched"`` (default; the sweep engine
    reads the recorded layers), ``"naive"`` (a full pass per condition) or an evaluator.
    Returns the path of the finished netCDF file.
    """
    out = Path(out)
    _check_split(source.split)
    if config.image_type not in IMAGE_TYPES:
        raise ConfigError(
            f"unknown image type {config.image_type!r}; valid: {', '.join(IMAGE_TYPES)}"
        )
    if config.image_type == "noise" and config.snr is None:
        raise ConfigError("image type 'noise' needs an SNR (--snr)")
    all_categories = [str(c) for c in values["category"].values]
    if list(source.categories) != all_categories:
        raise ConfigError(
            f"the images have categories {list(source.categories)} but the values are for "
            f"{all_categories}; use images and values of the same categories"
        )
    counts = torch.bincount(source.labels.to(torch.int64), minlength=len(all_categories))
    wanted = all_categories if config.categories is None else list(config.categories)
    wanted = resolve_categories(wanted, all_categories)
    n_task = {c: config.n_pos + config.n_neg for c in wanted}
    n_ref = {c: min(config.n_reference, int(counts[all_categories.index(c)])) for c in wanted}
    c, h, w = source.images.shape[1:]
    task_shape = (c, 2 * h, 2 * w) if config.image_type == "array" else (c, h, w)
    plan = plan_recording(
        network,
        values,
        config,
        n_task,
        n_ref,
        task_shape,
        (c, h, w) if any(n_ref.values()) else None,
    )
    for category in plan.categories:  # validate every task set's inputs before recording
        make_task_set(source, category, config.image_type, 1, 1, seed=0, snr=config.snr)

    def seed_of(category: str, stream: int = 0) -> int:
        return task_seed(config.seed, plan.category_index[category], stream)

    def task_for(category: str) -> TaskSet:
        return make_task_set(
            source,
            category,
            config.image_type,
            n_pos=config.n_pos,
            n_neg=config.n_neg,
            seed=seed_of(category),
            snr=config.snr,
        )

    def reference_for(category: str) -> torch.Tensor:
        return reference_images(
            source, category, config.n_reference, seed_of(category, REFERENCE_STREAM)
        )

    return _record(
        network,
        values,
        plan,
        task_for,
        reference_for,
        out,
        detectors,
        source.split,
        {"n_pos": config.n_pos, "n_neg": config.n_neg},
        progress,
        engine,
    )


def open_recording(path: str | Path) -> xr.Dataset:
    """Open a recording lazily (data are read from disk only when indexed) and check its format.

    Close it (or use it as a context manager) when done. Raises :class:`DataError` for a
    missing file, a file that is not a finished bioattn recording, or one without activity.
    """
    path = Path(path)
    if not path.exists():
        partial = (
            sorted(path.parent.glob(f".{path.name}.partial-*")) if path.parent.exists() else []
        )
        hint = (
            f" (an unfinished recording {partial[0].name} is there: the recording was "
            "interrupted; record again)"
            if partial
            else "; make one with `bioattn record`"
        )
        raise DataError(f"recording {path} does not exist{hint}")
    try:
        dataset = xr.open_dataset(path, engine="h5netcdf", cache=False)
    except (OSError, ValueError) as error:
        raise DataError(
            f"cannot read recording {path}: {error}; expected a netCDF file written by "
            "`bioattn record`"
        ) from error
    if dataset.attrs.get("format") != RECORDING_FORMAT or "activity" not in dataset:
        dataset.close()
        raise DataError(
            f"{path} is not a bioattn recording (format {dataset.attrs.get('format')!r}, "
            f"expected {RECORDING_FORMAT!r} with an 'activity' variable); make one with "
            "`bioattn record`"
        )
    return dataset


def load_recording(path: str | Path) -> xr.Dataset:
    """Read a whole recording into memory (for small recordings; see :func:`open_recording`)."""
    with open_recording(path) as dataset:
        return dataset.load()
