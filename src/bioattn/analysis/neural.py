"""Neural analyses of recordings: does the network's activity look like the monkey's?

Pure analyses of recorded activity (Lindsay & Miller 2018, "Attention's effects on neural
activity"; DESIGN.md §1 "Neural analyses"). The recordings are made by
:mod:`bioattn.experiments.recording`; this module defines their layout constants and reads them
lazily, one condition at a time, so memory stays bounded by one condition's rows.

Definitions (a = attended, u = unattended activity of a map, each the spatially averaged
post-ReLU activity averaged over the *positive* images of the attended category's task set,
i.e. the images that contain the attended category; the attended and unattended averages are
over the same images):

* **Activity ratio** a / u. The ratio of the image-averaged activities, not the mean of
  per-image ratios: per-image ratios of nearly silent maps explode, and trial-averaged rates are
  what physiology divides. A map whose u is below ``min_relative_activity`` (default 10⁻³) times
  the mean u of its layer is excluded (NaN) from ratio-based analyses: its ratio is noise.
* **Tuning rank** of category c for map k: 1 for the category with the largest tuning value of
  that map (its preferred category), K for the smallest (ties keep category order).
* **FSGM test** (per attended layer × method × β, and per recorded layer): each map's ratios for
  the attended categories are averaged in rank bins (preferred = rank 1, then 2–3, 4–5, …) and a
  line is fitted through the bins, with x the mean of (rank − 1) of the ratios in each bin, so
  the slope is per rank step and the intercept is the fitted ratio at the preferred category.
  A map needs ratios in at least two bins. Reported: median slope and median (intercept − 1)
  across the maps of each recorded layer. The FSGM predicts a negative slope and an intercept
  above 1 (enhancement for preferred, suppression for anti-preferred maps).
* **Population version**: for one attended category, the ratios of all maps of a layer regressed
  on their tuning values for that category (slope, intercept, Pearson r).
* **Modulation index** (a − u)/(a + u) per map (NaN when a + u = 0); its distribution by layer.
* **Vector angle**: the angle between a layer's mean response vector to single (standard,
  unattended) images of the attended category, the category's prototype, and its response
  vector to each positive task image (which also holds a distractor), with and without
  attention; attention should shrink it. Averaged over images.
* **Spatial globality** (2×2 array images): the modulation index of a map computed from its
  activity in the quadrant that holds the attended category versus in the other three
  quadrants. Feature attention is spatially global, so at the attended layer both are equal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bioattn.analysis.sdt import AnalysisError

__all__ = [
    "ANALYSES",
    "RECORDING_FORMAT",
    "ROLE_REFERENCE",
    "ROLE_TASK",
    "ROW_COORDS",
    "UNATTENDED",
    "NeuralReport",
    "activity_ratio",
    "analyze_recording",
    "condition_means",
    "fsgm_analysis",
    "fsgm_fits",
    "layer_order",
    "line_fits",
    "modulation_index",
    "modulation_index_analysis",
    "population_analysis",
    "population_fit",
    "rank_bin_labels",
    "rank_bins",
    "recording_rows",
    "spatial_analysis",
    "tuning_ranks",
    "vector_angle",
    "vector_angle_analysis",
]

#: Value of the ``format`` attribute of every recording file.
RECORDING_FORMAT = "bioattn-recording-1"
#: ``attended_category``/``attended_layer``/``method`` of unattended rows.
UNATTENDED = "none"
#: ``role`` of task images (baseline and attended conditions).
ROLE_TASK = "task"
#: ``role`` of standard images of the attended category (unattended; for vector angles).
ROLE_REFERENCE = "reference"
#: Per-row coordinates of a recording, in file order.
ROW_COORDS: tuple[str, ...] = (
    "condition",
    "role",
    "task_category",
    "image",
    "is_target",
    "target_quadrant",
    "attended_category",
    "attended_layer",
    "method",
    "beta",
)
#: The analyses :func:`analyze_recording` knows, in the order it runs them.
ANALYSES: tuple[str, ...] = ("fsgm", "population", "modulation", "angle", "spatial")
#: Columns that identify one attention setting (pooled over attended categories).
SETTING_KEYS: tuple[str, ...] = ("attended_layer", "method", "beta")
#: Differences of |MI| below this count as equal (float32 activity: equal up to rounding).
_MI_TOLERANCE = 1e-6
#: Largest block of one category's rows read at once by the analyses (bounds their memory).
READ_BLOCK_BYTES = 256 << 20
#: Default threshold of the unattended activity, relative to the layer's mean (see module doc).
MIN_RELATIVE_ACTIVITY = 1e-3


# --- pure array functions ---------------------------------------------------------------------
def tuning_ranks(tuning: np.ndarray) -> np.ndarray:
    """Rank of each category for each map, (K, U) → (K, U) ints: 1 = largest tuning value.

    Ties keep category order (a stable sort), so the result is deterministic.
    """
    tuning = np.asarray(tuning, dtype=float)
    if tuning.ndim != 2:
        raise AnalysisError(f"tuning must be (category, unit), got shape {tuning.shape}")
    order = np.argsort(-tuning, axis=0, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(
        ranks, order, np.broadcast_to(np.arange(1, tuning.shape[0] + 1)[:, None], order.shape), 0
    )
    return ranks


def rank_bins(ranks: np.ndarray) -> np.ndarray:
    """Bin index of 1-based ranks: rank 1 → 0 (preferred), 2–3 → 1, 4–5 → 2, …"""
    ranks = np.asarray(ranks)
    if ranks.size and int(ranks.min()) < 1:
        raise AnalysisError(f"ranks start at 1, got a rank of {int(ranks.min())}")
    return ranks // 2


def rank_bin_labels(n_categories: int) -> list[str]:
    """Labels of the rank bins for ``n_categories`` categories: ``1``, ``2–3``, ``4–5``, …"""
    labels = []
    for b in range(n_categories // 2 + 1):
        lo, hi = (1, 1) if b == 0 else (2 * b, min(2 * b + 1, n_categories))
        labels.append(str(lo) if lo == hi else f"{lo}–{hi}")
    return labels


def activity_ratio(
    attended: np.ndarray, unattended: np.ndarray, min_activity: np.ndarray | float = 0.0
) -> np.ndarray:
    """a / u element-wise; NaN where u ≤ ``min_activity`` (silent maps have no ratio)."""
    a = np.asarray(attended, dtype=float)
    u = np.asarray(unattended, dtype=float)
    ok = u > min_activity
    return np.where(ok, a / np.where(ok, u, 1.0), np.nan)


def modulation_index(attended: np.ndarray, unattended: np.ndarray) -> np.ndarray:
    """(a − u)/(a + u) element-wise, in [−1, 1] for non-negative rates; NaN where a + u ≤ 0."""
    a = np.asarray(attended, dtype=float)
    u = np.asarray(unattended, dtype=float)
    total = a + u
    ok = total > 0
    return np.where(ok, (a - u) / np.where(ok, total, 1.0), np.nan)


def vector_angle(reference: np.ndarray, responses: np.ndarray) -> np.ndarray:
    """Angle in degrees between ``reference`` (U,) and each row of ``responses`` (N, U).

    NaN where either vector is zero (the angle is undefined).
    """
    ref = np.asarray(reference, dtype=float)
    x = np.atleast_2d(np.asarray(responses, dtype=float))
    if x.shape[-1] != ref.shape[-1]:
        raise AnalysisError(f"reference has {ref.shape[-1]} units but responses have {x.shape[-1]}")
    norms = np.linalg.norm(x, axis=-1) * np.linalg.norm(ref)
    ok = norms > 0
    cos = np.where(ok, x @ ref / np.where(ok, norms, 1.0), np.nan)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def line_fits(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares lines y = intercept + slope·x for each column of (P, U) arrays.

    Points where x or y is NaN are left out. Returns (slope, intercept, n_points), each (U,);
    slope and intercept are NaN for columns with fewer than two distinct x values.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x, y = np.broadcast_arrays(x, y)
    ok = np.isfinite(x) & np.isfinite(y)
    n = ok.sum(axis=0)
    safe_n = np.maximum(n, 1)
    mx = np.where(ok, x, 0.0).sum(axis=0) / safe_n
    my = np.where(ok, y, 0.0).sum(axis=0) / safe_n
    dx = np.where(ok, x - mx, 0.0)
    dy = np.where(ok, y - my, 0.0)
    sxx = (dx * dx).sum(axis=0)
    sxy = (dx * dy).sum(axis=0)
    fit = (n >= 2) & (sxx > 1e-12)
    slope = np.where(fit, sxy / np.where(fit, sxx, 1.0), np.nan)
    intercept = np.where(fit, my - slope * mx, np.nan)
    return slope, intercept, n


def fsgm_fits(ratios: np.ndarray, ranks: np.ndarray) -> dict[str, np.ndarray]:
    """The FSGM line of each map from its ratios for several attended categories.

    ``ratios`` and ``ranks`` are (A, U): the activity ratio of map u when category a is attended
    (NaN: excluded) and that category's tuning rank for the map (1 = preferred). Ratios are
    averaged per rank bin (:func:`rank_bins`); each bin's x is the mean of (rank − 1) of the
    ratios in it, so a ratio linear in rank is recovered exactly whatever ranks are present.
    Returns ``slope``, ``intercept`` (fitted ratio at the preferred category), ``n_bins`` (U,)
    and ``binned``, ``bin_x`` (B, U) with NaN for empty bins.
    """
    ratios = np.asarray(ratios, dtype=float)
    ranks = np.asarray(ranks)
    if ratios.shape != ranks.shape or ratios.ndim != 2:
        raise AnalysisError(
            f"ratios and ranks must both be (attended category, unit); got {ratios.shape} and "
            f"{ranks.shape}"
        )
    bins = rank_bins(ranks)
    n_bins = int(bins.max()) + 1 if bins.size else 0
    binned = np.full((n_bins, ratios.shape[1]), np.nan)
    bin_x = np.full_like(binned, np.nan)
    valid = np.isfinite(ratios)
    for b in range(n_bins):
        member = (bins == b) & valid
        count = member.sum(axis=0)
        has = count > 0
        safe = np.maximum(count, 1)
        binned[b] = np.where(has, np.where(member, ratios, 0.0).sum(axis=0) / safe, np.nan)
        bin_x[b] = np.where(has, np.where(member, ranks - 1.0, 0.0).sum(axis=0) / safe, np.nan)
    slope, intercept, used = line_fits(bin_x, binned)
    return {
        "slope": slope,
        "intercept": intercept,
        "n_bins": used,
        "binned": binned,
        "bin_x": bin_x,
    }


def population_fit(ratio: np.ndarray, tuning: np.ndarray) -> dict[str, float]:
    """Regress ratios (U,) on tuning values (U,): slope, intercept, Pearson r and n maps.

    NaN ratios are left out; slope, intercept and r are NaN with fewer than two maps or no
    spread in tuning (r also when the ratios do not vary).
    """
    ratio = np.asarray(ratio, dtype=float)
    tuning = np.asarray(tuning, dtype=float)
    slope, intercept, n = line_fits(tuning[:, None], ratio[:, None])
    ok = np.isfinite(ratio) & np.isfinite(tuning)
    r = np.nan
    if ok.sum() >= 2 and np.std(ratio[ok]) > 0 and np.std(tuning[ok]) > 0:
        r = float(np.corrcoef(tuning[ok], ratio[ok])[0, 1])
    return {
        "slope": float(slope[0]),
        "intercept": float(intercept[0]),
        "r": r,
        "n_units": int(n[0]),
    }


# --- reading recordings -----------------------------------------------------------------------
def _require(recording: xr.Dataset, names: Iterable[str], what: str) -> None:
    missing = [name for name in names if name not in recording.variables]
    if missing:
        raise AnalysisError(
            f"{what} needs {missing}, which the recording lacks; give a recording made by "
            "`bioattn record`"
        )


def recording_rows(recording: xr.Dataset) -> pd.DataFrame:
    """The per-row coordinates of a recording as a DataFrame (index: row position)."""
    _require(recording, [*ROW_COORDS, "activity"], "reading a recording")
    return pd.DataFrame({name: recording[name].values for name in ROW_COORDS})


def layer_order(recording: xr.Dataset) -> list[str]:
    """Layer aliases in network order (from the file's ``network_layers``, else as recorded)."""
    recorded = list(dict.fromkeys(str(v) for v in recording["layer"].values))
    stored = recording.attrs.get("network_layers")
    if stored:
        order = [str(a) for a in json.loads(stored)]
        return order + [a for a in recorded if a not in order]
    return recorded


def _read(recording: xr.Dataset, variable: str, rows: np.ndarray) -> np.ndarray:
    """Values of ``variable`` at row positions ``rows`` (sorted), reading only those rows."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        selection: slice | np.ndarray = slice(int(rows[0]), int(rows[-1]) + 1)
    else:
        selection = rows
    return np.asarray(recording[variable].isel(stimulus=selection).values)


class _Reader:
    """Rows of one variable, read one task category at a time.

    Asked for rows of a category, it reads all of that category's rows in one go (reads of
    lazily opened files have a large fixed cost each) and keeps them until rows of another
    category are asked for, so memory holds one category's rows of one variable, as stored
    (float32). A category whose rows exceed :data:`READ_BLOCK_BYTES` is read request by request
    instead.
    """

    def __init__(self, recording: xr.Dataset, variable: str, rows: pd.DataFrame) -> None:
        self.recording = recording
        self.variable = variable
        data = recording[variable]
        self.row_bytes = data.dtype.itemsize * int(np.prod(data.shape[1:]))
        self.category_of = rows["task_category"].to_numpy()
        self.key: object = None
        self.positions = np.empty(0, dtype=np.int64)
        self.block = np.empty(0)

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        categories = self.category_of[positions]
        same = positions.size > 0 and bool((categories == categories[0]).all())
        if same and categories[0] != self.key:
            block = np.flatnonzero(self.category_of == categories[0])
            if block.size * self.row_bytes <= READ_BLOCK_BYTES:
                self.key, self.positions = categories[0], block
                self.block = _read(self.recording, self.variable, block)
        if not same or categories[0] != self.key:
            order = np.argsort(positions)
            out = _read(self.recording, self.variable, positions[order])
            return out[np.argsort(order)]
        return self.block[np.searchsorted(self.positions, positions)]


def _baseline_rows(rows: pd.DataFrame, category: str, positives_only: bool) -> pd.DataFrame:
    base = rows[
        (rows["role"] == ROLE_TASK)
        & (rows["attended_layer"] == UNATTENDED)
        & (rows["task_category"] == category)
    ]
    if positives_only:
        base = base[base["is_target"]]
    return base


def _attended_rows(rows: pd.DataFrame) -> pd.DataFrame:
    attended = rows[(rows["role"] == ROLE_TASK) & (rows["attended_layer"] != UNATTENDED)]
    if attended.empty:
        raise AnalysisError(
            "the recording has no attended conditions (only unattended rows); record with "
            "attention, e.g. `bioattn record --attend-layers conv3_1 --betas 0.5`"
        )
    return attended


def _paired(
    rows: pd.DataFrame, condition: pd.DataFrame, positives_only: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of a condition's images and of the same images unattended (same order)."""
    category = str(condition["task_category"].iloc[0])
    if positives_only:
        condition = condition[condition["is_target"]]
    base = _baseline_rows(rows, category, positives_only)
    if base.empty:
        raise AnalysisError(
            f"the recording has no unattended baseline for category {category!r} "
            f"(rows with attended_layer {UNATTENDED!r} on its task set), which every "
            "attention analysis compares with; record it again with `bioattn record`"
        )
    if condition.empty:
        raise AnalysisError(
            f"the attended condition on {category!r} has no positive images to analyse"
        )
    base_by_image = pd.Series(base.index.to_numpy(), index=base["image"].to_numpy())
    images = condition["image"].to_numpy()
    known = np.isin(images, base_by_image.index.to_numpy())
    if not known.all():
        raise AnalysisError(
            f"{int((~known).sum())} images of an attended condition on {category!r} have no "
            "unattended counterpart in the recording; the file is inconsistent"
        )
    return condition.index.to_numpy(), base_by_image.loc[images].to_numpy()


