"""Figures of the neural analyses (:mod:`bioattn.analysis.neural`).

Built with :class:`matplotlib.figure.Figure` (never pyplot): each ``<name>_figure(...)``
returns the figure, and ``plot_<name>(..., out_stem)`` writes it as PNG + SVG with
:func:`bioattn.analysis.figures.save_figure` and returns the paths. The x axis is always the
recorded layer in network order; each attended layer has one colour (early layers dark, late
layers light; the all-layers mode black), and a line starts at its attended layer (upstream
layers are unchanged by construction). With several methods or β values there is one row of
panels per (method, β).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bioattn.analysis.figures import save_figure
from bioattn.analysis.sdt import AnalysisError

__all__ = [
    "attended_layer_colors",
    "fsgm_bins_figure",
    "fsgm_summary_figure",
    "modulation_index_figure",
    "modulation_summary_figure",
    "plot_fsgm_bins",
    "plot_fsgm_summary",
    "plot_modulation_index",
    "plot_modulation_summary",
    "plot_population",
    "plot_report",
    "plot_spatial",
    "plot_vector_angle",
    "population_figure",
    "spatial_figure",
    "vector_angle_figure",
]

_PANEL_W = 4.4
_PANEL_H = 3.4
_ALL = "all"


def _layer_order(frame: pd.DataFrame) -> list[str]:
    """Recorded layers in the order they appear (the analyses emit them in network order)."""
    return list(dict.fromkeys(str(v) for v in frame["recorded_layer"]))


def _attended_order(frame: pd.DataFrame, layers: list[str]) -> list[str]:
    attended = list(dict.fromkeys(str(v) for v in frame["attended_layer"]))
    known = [a for a in layers if a in attended]
    return known + [a for a in attended if a not in known]


def attended_layer_colors(attended: list[str], layers: list[str]) -> dict[str, str]:
    """A colour per attended layer along viridis by network position; ``all`` is black."""
    cmap = matplotlib.colormaps["viridis"]
    singles = [a for a in attended if a != _ALL]
    colors = {}
    for i, name in enumerate(singles):
        colors[name] = matplotlib.colors.to_hex(cmap(0.85 * i / max(len(singles) - 1, 1)))
    if _ALL in attended:
        colors[_ALL] = "#000000"
    return colors


def _combos(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    out = []
    for (method, beta), group in frame.groupby(["method", "beta"], sort=True):
        out.append((f"{method}, β = {beta:g}", group))
    return out


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows at or after the attended layer (and everything for the all-layers mode)."""
    return frame[frame["relation"].isin(["attended", "downstream", "all"])]


