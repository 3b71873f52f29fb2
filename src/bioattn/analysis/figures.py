"""Figures for attention sweeps: performance increase by layer, rates, d′ and criterion vs β.

Figures are built with :class:`matplotlib.figure.Figure` directly (never pyplot), so they render
with the Agg (PNG) and SVG backends without a display and without changing the user's backend.
Each figure has a builder, ``<name>_figure(...)``, that returns the
:class:`~matplotlib.figure.Figure` (for notebooks and papers), and a writer, ``plot_<name>(...,
out_stem)``, that saves it twice, as ``<stem>.png`` and ``<stem>.svg`` (DESIGN.md §3), and
returns the paths. Every mean drawn has error bars, and every title says what they are.

Method colours are fixed (tuning blue, gradient red, uniform grey, shuffled controls in lighter
shades) so the same method looks the same in every panel and every figure.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bioattn.analysis.sdt import AnalysisError, layer_summary, sem, with_dprime_criterion

__all__ = [
    "METHOD_COLORS",
    "dprime_criterion_vs_beta_figure",
    "layer_order",
    "mean_and_sem",
    "method_colors",
    "performance_increase_figure",
    "plot_dprime_criterion_vs_beta",
    "plot_performance_increase",
    "plot_rates_vs_beta",
    "rates_vs_beta_figure",
    "save_figure",
    "sem_lines",
    "spread_units",
]

#: Fixed colours for the usual methods; other methods get the remaining tab10 colours in order.
METHOD_COLORS: dict[str, str] = {
    "tuning": "#1f77b4",
    "gradient": "#d62728",
    "uniform": "#7f7f7f",
    "shuffled-tuning": "#9ecae1",
    "shuffled-gradient": "#fc9272",
    "spatial": "#2ca02c",
    # no attention, and the spatial cue's validity (bioattn psychophysics)
    "none": "#000000",
    "valid": "#17becf",
    "neutral": "#525252",
    "invalid": "#9467bd",
}
_METHOD_ORDER = tuple(METHOD_COLORS)
_EXTRA_COLORS = (
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
)
_ALL_LAYER = "all"
_PANEL_W = 4.6
_PANEL_H = 3.6


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``fig`` to ``<stem>.png`` (150 dpi) and ``<stem>.svg`` and close it.

    Creates the parent folder. A ``.png`` or ``.svg`` suffix on ``stem`` is dropped. The SVG is
    written without a date and with a fixed id salt so that reruns give identical files.
    Returns ``[png_path, svg_path]``.
    """
    stem = Path(stem)
    if stem.suffix.lower() in (".png", ".svg"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    png = stem.parent / f"{stem.name}.png"
    svg = stem.parent / f"{stem.name}.svg"
    try:
        fig.savefig(png, dpi=150, bbox_inches="tight")
        with matplotlib.rc_context({"svg.hashsalt": "bioattn"}):
            fig.savefig(svg, bbox_inches="tight", metadata={"Date": None})
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:  # only figures made through pyplot are registered there
            pyplot.close(fig)
    return [png, svg]


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """Colour for each method: fixed ones from :data:`METHOD_COLORS`, others in a stable order."""
    colors: dict[str, str] = {}
    extra = iter(_EXTRA_COLORS)
    for method in _ordered_methods(methods):
        if method in METHOD_COLORS:
            colors[method] = METHOD_COLORS[method]
        else:
            colors[method] = next(extra, "#000000")
    return colors


def _ordered_methods(methods: Iterable[str]) -> list[str]:
    unique = list(dict.fromkeys(str(m) for m in methods))
    known = [m for m in _METHOD_ORDER if m in unique]
    return known + sorted(m for m in unique if m not in _METHOD_ORDER)


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AnalysisError(
            f"{what} needs columns {missing} that the table lacks; it has {list(frame.columns)}"
        )
    if frame.empty:
        raise AnalysisError(f"{what} got an empty table; there is nothing to plot")


def _panels(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Split into one panel per image_type (per task and image_type when several tasks)."""
    several_tasks = "task" in frame.columns and frame["task"].nunique() > 1
    keys = ["task", "image_type"] if several_tasks else ["image_type"]
    panels = []
    for values, group in frame.groupby(keys, sort=True):
        label = ": ".join(str(v) for v in values)
        panels.append((label, group))
    return panels


def spread_units(frame: pd.DataFrame) -> str:
    """What a mean in ``frame`` is taken over, for captions: "categories" (or "orientations"
    for the orientation tasks), preceded by "networks ×" when several networks are pooled."""
    orientation = "task" in frame.columns and bool(
        len(frame) and frame["task"].astype(str).str.startswith("orientation").all()
    )
    units = "orientations" if orientation else "categories"
    if "network" in frame.columns and frame["network"].nunique() > 1:
        return f"networks × {units}"
    return units


def _task_label(frame: pd.DataFrame) -> str:
    if "task" in frame.columns and frame["task"].nunique() == 1:
        return f"{frame['task'].iloc[0]} task: "
    return ""


def layer_order(frame: pd.DataFrame) -> list[str]:
    """Single layers (not "all") in network order (layer_number, else order of appearance)."""
    single = frame.loc[frame["layer"].astype(str) != _ALL_LAYER]
    if "layer_number" in single.columns:
        pairs = single[["layer", "layer_number"]].drop_duplicates()
        pairs = pairs.sort_values("layer_number", kind="mergesort")
        return list(dict.fromkeys(str(v) for v in pairs["layer"]))
    return list(dict.fromkeys(str(v) for v in single["layer"]))


def _method_legend(ax: Any, colors: dict[str, str], extra: Sequence[Line2D] = ()) -> None:
    handles = [Line2D([], [], color=c, marker="o", label=m) for m, c in colors.items()]
    ax.legend(handles=[*handles, *extra], fontsize="small", frameon=False)


def plot_performance_increase(summary: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """Write :func:`performance_increase_figure` to ``<out_stem>.png`` and ``.svg``; return
    their paths."""
    return save_figure(performance_increase_figure(summary), out_stem)


def performance_increase_figure(summary: pd.DataFrame) -> Figure:
    """The performance increase by layer, with error bars.

    ``summary`` is the output of :func:`~bioattn.analysis.sdt.layer_summary` (mean ± SEM across
    categories; a gains table from :func:`~bioattn.analysis.sdt.performance_gains` is summarised
    first) or of :func:`~bioattn.analysis.findings.effects` (mean with its 95 % interval over
    networks and categories, drawn when the columns ``ci_low_pp``/``ci_high_pp`` are there).
    One panel per image_type, x = attended layer in network order, one line with error bars per
    method; the all-layers condition (layer "all", β/10 at every layer) is a separate point at
    the far right.
    """
    if "mean_delta_pp" not in summary.columns and "delta_pp" in summary.columns:
        summary = layer_summary(summary)
    with_ci = {"ci_low_pp", "ci_high_pp"} <= set(summary.columns)
    _require(
        summary,
        ["image_type", "layer", "method", "mean_delta_pp"] + ([] if with_ci else ["sem_delta_pp"]),
        "performance_increase_figure",
    )

    def error_bars(rows: pd.DataFrame) -> Any:
        if not with_ci:
            return rows["sem_delta_pp"]
        mean = rows["mean_delta_pp"].to_numpy(float)
        low, high = rows["ci_low_pp"].to_numpy(float), rows["ci_high_pp"].to_numpy(float)
        return np.vstack([mean - low, high - mean])

    layers = layer_order(summary)
    has_all = bool((summary["layer"].astype(str) == _ALL_LAYER).any())
    x_of = {layer: float(i) for i, layer in enumerate(layers)}
    x_all = len(layers) + 0.5 if layers else 0.0
    colors = method_colors(summary["method"])
    n_methods = len(colors)
    panels = _panels(summary)

    fig = Figure(figsize=(_PANEL_W * len(panels), _PANEL_H + 0.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (label, panel) in zip(axes, panels, strict=True):
        ax.axhline(0.0, color="0.6", linewidth=0.8)
        for j, (method, color) in enumerate(colors.items()):
            rows = panel.loc[panel["method"].astype(str) == method]
            if rows.empty:
                continue
            offset = (j - (n_methods - 1) / 2) * 0.08
            single = rows.loc[rows["layer"].astype(str) != _ALL_LAYER].copy()
            single["_x"] = single["layer"].astype(str).map(x_of)
            single = single.sort_values("_x")
            ax.errorbar(
                single["_x"] + offset,
                single["mean_delta_pp"],
                yerr=error_bars(single),
                color=color,
                marker="o",
                markersize=4,
                capsize=3,
                linewidth=1.5,
                label=method,
            )
            every = rows.loc[rows["layer"].astype(str) == _ALL_LAYER]
            if not every.empty:
                ax.errorbar(
                    np.full(len(every), x_all + offset),
                    every["mean_delta_pp"],
                    yerr=error_bars(every),
                    color=color,
                    marker="s",
                    markersize=5,
                    capsize=3,
                    linestyle="none",
                )
        ticks = [x_of[layer] for layer in layers]
        labels = list(layers)
        if has_all:
            ax.axvline(x_all - 0.75, color="0.85", linewidth=0.8)
            ticks.append(x_all)
            labels.append("all (β/10)")
        ax.set_xticks(ticks)
        rotate = len(labels) > 5
        ax.set_xticklabels(labels, rotation=45 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(min(ticks, default=0.0) - 0.5, max(ticks, default=0.0) + 0.5)
        ax.set_title(label)
        ax.set_xlabel("attended layer")
    axes[0].set_ylabel("performance increase (percentage points)")
    _method_legend(axes[-1], colors)
    units = spread_units(summary)
    if not with_ci:
        what = f"best performance increase with attention (mean ± SEM across {units})"
    elif "n_networks" in summary and int(summary["n_networks"].max()) > 1:
        units = units.removeprefix("networks × ")
        what = (
            f"performance increase at the β chosen on selection images (mean, 95 % interval "
            f"over {int(summary['n_networks'].max())} networks × {units})"
        )
    else:
        what = (
            "performance increase at the β chosen on selection images "
            f"(mean, 95 % interval over {units})"
        )
    fig.suptitle(f"{_task_label(summary)}{what}")
    return fig


def _select_layer(table: pd.DataFrame, layer: str | int | None) -> tuple[pd.DataFrame, str]:
    """Rows of one layer: by alias (str), by layer_number (int), or the last single layer."""
    names = table["layer"].astype(str)
    if layer is None:
        single = table.loc[names != _ALL_LAYER]
        if single.empty:
            raise AnalysisError("the table has no single-layer rows; pass layer='all' explicitly")
        order = layer_order(single)
        chosen = order[-1]
    elif isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        if "layer_number" not in table.columns:
            raise AnalysisError(
                f"layer={layer} is a layer number but the table has no layer_number column"
            )
        match = table.loc[table["layer_number"] == int(layer), "layer"].astype(str).unique()
        if len(match) == 0:
            valid = sorted(int(v) for v in table["layer_number"].unique())
            raise AnalysisError(f"layer number {layer} is not in the table; valid: {valid}")
        chosen = str(match[0])
    else:
        chosen = str(layer)
        if chosen not in set(names):
            raise AnalysisError(
                f"layer {chosen!r} is not in the table; valid layers: "
                f"{layer_order(table) + ([_ALL_LAYER] if (names == _ALL_LAYER).any() else [])}"
            )
    return table.loc[names == chosen], chosen


def mean_and_sem(frame: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean and SEM (as ``sem_<metric>``) of each metric over the rows of each ``keys`` group
    (the units: categories, or networks × categories), for error bars."""
    grouped = frame.groupby(list(keys), sort=True)[list(metrics)]
    return grouped.mean().join(grouped.agg(sem).add_prefix("sem_")).reset_index()


def sem_lines(
    ax: Axes,
    means: pd.DataFrame,
    x: str,
    column: str,
    colors: dict[str, str],
    linestyle: str = "-",
    label: bool = True,
) -> None:
    """One line per method (in its colour) of ``means[column]`` against ``means[x]``, with
    ± ``sem_<column>`` error bars (a table from :func:`mean_and_sem`); ``label`` names each
    line after its method for the legend."""
    for method, color in colors.items():
        line = means.loc[means["method"].astype(str) == method].sort_values(x)
        if line.empty:
            continue
        ax.errorbar(
            line[x],
            line[column],
            yerr=line[f"sem_{column}"],
            color=color,
            marker="o",
            markersize=3,
            capsize=2,
            linestyle=linestyle,
            label=method if label else None,
        )


def _curve_means(rows: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    keys = [k for k in ("task", "image_type", "method") if k in rows.columns] + ["beta"]
    return mean_and_sem(rows, keys, metrics)


def plot_rates_vs_beta(
    table: pd.DataFrame, out_stem: str | Path, layer: str | int | None = None
) -> list[Path]:
    """Write :func:`rates_vs_beta_figure` as PNG and SVG; return their paths."""
    return save_figure(rates_vs_beta_figure(table, layer), out_stem)


def rates_vs_beta_figure(table: pd.DataFrame, layer: str | int | None = None) -> Figure:
    """Hit rate (TP, solid) and false-alarm rate (FP, dashed) against β for one layer.

    Rates are mean ± SEM across categories (orientations; networks × categories when the
    table pools several networks). ``layer`` is a layer alias (e.g. ``"conv5_3"`` or
    ``"all"``) or a layer number; by default the last single layer in network order. One panel
    per image_type and one colour per method.
    """
    _require(table, ["image_type", "layer", "method", "beta", "tp", "fp"], "rates_vs_beta_figure")
    rows, chosen = _select_layer(table, layer)
    means = _curve_means(rows, ["tp", "fp"])
    units = spread_units(rows)
    colors = method_colors(means["method"])
    panels = _panels(means)

    fig = Figure(figsize=(_PANEL_W * len(panels), _PANEL_H + 0.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (label, panel) in zip(axes, panels, strict=True):
        sem_lines(ax, panel, "beta", "tp", colors, label=False)
        sem_lines(ax, panel, "beta", "fp", colors, linestyle="--", label=False)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(label)
        ax.set_xlabel("β" + (" (β/10 at every layer)" if chosen == _ALL_LAYER else ""))
    axes[0].set_ylabel(f"rate (mean ± SEM across {units})")
    styles = [
        Line2D([], [], color="black", label="TP (hit rate)"),
        Line2D([], [], color="black", linestyle="--", label="FP (false-alarm rate)"),
    ]
    _method_legend(axes[-1], colors, styles)
    fig.suptitle(
        f"{_task_label(rows)}hit and false-alarm rates vs β, attention at {chosen} "
        f"(mean ± SEM across {units})"
    )
    return fig


def plot_dprime_criterion_vs_beta(
    table: pd.DataFrame, out_stem: str | Path, layer: str | int | None = None
) -> list[Path]:
    """Write :func:`dprime_criterion_vs_beta_figure` as PNG and SVG; return their paths."""
    return save_figure(dprime_criterion_vs_beta_figure(table, layer), out_stem)


def dprime_criterion_vs_beta_figure(table: pd.DataFrame, layer: str | int | None = None) -> Figure:
    """d′ (top row) and criterion (bottom row) against β for one layer.

    Values are mean ± SEM across categories (computed from ``tp`` and ``fp`` if the table
    lacks ``dprime``/``criterion``). Layer selection and layout as in
    :func:`rates_vs_beta_figure`: one column per image_type, one colour per method.
    """
    what = "dprime_criterion_vs_beta_figure"
    _require(table, ["image_type", "layer", "method", "beta"], what)
    table = with_dprime_criterion(table, what)
    rows, chosen = _select_layer(table, layer)
    means = _curve_means(rows, ["dprime", "criterion"])
    units = spread_units(rows)
    colors = method_colors(means["method"])
    panels = _panels(means)

    fig = Figure(figsize=(_PANEL_W * len(panels), 2 * _PANEL_H), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False, sharex="col", sharey="row")
    for col, (label, panel) in enumerate(panels):
        top, bottom = axes[0, col], axes[1, col]
        sem_lines(top, panel, "beta", "dprime", colors, label=False)
        sem_lines(bottom, panel, "beta", "criterion", colors, label=False)
        bottom.axhline(0.0, color="0.6", linewidth=0.8)
        top.set_title(label)
        bottom.set_xlabel("β" + (" (β/10 at every layer)" if chosen == _ALL_LAYER else ""))
    axes[0, 0].set_ylabel(f"d′ (mean ± SEM across {units})")
    axes[1, 0].set_ylabel(f"criterion c (mean ± SEM across {units})")
    _method_legend(axes[0, -1], colors)
    fig.suptitle(
        f"{_task_label(rows)}sensitivity and criterion vs β, attention at {chosen} "
        f'(c = 0: no bias; c < 0: more "yes")'
    )
    return fig