def condition_means(
    recording: xr.Dataset, positives_only: bool = True, variable: str = "activity"
) -> xr.Dataset:
    """Image-averaged attended and unattended activity per attended condition and map.

    Returns a Dataset with dims (condition, unit), variables ``attended`` and ``unattended``
    (averages over the same images: the positives by default), condition coordinates
    ``attended_category``, ``attended_layer``, ``method``, ``beta``, ``n_images`` and the unit
    coordinates ``layer`` and ``channel``. Reads one task category at a time. Raises
    :class:`AnalysisError` when the recording has no attended condition or a condition's
    category lacks its unattended baseline.
    """
    rows = recording_rows(recording)
    attended = _attended_rows(rows)
    read = _Reader(recording, variable, rows)
    keys, a_means, u_means, counts = [], [], [], []
    for condition_id, group in attended.groupby("condition", sort=True):
        positions, base_positions = _paired(rows, group, positives_only)
        a_means.append(read(positions).mean(axis=0, dtype=np.float64))
        u_means.append(read(base_positions).mean(axis=0, dtype=np.float64))
        counts.append(len(positions))
        first = group.iloc[0]
        keys.append(
            (
                int(condition_id),
                str(first["attended_category"]),
                str(first["attended_layer"]),
                str(first["method"]),
                float(first["beta"]),
            )
        )
    ids, categories, layers, methods, betas = (list(v) for v in zip(*keys, strict=True))
    dims = ("condition", "unit")
    return xr.Dataset(
        {"attended": (dims, np.stack(a_means)), "unattended": (dims, np.stack(u_means))},
        coords={
            "condition": ids,
            "attended_category": ("condition", categories),
            "attended_layer": ("condition", layers),
            "method": ("condition", methods),
            "beta": ("condition", betas),
            "n_images": ("condition", counts),
            "unit": recording["unit"].values,
            "layer": ("unit", recording["layer"].values.astype(str)),
            "channel": ("unit", recording["channel"].values),
        },
        attrs={"network_layers": recording.attrs.get("network_layers", "")},
    )