def _x_axis(ax, layers: list[str]) -> None:
    ax.set_xticks(range(len(layers)))
    rotate = len(layers) > 5
    ax.set_xticklabels(layers, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_xlabel("recorded layer")


def _line_plot(
    summary: pd.DataFrame,
    columns: list[tuple[str, str]],
    title: str,
    reference: float | None = 0.0,
    errors: Mapping[str, str] | None = None,
    baselines: Mapping[str, str] | None = None,
) -> Figure:
    """Panels (one per column × per (method, β) row) of a summary against recorded layer.

    ``errors`` maps a column (or a baseline column) to its error-bar column; ``baselines``
    maps a column to an unattended counterpart drawn once, as a dashed grey line over every
    recorded layer.
    """
    layers = _layer_order(summary)
    x_of = {layer: i for i, layer in enumerate(layers)}
    attended = _attended_order(summary, layers)
    colors = attended_layer_colors(attended, layers)
    combos = _combos(summary)
    fig = Figure(
        figsize=(_PANEL_W * len(columns), _PANEL_H * len(combos) + 0.5), layout="constrained"
    )
    axes = fig.subplots(len(combos), len(columns), squeeze=False)
    for row, (label, group) in enumerate(combos):
        shown = _shown(group)
        for col, (column, ylabel) in enumerate(columns):
            ax = axes[row, col]
            if reference is not None:
                ax.axhline(reference, color="0.6", linewidth=0.8)
            if baselines and column in baselines:
                base_column = baselines[column]
                wanted = [base_column]
                if errors and base_column in errors:
                    wanted.append(errors[base_column])
                base = group.groupby("recorded_layer", sort=False)[wanted].mean()
                ax.errorbar(
                    base.index.map(x_of).to_numpy(float),
                    base[base_column].to_numpy(float),
                    yerr=base[wanted[1]].to_numpy(float) if len(wanted) > 1 else None,
                    capsize=3 if len(wanted) > 1 else 0,
                    color="0.45",
                    linestyle="--",
                    marker="s",
                    markersize=3,
                    label="unattended",
                )
            for name in attended:
                line = shown[shown["attended_layer"].astype(str) == name]
                if line.empty:
                    continue
                x = line["recorded_layer"].astype(str).map(x_of).to_numpy(float)
                y = line[column].to_numpy(float)
                err = None
                if errors and column in errors and errors[column] in line:
                    err = line[errors[column]].to_numpy(float)
                ax.errorbar(
                    x,
                    y,
                    yerr=err,
                    color=colors[name],
                    marker="o",
                    markersize=4,
                    capsize=3 if err is not None else 0,
                    label=f"attend {name}" if name != _ALL else "attend all (β/10)",
                )
            _x_axis(ax, layers)
            ax.set_ylabel(ylabel)
            ax.set_title(label, fontsize="medium")
    axes[0, 0 if baselines else -1].legend(fontsize="small", frameon=False)
    fig.suptitle(title)
    return fig


def plot_fsgm_summary(summary: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """Write :func:`fsgm_summary_figure` as PNG and SVG; return their paths."""
    return save_figure(fsgm_summary_figure(summary), out_stem)


def fsgm_summary_figure(summary: pd.DataFrame) -> Figure:
    """Median FSGM slope and median (intercept − 1) against recorded layer, per attended layer."""
    return _line_plot(
        summary,
        [
            ("median_slope", "median slope of ratio vs tuning rank"),
            ("median_intercept_minus_1", "median (intercept − 1)"),
        ],
        "FSGM test: lines fitted to each map's activity ratio (attended / unattended) "
        "against tuning rank; medians over maps",
    )


def plot_fsgm_bins(bins: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """Write :func:`fsgm_bins_figure` as PNG and SVG; return their paths."""
    return save_figure(fsgm_bins_figure(bins), out_stem)


def fsgm_bins_figure(bins: pd.DataFrame) -> Figure:
    """Mean ± SEM (over maps) activity ratio per tuning-rank bin; one panel per recorded
    layer, for the first (method, β)."""
    label, group = _combos(bins)[0]
    shown = _shown(group)
    layers = _layer_order(bins)
    recorded = [layer for layer in layers if layer in set(shown["recorded_layer"])]
    attended = _attended_order(shown, layers)
    colors = attended_layer_colors(attended, layers)
    n = len(recorded)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(_PANEL_W * cols, _PANEL_H * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, layer in zip(axes.flat, recorded, strict=False):
        panel = shown[shown["recorded_layer"] == layer]
        ax.axhline(1.0, color="0.6", linewidth=0.8)
        labels: list[str] = []
        for name in attended:
            line = panel[panel["attended_layer"].astype(str) == name].sort_values("bin")
            if line.empty:
                continue
            labels = max(labels, list(line["bin_label"].astype(str)), key=len)
            ax.errorbar(
                line["bin"],
                line["mean_ratio"],
                yerr=line.get("sem_ratio"),
                color=colors[name],
                marker="o",
                markersize=4,
                capsize=2,
                label=f"attend {name}",
            )
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels)
        ax.set_xlabel("tuning rank of the attended category")
        ax.set_ylabel("activity ratio (mean ± SEM over maps)")
        ax.set_title(f"recorded at {layer}", fontsize="medium")
    axes.flat[0].legend(fontsize="small", frameon=False)
    fig.suptitle(f"Activity ratio (attended / unattended) by tuning rank ({label}; 1 = no change)")
    return fig


def plot_modulation_index(units: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """Write :func:`modulation_index_figure` as PNG and SVG; return their paths."""
    return save_figure(modulation_index_figure(units), out_stem)


def modulation_index_figure(units: pd.DataFrame) -> Figure:
    """Box plots of the modulation index over maps, per recorded layer; one panel per
    attended layer (boxes: quartiles, line: median, whiskers: 5th–95th percentiles)."""
    label, group = _combos(units)[0]
    shown = _shown(group)
    layers = _layer_order(units)
    attended = _attended_order(shown, layers)
    colors = attended_layer_colors(attended, layers)
    fig = Figure(figsize=(_PANEL_W * len(attended), _PANEL_H + 0.6), layout="constrained")
    axes = fig.subplots(1, len(attended), squeeze=False, sharey=True)[0]
    for ax, name in zip(axes, attended, strict=True):
        panel = shown[shown["attended_layer"].astype(str) == name]
        data, positions = [], []
        for i, layer in enumerate(layers):
            values = panel.loc[panel["recorded_layer"] == layer, "modulation_index"].to_numpy()
            values = values[np.isfinite(values)]
            if values.size:
                data.append(values)
                positions.append(i)
        ax.axhline(0.0, color="0.6", linewidth=0.8)
        if data:
            parts = ax.boxplot(
                data,
                positions=positions,
                widths=0.6,
                whis=(5, 95),
                showfliers=False,
                patch_artist=True,
            )
            for box in parts["boxes"]:
                box.set_facecolor(colors[name])
                box.set_alpha(0.6)
        _x_axis(ax, layers)
        ax.set_title(f"attend {name}" if name != _ALL else "attend all (β/10)", fontsize="medium")
    axes[0].set_ylabel("modulation index (a − u)/(a + u)")
    fig.suptitle(
        f"Modulation index by recorded layer ({label}): a, u = a map's mean activity with and "
        "without attention;\nboxes: quartiles over maps, line: median, whiskers: 5th–95th "
        "percentiles"
    )
    return fig


def plot_modulation_summary(summary: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """Write :func:`modulation_summary_figure` as PNG and SVG; return their paths."""
    return save_figure(modulation_summary_figure(summary), out_stem)


def modulation_summary_figure(summary: pd.DataFrame) -> Figure:
    """Median |MI| and median MI against recorded layer, one line per attended layer."""
    return _line_plot(
        summary,
        [("median_abs_mi", "median |modulation index|"), ("median_mi", "median modulation index")],
        "Strength of attention's effect on activity by recorded layer: medians over maps of "
        "MI = (a − u)/(a + u), a, u = mean activity with and without attention",
    )


def plot_vector_angle(summary: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """Write :func:`vector_angle_figure` as PNG and SVG; return their paths."""
    return save_figure(vector_angle_figure(summary), out_stem)


def vector_angle_figure(summary: pd.DataFrame) -> Figure:
    """Mean ± SEM (over categories) angle to the category prototype, unattended and attended,
    and its change, by recorded layer."""
    return _line_plot(
        summary,
        [
            ("mean_angle_attended", "angle to the prototype (degrees; mean ± SEM)"),
            ("mean_delta_angle", "change with attention (degrees; mean ± SEM)"),
        ],
        "Vector angle between the category prototype and responses to positive images "
        "(mean ± SEM over categories)",
        errors={
            "mean_angle_attended": "sem_angle_attended",
            "mean_angle_unattended": "sem_angle_unattended",
            "mean_delta_angle": "sem_delta_angle",
        },
        baselines={"mean_angle_attended": "mean_angle_unattended"},
    )


def plot_population(
    summary: pd.DataFrame,
    points: pd.DataFrame,
    out_stem: str | Path,
    category: str | None = None,
) -> list[Path]:
    """Write :func:`population_figure` as PNG and SVG; return their paths."""
    return save_figure(population_figure(summary, points, category), out_stem)


def population_figure(
    summary: pd.DataFrame, points: pd.DataFrame, category: str | None = None
) -> Figure:
    """Population FSGM: mean slope of ratio on tuning by layer, and scatters for one category.

    Top row: mean ± SEM (over attended categories) of the regression slope and Pearson r.
    Below: for ``category`` (default the first) and the first (method, β), the ratio of every
    map against its tuning value, one row per attended layer and one column per recorded layer
    from the attended one on.
    """
    label, group = _combos(points)[0]
    categories = list(dict.fromkeys(str(c) for c in group["attended_category"]))
    chosen = category if category is not None else categories[0]
    if chosen not in categories:
        raise AnalysisError(
            f"category {chosen!r} was not attended in this recording; attended: {categories}"
        )
    layers = _layer_order(points)
    panel_points = _shown(group[group["attended_category"] == chosen])
    attended = _attended_order(panel_points, layers)
    colors = attended_layer_colors(attended, layers)
    n_cols = max(len(layers), 2)
    fig = Figure(figsize=(2.6 * n_cols, 2.6 * (len(attended) + 1) + 0.6), layout="constrained")
    grid = fig.add_gridspec(len(attended) + 1, n_cols)
    top_summary = _shown(summary)
    top_summary = top_summary[
        (top_summary["method"] == group["method"].iloc[0])
        & (top_summary["beta"] == group["beta"].iloc[0])
    ]
    half = n_cols // 2
    for k, (column, error, ylabel) in enumerate(
        [
            ("mean_slope", "sem_slope", "slope of ratio on tuning (mean ± SEM)"),
            ("mean_r", "sem_r", "Pearson r of ratio and tuning (mean ± SEM)"),
        ]
    ):
        ax = fig.add_subplot(grid[0, k * half : (k + 1) * half])
        ax.axhline(0.0, color="0.6", linewidth=0.8)
        for name in attended:
            line = top_summary[top_summary["attended_layer"].astype(str) == name]
            x = line["recorded_layer"].map({la: i for i, la in enumerate(layers)})
            ax.errorbar(
                x,
                line[column],
                yerr=line[error],
                color=colors[name],
                marker="o",
                markersize=3,
                capsize=2,
                label=f"attend {name}",
            )
        _x_axis(ax, layers)
        ax.set_ylabel(ylabel)
        if k == 0:
            ax.legend(fontsize="x-small", frameon=False)
    for row, name in enumerate(attended, start=1):
        rows = panel_points[panel_points["attended_layer"].astype(str) == name]
        for col, layer in enumerate(layers):
            cell = rows[rows["recorded_layer"] == layer]
            if cell.empty:
                continue
            ax = fig.add_subplot(grid[row, col])
            ok = np.isfinite(cell["ratio"].to_numpy(float))
            x = cell["tuning"].to_numpy(float)[ok]
            y = cell["ratio"].to_numpy(float)[ok]
            ax.axhline(1.0, color="0.7", linewidth=0.8)
            ax.scatter(x, y, s=8, color=colors[name], alpha=0.7)
            if ok.sum() >= 2 and np.ptp(x) > 0:
                slope, intercept = np.polyfit(x, y, 1)
                xs = np.array([x.min(), x.max()])
                ax.plot(xs, intercept + slope * xs, color="black", linewidth=1)
            ax.set_title(f"{name} → {layer}", fontsize="small")
            ax.tick_params(labelsize="x-small")
            ax.set_xlabel("tuning", fontsize="x-small")
            ax.set_ylabel("ratio", fontsize="x-small")
    fig.suptitle(
        f"Population FSGM ({label}). Top: mean ± SEM over attended categories; below: each "
        f"map's activity ratio against its tuning for {chosen}, black: least-squares line"
    )
    return fig


def plot_spatial(summary: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """Write :func:`spatial_figure` as PNG and SVG; return their paths."""
    return save_figure(spatial_figure(summary), out_stem)


def spatial_figure(summary: pd.DataFrame) -> Figure:
    """Median MI at the attended object's quadrant and at the other quadrants, by layer."""
    return _line_plot(
        summary,
        [
            ("median_mi_target", "median MI, quadrant with the attended object"),
            ("median_mi_other", "median MI, other quadrants"),
            ("median_mi_difference", "median (target − other)"),
        ],
        "Is feature attention spatially global? Medians over maps of the modulation index by "
        "position (array images)",
    )


def plot_report(
    tables: Mapping[str, pd.DataFrame], folder: str | Path, category: str | None = None
) -> list[Path]:
    """Every figure the tables of :func:`bioattn.analysis.neural.analyze_recording` allow."""
    folder = Path(folder)
    paths: list[Path] = []
    if "fsgm_summary" in tables:
        paths += plot_fsgm_summary(tables["fsgm_summary"], folder / "fsgm_slope_intercept")
        paths += plot_fsgm_bins(tables["fsgm_bins"], folder / "fsgm_ratio_by_rank")
    if "population_summary" in tables:
        paths += plot_population(
            tables["population_summary"],
            tables["population_points"],
            folder / "population_fsgm",
            category,
        )
    if "modulation_units" in tables:
        paths += plot_modulation_index(tables["modulation_units"], folder / "modulation_index")
        paths += plot_modulation_summary(
            tables["modulation_summary"], folder / "modulation_index_median"
        )
    if "angle_summary" in tables:
        paths += plot_vector_angle(tables["angle_summary"], folder / "vector_angle")
    if "spatial_summary" in tables:
        paths += plot_spatial(tables["spatial_summary"], folder / "spatial_global")
    return paths
