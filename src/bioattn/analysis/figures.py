"""Figures for attention sweeps: performance increase by layer, rates, d′ and criterion vs β.

Figures are built with :class:`matplotlib.figure.Figure` directly (never pyplot), so they render
with the Agg (PNG) and SVG backends without a display and without changing the user's backend.
Every figure is written twice, as ``<stem>.png`` and ``<stem>.svg`` (DESIGN.md §3).

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
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bioattn.analysis.sdt import AnalysisError, layer_summary, with_dprime_criterion

__all__ = [
    "METHOD_COLORS",
    "layer_order",
    "method_colors",
    "plot_dprime_criterion_vs_beta",
    "plot_performance_increase",
    "plot_rates_vs_beta",
    "save_figure",
]

#: Fixed colours for the usual methods; other methods get the remaining tab10 colours in order.
METHOD_COLORS: dict[str, str] = {
    "tuning": "#1f77b4",
    "gradient": "#d62728",
    "uniform": "#7f7f7f",
    "shuffled-tuning": "#9ecae1",
    "shuffled-gradient": "#fc9272",
    "spatial": "#2ca02c",
}
_METHOD_ORDER = ("tuning", "gradient", "uniform", "shuffled-tuning", "shuffled-gradient", "spatial")
_EXTRA_COLORS = (
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
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
    """Plot the performance increase by layer, with error bars.

    ``summary`` is the output of :func:`~bioattn.analysis.sdt.layer_summary` (mean ± SEM across
    categories; a gains table from :func:`~bioattn.analysis.sdt.performance_gains` is summarised
    first) or of :func:`~bioattn.analysis.findings.effects` (mean with its 95 % interval over
    networks and categories, drawn when the columns ``ci_low_pp``/``ci_high_pp`` are there).
    One panel per image_type, x = attended layer in network order, one line with error bars per
    method; the all-layers condition (layer "all", β/10 at every layer) is a separate point at
    the far right. Writes ``<out_stem>.png`` and ``.svg`` and returns their paths.
    """
    if "mean_delta_pp" not in summary.columns and "delta_pp" in summary.columns:
        summary = layer_summary(summary)
    with_ci = {"ci_low_pp", "ci_high_pp"} <= set(summary.columns)
    _require(
        summary,
        ["image_type", "layer", "method", "mean_delta_pp"] + ([] if with_ci else ["sem_delta_pp"]),
        "plot_performance_increase",
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
    if not with_ci:
        what = "best performance increase with attention (mean ± SEM across categories)"
    elif "n_networks" in summary and int(summary["n_networks"].max()) > 1:
        what = (
            f"performance increase at the β chosen on selection images (mean, 95 % interval "
            f"over {int(summary['n_networks'].max())} networks × categories)"
        )
    else:
        what = (
            "performance increase at the β chosen on selection images "
            "(mean, 95 % interval over categories)"
        )
    fig.suptitle(f"{_task_label(summary)}{what}")
    return save_figure(fig, out_stem)


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


def _mean_over_categories(rows: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    keys = [k for k in ("task", "image_type", "method") if k in rows.columns] + ["beta"]
    return rows.groupby(keys, sort=True)[list(metrics)].mean().reset_index()


def plot_rates_vs_beta(
    table: pd.DataFrame, out_stem: str | Path, layer: str | int | None = None
) -> list[Path]:
    """Plot hit rate (TP, solid) and false-alarm rate (FP, dashed) against β for one layer.

    Rates are averaged across categories. ``layer`` is a layer alias (e.g. ``"conv5_3"`` or
    ``"all"``) or a layer number; by default the last single layer in network order. One panel
    per image_type and one colour per method. Returns the PNG and SVG paths.
    """
    _require(table, ["image_type", "layer", "method", "beta", "tp", "fp"], "plot_rates_vs_beta")
    rows, chosen = _select_layer(table, layer)
    means = _mean_over_categories(rows, ["tp", "fp"])
    colors = method_colors(means["method"])
    panels = _panels(means)

    fig = Figure(figsize=(_PANEL_W * len(panels), _PANEL_H + 0.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (label, panel) in zip(axes, panels, strict=True):
        for method, color in colors.items():
            line = panel.loc[panel["method"].astype(str) == method].sort_values("beta")
            if line.empty:
                continue
            ax.plot(line["beta"], line["tp"], color=color, marker="o", markersize=3)
            ax.plot(line["beta"], line["fp"], color=color, marker="o", markersize=3, ls="--")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(label)
        ax.set_xlabel("β" + (" (β/10 at every layer)" if chosen == _ALL_LAYER else ""))
    axes[0].set_ylabel("rate (mean across categories)")
    styles = [
        Line2D([], [], color="black", label="TP (hit rate)"),
        Line2D([], [], color="black", linestyle="--", label="FP (false-alarm rate)"),
    ]
    _method_legend(axes[-1], colors, styles)
    fig.suptitle(f"{_task_label(rows)}hit and false-alarm rates vs β, attention at {chosen}")
    return save_figure(fig, out_stem)


def plot_dprime_criterion_vs_beta(
    table: pd.DataFrame, out_stem: str | Path, layer: str | int | None = None
) -> list[Path]:
    """Plot d′ (top row) and criterion (bottom row) against β for one layer.

    Values are averaged across categories (computed from ``tp`` and ``fp`` if the table lacks
    ``dprime``/``criterion``). Layer selection and layout as in :func:`plot_rates_vs_beta`: one
    column per image_type, one colour per method. Returns the PNG and SVG paths.
    """
    _require(table, ["image_type", "layer", "method", "beta"], "plot_dprime_criterion_vs_beta")
    table = with_dprime_criterion(table, "plot_dprime_criterion_vs_beta")
    rows, chosen = _select_layer(table, layer)
    means = _mean_over_categories(rows, ["dprime", "criterion"])
    colors = method_colors(means["method"])
    panels = _panels(means)

    fig = Figure(figsize=(_PANEL_W * len(panels), 2 * _PANEL_H), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False, sharex="col", sharey="row")
    for col, (label, panel) in enumerate(panels):
        top, bottom = axes[0, col], axes[1, col]
        for method, color in colors.items():
            line = panel.loc[panel["method"].astype(str) == method].sort_values("beta")
            if line.empty:
                continue
            top.plot(line["beta"], line["dprime"], color=color, marker="o", markersize=3)
            bottom.plot(line["beta"], line["criterion"], color=color, marker="o", markersize=3)
        bottom.axhline(0.0, color="0.6", linewidth=0.8)
        top.set_title(label)
        bottom.set_xlabel("β" + (" (β/10 at every layer)" if chosen == _ALL_LAYER else ""))
    axes[0, 0].set_ylabel("d′ (mean across categories)")
    axes[1, 0].set_ylabel("criterion c (mean across categories)")
    _method_legend(axes[0, -1], colors)
    fig.suptitle(f"{_task_label(rows)}sensitivity and criterion vs β, attention at {chosen}")
    return save_figure(fig, out_stem)