def _settings(means: xr.Dataset) -> list[tuple[tuple[str, str, float], np.ndarray]]:
    """(attended layer, method, β) and the condition positions of each, in a stable order."""
    frame = pd.DataFrame({key: means[key].values for key in SETTING_KEYS}).reset_index(
        names="position"
    )
    out = []
    for key, group in frame.groupby(list(SETTING_KEYS), sort=False):
        out.append(((str(key[0]), str(key[1]), float(key[2])), group["position"].to_numpy()))
    return out


def _unit_layers(means: xr.Dataset) -> np.ndarray:
    return means["layer"].values.astype(str)


def _relation(order: Sequence[str], attended: str, recorded: str) -> str:
    """Where a recorded layer lies relative to the attended one."""
    if attended not in order or recorded not in order:
        return "all" if attended not in order else "unknown"
    a, r = order.index(attended), order.index(recorded)
    return "attended" if a == r else ("downstream" if r > a else "upstream")


def _order_from(means: xr.Dataset) -> list[str]:
    recorded = list(dict.fromkeys(_unit_layers(means)))
    stored = means.attrs.get("network_layers")
    if stored:
        order = [str(a) for a in json.loads(stored)]
        return order + [a for a in recorded if a not in order]
    return recorded


def _threshold(unattended: np.ndarray, layers: np.ndarray, relative: float) -> np.ndarray:
    """Per (condition, unit) minimum unattended activity: ``relative`` × the layer's mean."""
    threshold = np.zeros_like(unattended)
    for alias in dict.fromkeys(layers):
        cols = layers == alias
        threshold[:, cols] = relative * unattended[:, cols].mean(axis=1, keepdims=True)
    return threshold


def _ratios(means: xr.Dataset, min_relative_activity: float) -> np.ndarray:
    u = means["unattended"].values
    threshold = _threshold(u, _unit_layers(means), min_relative_activity)
    return activity_ratio(means["attended"].values, u, threshold)


def _category_rows(recording_tuning: xr.DataArray, categories: Sequence[str]) -> np.ndarray:
    known = [str(c) for c in recording_tuning["category"].values]
    missing = [c for c in categories if c not in known]
    if missing:
        raise AnalysisError(
            f"the recording's tuning table has no categories {missing} (it has {known})"
        )
    return np.array([known.index(c) for c in categories])


def fsgm_analysis(
    means: xr.Dataset,
    tuning: xr.DataArray,
    min_relative_activity: float = MIN_RELATIVE_ACTIVITY,
) -> dict[str, pd.DataFrame]:
    """The FSGM test for every (attended layer, method, β) and recorded layer.

    ``means`` comes from :func:`condition_means`, ``tuning`` is the recording's ``tuning``
    (category, unit). Returns tables ``units`` (slope, intercept, n_bins per map), ``bins``
    (mean and median ratio per rank bin and recorded layer) and ``summary`` (per recorded
    layer: median slope, median intercept − 1, the number of maps fitted and the fraction with a
    negative slope; ``relation`` says whether the recorded layer is upstream of, at, or
    downstream of the attended one). Needs at least two attended categories per setting.
    """
    ratios = _ratios(means, min_relative_activity)
    ranks_all = tuning_ranks(tuning.values)
    n_categories = ranks_all.shape[0]
    labels = rank_bin_labels(n_categories)
    layers = _unit_layers(means)
    channels = means["channel"].values
    order = _order_from(means)
    unit_rows, bin_rows, summary_rows = [], [], []
    for (attended_layer, method, beta), positions in _settings(means):
        categories = [str(c) for c in means["attended_category"].values[positions]]
        if len(set(categories)) < 2:
            raise AnalysisError(
                f"the FSGM test fits each map's activity ratio across the tuning ranks of the "
                f"attended categories, so it needs at least two; attention at {attended_layer} "
                f"({method}, β={beta:g}) was recorded for {sorted(set(categories))} only; "
                "record more categories (e.g. all of them)"
            )
        ranks = ranks_all[_category_rows(tuning, categories)]
        fits = fsgm_fits(ratios[positions], ranks)
        setting = {"attended_layer": attended_layer, "method": method, "beta": beta}
        for alias in dict.fromkeys(layers):
            cols = layers == alias
            slope, intercept = fits["slope"][cols], fits["intercept"][cols]
            fitted = np.isfinite(slope)
            common = {
                **setting,
                "recorded_layer": alias,
                "relation": _relation(order, attended_layer, alias),
            }
            unit_rows.append(
                pd.DataFrame(
                    {
                        **{k: [v] * int(cols.sum()) for k, v in common.items()},
                        "channel": channels[cols],
                        "slope": slope,
                        "intercept": intercept,
                        "n_bins": fits["n_bins"][cols],
                    }
                )
            )
            summary_rows.append(
                {
                    **common,
                    "median_slope": float(np.median(slope[fitted])) if fitted.any() else np.nan,
                    "median_intercept_minus_1": (
                        float(np.median(intercept[fitted] - 1.0)) if fitted.any() else np.nan
                    ),
                    "fraction_negative_slope": (
                        float(np.mean(slope[fitted] < 0)) if fitted.any() else np.nan
                    ),
                    "n_units": int(fitted.sum()),
                    "n_units_layer": int(cols.sum()),
                    "n_categories": len(set(categories)),
                }
            )
            binned = fits["binned"][:, cols]
            for b in range(binned.shape[0]):
                values = binned[b][np.isfinite(binned[b])]
                bin_rows.append(
                    {
                        **common,
                        "bin": b,
                        "bin_label": labels[b] if b < len(labels) else str(b),
                        "mean_ratio": float(values.mean()) if values.size else np.nan,
                        "sem_ratio": (
                            float(values.std(ddof=1) / np.sqrt(values.size))
                            if values.size > 1
                            else np.nan
                        ),
                        "median_ratio": float(np.median(values)) if values.size else np.nan,
                        "n_units": int(values.size),
                    }
                )
    return {
        "units": pd.concat(unit_rows, ignore_index=True),
        "bins": pd.DataFrame(bin_rows),
        "summary": pd.DataFrame(summary_rows),
    }


def population_analysis(
    means: xr.Dataset,
    tuning: xr.DataArray,
    min_relative_activity: float = MIN_RELATIVE_ACTIVITY,
) -> dict[str, pd.DataFrame]:
    """Per attended category and recorded layer: ratios of all maps regressed on their tuning.

    Returns ``fits`` (slope, intercept, r, n_units per attended category, setting and recorded
    layer), ``summary`` (mean and SEM of slope and r across categories) and ``points`` (the
    tuning value and ratio of every map, for scatter plots).
    """
    ratios = _ratios(means, min_relative_activity)
    layers = _unit_layers(means)
    order = _order_from(means)
    categories = [str(c) for c in means["attended_category"].values]
    tuning_rows = tuning.values[_category_rows(tuning, categories)]
    fit_rows, point_rows = [], []
    for i in range(means.sizes["condition"]):
        setting = {
            "attended_category": categories[i],
            "attended_layer": str(means["attended_layer"].values[i]),
            "method": str(means["method"].values[i]),
            "beta": float(means["beta"].values[i]),
        }
        for alias in dict.fromkeys(layers):
            cols = layers == alias
            relation = _relation(order, setting["attended_layer"], alias)
            fit = population_fit(ratios[i, cols], tuning_rows[i, cols])
            fit_rows.append({**setting, "recorded_layer": alias, "relation": relation, **fit})
            point_rows.append(
                pd.DataFrame(
                    {
                        **{k: [v] * int(cols.sum()) for k, v in setting.items()},
                        "recorded_layer": alias,
                        "relation": relation,
                        "channel": means["channel"].values[cols],
                        "tuning": tuning_rows[i, cols],
                        "ratio": ratios[i, cols],
                    }
                )
            )
    fits = pd.DataFrame(fit_rows)
    keys = [*SETTING_KEYS, "recorded_layer", "relation"]
    summary = (
        fits.groupby(keys, sort=False)
        .agg(
            mean_slope=("slope", "mean"),
            sem_slope=("slope", "sem"),
            mean_intercept=("intercept", "mean"),
            mean_r=("r", "mean"),
            sem_r=("r", "sem"),
            n_categories=("slope", "count"),
        )
        .reset_index()
    )
    return {"fits": fits, "summary": summary, "points": pd.concat(point_rows, ignore_index=True)}


def modulation_index_analysis(means: xr.Dataset) -> dict[str, pd.DataFrame]:
    """Modulation index of every map per condition, and its distribution per recorded layer.

    Returns ``units`` (one row per condition and map) and ``summary`` per (attended layer,
    method, β, recorded layer), pooled over attended categories: median and mean MI, median
    |MI|, quartiles, and the number of maps with a defined MI.
    """
    mi = modulation_index(means["attended"].values, means["unattended"].values)
    layers = _unit_layers(means)
    order = _order_from(means)
    n_cond, n_units = mi.shape
    units = pd.DataFrame(
        {
            "attended_category": np.repeat(means["attended_category"].values.astype(str), n_units),
            "attended_layer": np.repeat(means["attended_layer"].values.astype(str), n_units),
            "method": np.repeat(means["method"].values.astype(str), n_units),
            "beta": np.repeat(means["beta"].values.astype(float), n_units),
            "recorded_layer": np.tile(layers, n_cond),
            "channel": np.tile(means["channel"].values, n_cond),
            "modulation_index": mi.reshape(-1),
        }
    )
    units["relation"] = [
        _relation(order, a, r)
        for a, r in zip(units["attended_layer"], units["recorded_layer"], strict=True)
    ]
    rows = []
    keys = [*SETTING_KEYS, "recorded_layer", "relation"]
    for key, group in units.groupby(keys, sort=False):
        values = group["modulation_index"].to_numpy()
        values = values[np.isfinite(values)]
        stats = {
            "median_mi": np.nan,
            "mean_mi": np.nan,
            "median_abs_mi": np.nan,
            "q25_mi": np.nan,
            "q75_mi": np.nan,
        }
        if values.size:
            stats = {
                "median_mi": float(np.median(values)),
                "mean_mi": float(values.mean()),
                "median_abs_mi": float(np.median(np.abs(values))),
                "q25_mi": float(np.quantile(values, 0.25)),
                "q75_mi": float(np.quantile(values, 0.75)),
            }
        rows.append({**dict(zip(keys, key, strict=True)), **stats, "n": int(values.size)})
    return {"units": units, "summary": pd.DataFrame(rows)}


def _finite_mean(values: np.ndarray) -> float:
    """Mean of the finite values; NaN (without a warning) when there are none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def vector_angle_analysis(recording: xr.Dataset) -> dict[str, pd.DataFrame]:
    """Angle between the category prototype and responses to positive images, per layer.

    The prototype of category c at a layer is the mean unattended response vector (all maps of
    the layer) to c's reference (single, standard) images. For each attended condition on c
    and each recorded layer: the mean over positive images of the angle to the prototype,
    unattended and attended, and their difference (negative: attention brings the response
    closer to the prototype). Returns ``categories`` (one row per condition and recorded layer)
    and ``summary`` (mean ± SEM over categories).
    """
    rows = recording_rows(recording)
    attended = _attended_rows(rows)
    read = _Reader(recording, "activity", rows)
    layers = recording["layer"].values.astype(str)
    order = layer_order(recording)
    prototypes: dict[str, np.ndarray] = {}
    out = []
    for _condition, group in attended.groupby("condition", sort=True):
        category = str(group["task_category"].iloc[0])
        if category not in prototypes:
            reference = rows[(rows["role"] == ROLE_REFERENCE) & (rows["task_category"] == category)]
            if reference.empty:
                raise AnalysisError(
                    f"the vector-angle analysis needs reference images (standard images of the "
                    f"attended category, role {ROLE_REFERENCE!r}) but the recording has none "
                    f"for {category!r}; record with --n-reference greater than 0"
                )
            reference_rows = read(reference.index.to_numpy())
            prototypes[category] = reference_rows.mean(axis=0, dtype=np.float64)
        positions, base_positions = _paired(rows, group, positives_only=True)
        a = read(positions).astype(np.float64)
        u = read(base_positions).astype(np.float64)
        first = group.iloc[0]
        setting = {
            "attended_category": str(first["attended_category"]),
            "attended_layer": str(first["attended_layer"]),
            "method": str(first["method"]),
            "beta": float(first["beta"]),
        }
        for alias in dict.fromkeys(layers):
            cols = layers == alias
            ref = prototypes[category][cols]
            angle_u = vector_angle(ref, u[:, cols])
            angle_a = vector_angle(ref, a[:, cols])
            delta = angle_a - angle_u
            out.append(
                {
                    **setting,
                    "recorded_layer": alias,
                    "relation": _relation(order, setting["attended_layer"], alias),
                    "angle_unattended": _finite_mean(angle_u),
                    "angle_attended": _finite_mean(angle_a),
                    "delta_angle": _finite_mean(delta),
                    "n_images": int(np.isfinite(delta).sum()),
                }
            )
    categories = pd.DataFrame(out)
    keys = [*SETTING_KEYS, "recorded_layer", "relation"]
    summary = (
        categories.groupby(keys, sort=False)
        .agg(
            mean_angle_unattended=("angle_unattended", "mean"),
            sem_angle_unattended=("angle_unattended", "sem"),
            mean_angle_attended=("angle_attended", "mean"),
            sem_angle_attended=("angle_attended", "sem"),
            mean_delta_angle=("delta_angle", "mean"),
            sem_delta_angle=("delta_angle", "sem"),
            n_categories=("delta_angle", "count"),
        )
        .reset_index()
    )
    return {"categories": categories, "summary": summary}


def spatial_analysis(recording: xr.Dataset) -> dict[str, pd.DataFrame]:
    """Modulation at the attended object's quadrant versus the other quadrants (array images).

    For each attended condition and map, a and u are averaged over the positive images either
    in the quadrant holding the attended category (``target``) or over the other three
    (``other``); the modulation index of each. Returns ``units`` (MI at target and other
    positions per condition and map) and ``summary`` per (attended layer, method, β, recorded
    layer): medians of both, the median paired difference, and the fraction of maps more
    modulated at the target's position (|MI| larger by more than 10⁻⁶, so that rounding does
    not count).
    """
    if "quadrant_activity" not in recording.variables:
        raise AnalysisError(
            "the spatial analysis compares positions that hold the attended object with "
            "positions that do not, which needs quadrant activity; the recording has none "
            f"(image type {recording.attrs.get('image_type', 'unknown')!r}); record array "
            "images (`bioattn record --image-type array`)"
        )
    rows = recording_rows(recording)
    attended = _attended_rows(rows)
    read = _Reader(recording, "quadrant_activity", rows)
    layers = recording["layer"].values.astype(str)
    channels = recording["channel"].values
    order = layer_order(recording)
    unit_frames = []
    for _condition, group in attended.groupby("condition", sort=True):
        group = group[group["is_target"] & (group["target_quadrant"] >= 0)]
        if group.empty:
            raise AnalysisError(
                "the spatial analysis needs positive array images with a known target "
                "quadrant, but an attended condition has none"
            )
        positions, base_positions = _paired(rows, group, positives_only=True)
        a = read(positions).astype(np.float64)  # (N, U, 4)
        u = read(base_positions).astype(np.float64)
        quadrant = group["target_quadrant"].to_numpy()
        at_target = np.zeros((a.shape[0], a.shape[2]), dtype=bool)
        at_target[np.arange(len(quadrant)), quadrant] = True
        mask = at_target[:, None, :]  # (N, 1, 4)
        a_t = (a * mask).sum(axis=(0, 2)) / mask.sum()
        u_t = (u * mask).sum(axis=(0, 2)) / mask.sum()
        a_o = (a * ~mask).sum(axis=(0, 2)) / (~mask).sum()
        u_o = (u * ~mask).sum(axis=(0, 2)) / (~mask).sum()
        first = group.iloc[0]
        attended_layer = str(first["attended_layer"])
        unit_frames.append(
            pd.DataFrame(
                {
                    "attended_category": str(first["attended_category"]),
                    "attended_layer": attended_layer,
                    "method": str(first["method"]),
                    "beta": float(first["beta"]),
                    "recorded_layer": layers,
                    "relation": [_relation(order, attended_layer, r) for r in layers],
                    "channel": channels,
                    "mi_target": modulation_index(a_t, u_t),
                    "mi_other": modulation_index(a_o, u_o),
                }
            )
        )
    units = pd.concat(unit_frames, ignore_index=True)
    units["mi_difference"] = units["mi_target"] - units["mi_other"]
    rows_out = []
    keys = [*SETTING_KEYS, "recorded_layer", "relation"]
    for key, group in units.groupby(keys, sort=False):
        ok = group.dropna(subset=["mi_target", "mi_other"])
        rows_out.append(
            {
                **dict(zip(keys, key, strict=True)),
                "median_mi_target": float(ok["mi_target"].median()),
                "median_mi_other": float(ok["mi_other"].median()),
                "median_mi_difference": float(ok["mi_difference"].median()),
                "median_abs_mi_target": float(ok["mi_target"].abs().median()),
                "median_abs_mi_other": float(ok["mi_other"].abs().median()),
                "fraction_target_more_modulated": float(
                    (ok["mi_target"].abs() - ok["mi_other"].abs() > _MI_TOLERANCE).mean()
                )
                if len(ok)
                else np.nan,
                "n": len(ok),
            }
        )
    return {"units": units, "summary": pd.DataFrame(rows_out)}


# --- the whole report -------------------------------------------------------------------------
@dataclass
class NeuralReport:
    """What :func:`analyze_recording` produced: tables by name, files written, skips and why."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _parse_analyses(analyses: Sequence[str] | None) -> tuple[list[str], bool]:
    if analyses is None or list(analyses) in ([], ["all"]):
        return list(ANALYSES), False
    unknown = [a for a in analyses if a not in ANALYSES]
    if unknown:
        raise AnalysisError(f"unknown analyses {unknown}; valid: {', '.join(ANALYSES)} or all")
    return [a for a in ANALYSES if a in analyses], True


def analyze_recording(
    recording: xr.Dataset,
    out_dir: str | Path | None = None,
    analyses: Sequence[str] | None = None,
    category: str | None = None,
    min_relative_activity: float = MIN_RELATIVE_ACTIVITY,
    figures: bool = True,
) -> NeuralReport:
    """Run the neural analyses of a recording; write CSV tables and figures to ``out_dir``.

    ``analyses`` picks from :data:`ANALYSES` (default: all that the recording supports; the
    ones it cannot support are listed in ``skipped`` with the reason). Asked for explicitly, an
    analysis the recording cannot support raises :class:`AnalysisError`. ``category`` is the
    attended category of the population scatter figure (default: the first recorded).
    Tables are written as ``<analysis>_<table>.csv`` and figures as PNG + SVG under
    ``out_dir/figures``.
    """
    from bioattn.analysis import neural_figures as nf

    chosen, explicit = _parse_analyses(analyses)
    report = NeuralReport()
    out = Path(out_dir) if out_dir is not None else None
    means: xr.Dataset | None = None
    for name in chosen:
        try:
            if name in ("fsgm", "population", "modulation") and means is None:
                means = condition_means(recording)
            if name in ("fsgm", "population"):
                _require(recording, ["tuning"], f"the {name} analysis")
            if name == "fsgm":
                tables = fsgm_analysis(means, recording["tuning"], min_relative_activity)
            elif name == "population":
                tables = population_analysis(means, recording["tuning"], min_relative_activity)
            elif name == "modulation":
                tables = modulation_index_analysis(means)
            elif name == "angle":
                tables = vector_angle_analysis(recording)
            else:
                tables = spatial_analysis(recording)
        except AnalysisError as error:
            if explicit:
                raise
            report.skipped[name] = str(error)
            continue
        for table, frame in tables.items():
            report.tables[f"{name}_{table}"] = frame
    if not report.tables:
        reasons = "; ".join(f"{k}: {v}" for k, v in report.skipped.items())
        raise AnalysisError(f"no analysis could run on this recording: {reasons}")
    if out is None:
        return report
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in report.tables.items():
        path = out / f"{name}.csv"
        frame.to_csv(path, index=False)
        report.files.append(path)
    if figures:
        report.files += nf.plot_report(report.tables, out / "figures", category=category)
    return report
