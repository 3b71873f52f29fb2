"""Interactive figures of the report (plotly): the same quantities as the PNG/SVG figures of
:mod:`bioattn.analysis.figures`, with hover values and legend toggles.

Colours come from :func:`bioattn.analysis.figures.method_colors`, so a method has the same colour
here as in every matplotlib figure; a method is one legend group, so a click on its legend entry
hides it in every panel. Hover texts are formatted by :func:`bioattn.report.tables.format_number`
(the tables' precision).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bioattn.analysis.figures import layer_order, method_colors
from bioattn.report.tables import format_number

__all__ = [
    "curves_figure",
    "grouped_bars_figure",
    "lines_figure",
    "performance_increase_figure",
    "runs_comparison_figure",
    "sdt_by_layer_figure",
]

_ALL = "all"
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x")
_METRICS = {
    "performance": "performance (%)",
    "dprime": "d′",
    "criterion": "criterion c",
    "tp": "hit rate (%)",
    "fp": "false-alarm rate (%)",
}


def _layout(fig: go.Figure, height: int, **extra: object) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        font={"family": "system-ui, sans-serif", "size": 13},
        hoverlabel={"font": {"family": "system-ui, sans-serif"}},
        legend={"title": {"text": "click to hide / show"}, "groupclick": "togglegroup"},
        **extra,
    )
    return fig


def _panels(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel per image type (per task and image type when several tasks)."""
    keys = [k for k in ("task", "image_type") if k in frame.columns and frame[k].nunique() > 1]
    if not keys:
        label = str(frame["image_type"].iloc[0]) if "image_type" in frame.columns else ""
        return [(label, frame)]
    return [
        (": ".join(str(v) for v in (values if isinstance(values, tuple) else (values,))), group)
        for values, group in frame.groupby(keys, sort=True)
    ]


def _x_layers(summary: pd.DataFrame) -> list[str]:
    layers = layer_order(summary)
    if (summary["layer"].astype(str) == _ALL).any():
        layers.append(_ALL)
    return layers


def _interval(rows: pd.DataFrame, mean: str, low: str | None, high: str | None, sem: str | None):
    """(error_y dict or None, hover text of each row)."""
    values = rows[mean].to_numpy(float)
    if low and high and {low, high} <= set(rows.columns):
        lo, hi = rows[low].to_numpy(float), rows[high].to_numpy(float)
        text = [
            f"{format_number(mean, m)} [{format_number(mean, a)}, {format_number(mean, b)}]"
            for m, a, b in zip(values, lo, hi, strict=True)
        ]
        error = {"type": "data", "array": hi - values, "arrayminus": values - lo}
        return error, text
    if sem and sem in rows.columns:
        spread = rows[sem].to_numpy(float)
        text = [
            f"{format_number(mean, m)} ± {format_number(mean, s).lstrip('+')}"
            for m, s in zip(values, spread, strict=True)
        ]
        return {"type": "data", "array": spread}, text
    return None, [format_number(mean, m) for m in values]


def performance_increase_figure(summary: pd.DataFrame) -> go.Figure:
    """Δ performance (pp) by attended layer, one panel per image type, one colour per method.

    ``summary`` holds ``mean_delta_pp`` with ``ci_low_pp``/``ci_high_pp`` (``effects.csv``) or
    ``sem_delta_pp`` (``summary.csv``); the all-layers condition is the rightmost point.
    """
    return _by_layer(
        summary,
        [("mean_delta_pp", "ci_low_pp", "ci_high_pp", "sem_delta_pp", "Δ performance (pp)")],
    )


def sdt_by_layer_figure(summary: pd.DataFrame) -> go.Figure | None:
    """Δd′ (top) and Δc (bottom) by attended layer at the chosen β; None without those columns."""
    if {"dprime_mean", "criterion_mean"} <= set(summary.columns):
        rows = [
            ("dprime_mean", "dprime_ci_low", "dprime_ci_high", None, "Δd′"),
            ("criterion_mean", "criterion_ci_low", "criterion_ci_high", None, "Δc"),
        ]
    elif {"mean_delta_dprime", "mean_delta_criterion"} <= set(summary.columns):
        rows = [
            ("mean_delta_dprime", None, None, "sem_delta_dprime", "Δd′"),
            ("mean_delta_criterion", None, None, "sem_delta_criterion", "Δc"),
        ]
    else:
        return None
    return _by_layer(summary, rows)


def _by_layer(
    summary: pd.DataFrame, metrics: Sequence[tuple[str, str | None, str | None, str | None, str]]
) -> go.Figure:
    panels = _panels(summary)
    layers = _x_layers(summary)
    colors = method_colors(summary["method"])
    fig = make_subplots(
        rows=len(metrics),
        cols=len(panels),
        shared_yaxes="rows",
        shared_xaxes=True,
        subplot_titles=[label for label, _ in panels] + [""] * (len(panels) * (len(metrics) - 1)),
        horizontal_spacing=0.05,
        vertical_spacing=0.08,
    )
    for r, (mean, low, high, sem, label) in enumerate(metrics, start=1):
        for c, (panel_label, panel) in enumerate(panels, start=1):
            for method, color in colors.items():
                rows = panel.loc[panel["method"].astype(str) == method].copy()
                if rows.empty:
                    continue
                rows["_x"] = rows["layer"].astype(str).map({la: i for i, la in enumerate(layers)})
                rows = rows.sort_values("_x")
                error, text = _interval(rows, mean, low, high, sem)
                beta = (
                    [
                        f", best β {format_number('mean_best_beta', b)}"
                        for b in rows["mean_best_beta"]
                    ]
                    if "mean_best_beta" in rows.columns
                    else [""] * len(rows)
                )
                hover = [
                    f"{method} · {layer} · {panel_label}<br>{label}: {t}{b}"
                    for layer, t, b in zip(rows["layer"].astype(str), text, beta, strict=True)
                ]
                fig.add_trace(
                    go.Scatter(
                        x=rows["layer"].astype(str).tolist(),
                        y=rows[mean].tolist(),
                        error_y=error,
                        mode="lines+markers",
                        name=method,
                        legendgroup=method,
                        showlegend=r == 1 and c == 1,
                        line={"color": color},
                        marker={"color": color, "size": 7},
                        customdata=hover,
                        hovertemplate="%{customdata}<extra></extra>",
                    ),
                    row=r,
                    col=c,
                )
            fig.update_xaxes(categoryorder="array", categoryarray=layers, row=r, col=c)
            fig.add_hline(y=0, line={"color": "#999", "width": 1}, row=r, col=c)
        fig.update_yaxes(title_text=label, row=r, col=1)
    fig.update_xaxes(title_text="attended layer", row=len(metrics))
    return _layout(fig, height=160 + 260 * len(metrics))


def curves_figure(
    table: pd.DataFrame,
    x: str = "beta",
    metrics: Sequence[str] = ("performance", "dprime", "criterion"),
    color: str = "method",
) -> go.Figure:
    """Metrics (rows) against ``x`` (β or SNR), averaged over categories; one panel per image
    type, one colour per method (or ``color`` column). With several attended layers a menu
    chooses the layer (the last single layer first)."""
    keys = [k for k in ("task", "image_type", "layer", color, x) if k in table.columns]
    means = table.groupby(keys, sort=True)[list(metrics)].mean().reset_index()
    layers = _x_layers(means) if "layer" in means.columns else [""]
    shown = [la for la in layers if la != _ALL][-1:] or layers[-1:]
    panels = _panels(means)
    colors = method_colors(means[color])
    fig = make_subplots(
        rows=len(metrics),
        cols=len(panels),
        shared_xaxes=True,
        shared_yaxes="rows",
        subplot_titles=[label for label, _ in panels] + [""] * (len(panels) * (len(metrics) - 1)),
        horizontal_spacing=0.05,
        vertical_spacing=0.06,
    )
    trace_layers: list[str] = []
    x_label = {"beta": "β", "snr": "signal-to-noise ratio"}.get(x, x)
    for r, metric in enumerate(metrics, start=1):
        scale = 100.0 if metric in ("performance", "tp", "fp", "tn") else 1.0
        for c, (panel_label, panel) in enumerate(panels, start=1):
            for layer in layers:
                rows_l = panel if layer == "" else panel.loc[panel["layer"].astype(str) == layer]
                for method, hue in colors.items():
                    rows = rows_l.loc[rows_l[color].astype(str) == method].sort_values(x)
                    if rows.empty:
                        continue
                    hover = [
                        f"{method} · {layer or panel_label}<br>{x_label} {format_number(x, xv)}: "
                        f"{_METRICS.get(metric, metric)} {format_number(metric, yv)}"
                        for xv, yv in zip(rows[x], rows[metric], strict=True)
                    ]
                    fig.add_trace(
                        go.Scatter(
                            x=rows[x].tolist(),
                            y=(rows[metric] * scale).tolist(),
                            mode="lines+markers",
                            name=method,
                            legendgroup=method,
                            showlegend=r == 1 and c == 1 and layer in [*shown, ""],
                            visible=layer in shown or layer == "",
                            line={"color": hue},
                            marker={"color": hue, "size": 6},
                            customdata=hover,
                            hovertemplate="%{customdata}<extra></extra>",
                        ),
                        row=r,
                        col=c,
                    )
                    trace_layers.append(layer)
        fig.update_yaxes(title_text=_METRICS.get(metric, metric), row=r, col=1)
    fig.update_xaxes(title_text=x_label, row=len(metrics))
    extra: dict[str, object] = {}
    if len(layers) > 1:
        first = {}
        buttons = []
        for layer in layers:
            visible = [t == layer for t in trace_layers]
            legend = []
            for i, t in enumerate(trace_layers):
                name = fig.data[i].name
                legend.append(t == layer and (layer, name) not in first)
                if t == layer:
                    first.setdefault((layer, name), i)
            label = "all layers (β/10 each)" if layer == _ALL else f"attention at {layer}"
            buttons.append(
                {
                    "label": label,
                    "method": "restyle",
                    "args": [{"visible": visible, "showlegend": legend}],
                }
            )
        extra["updatemenus"] = [
            {
                "buttons": buttons,
                "active": layers.index(shown[0]),
                "x": 0,
                "xanchor": "left",
                "y": 1.12,
                "yanchor": "bottom",
            }
        ]
        fig.update_layout(margin={"t": 90})
    return _layout(fig, height=140 + 230 * len(metrics), **extra)


def runs_comparison_figure(summaries: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Δ performance by layer of several runs: colour per method, line style per run."""
    frames = [s.assign(_run=name) for name, s in summaries.items()]
    every = pd.concat(frames, ignore_index=True)
    panels = _panels(every)
    layers = _x_layers(every)
    colors = method_colors(every["method"])
    fig = make_subplots(
        rows=1,
        cols=len(panels),
        shared_yaxes=True,
        subplot_titles=[label for label, _ in panels],
        horizontal_spacing=0.05,
    )
    for c, (panel_label, panel) in enumerate(panels, start=1):
        for k, run in enumerate(summaries):
            for method, color in colors.items():
                rows = panel.loc[(panel["_run"] == run) & (panel["method"].astype(str) == method)]
                if rows.empty:
                    continue
                rows = rows.assign(
                    _x=rows["layer"].astype(str).map({la: i for i, la in enumerate(layers)})
                ).sort_values("_x")
                error, text = _interval(
                    rows, "mean_delta_pp", "ci_low_pp", "ci_high_pp", "sem_delta_pp"
                )
                hover = [
                    f"{run} · {method} · {layer} · {panel_label}<br>Δ performance (pp): {t}"
                    for layer, t in zip(rows["layer"].astype(str), text, strict=True)
                ]
                fig.add_trace(
                    go.Scatter(
                        x=rows["layer"].astype(str).tolist(),
                        y=rows["mean_delta_pp"].tolist(),
                        error_y=error,
                        mode="lines+markers",
                        name=f"{run} · {method}",
                        legendgroup=f"{run} · {method}",
                        showlegend=c == 1,
                        line={"color": color, "dash": _DASHES[k % len(_DASHES)]},
                        marker={"color": color, "size": 7, "symbol": _SYMBOLS[k % len(_SYMBOLS)]},
                        customdata=hover,
                        hovertemplate="%{customdata}<extra></extra>",
                    ),
                    row=1,
                    col=c,
                )
        fig.update_xaxes(categoryorder="array", categoryarray=layers, row=1, col=c)
        fig.add_hline(y=0, line={"color": "#999", "width": 1}, row=1, col=c)
    fig.update_yaxes(title_text="Δ performance (pp)", row=1, col=1)
    fig.update_xaxes(title_text="attended layer")
    return _layout(fig, height=460)


def grouped_bars_figure(
    frame: pd.DataFrame, category: str, value: str, color: str, label: str,
    low: str | None = None, high: str | None = None,
) -> go.Figure:  # fmt: skip
    """Bars of ``value`` per ``category``, one colour per ``color`` value (methods' colours), one
    panel per image type; ``low``/``high`` columns give error bars."""
    panels = _panels(frame)
    colors = method_colors(frame[color])
    fig = make_subplots(
        rows=1, cols=len(panels), shared_yaxes=True,
        subplot_titles=[p for p, _ in panels], horizontal_spacing=0.05,
    )  # fmt: skip
    for c, (panel_label, panel) in enumerate(panels, start=1):
        for name, hue in colors.items():
            rows = panel.loc[panel[color].astype(str) == name]
            if rows.empty:
                continue
            error, text = _interval(rows, value, low, high, None)
            hover = [
                f"{name} · {cat} · {panel_label}<br>{label}: {t}"
                for cat, t in zip(rows[category].astype(str), text, strict=True)
            ]
            fig.add_trace(
                go.Bar(
                    x=rows[category].astype(str).tolist(),
                    y=rows[value].tolist(),
                    error_y=error,
                    name=name,
                    legendgroup=name,
                    showlegend=c == 1,
                    marker={"color": hue},
                    customdata=hover,
                    hovertemplate="%{customdata}<extra></extra>",
                ),
                row=1,
                col=c,
            )
    fig.update_yaxes(title_text=label, row=1, col=1)
    return _layout(fig, height=440, barmode="group")


def lines_figure(
    frame: pd.DataFrame, x: str, ys: Sequence[str], color: str | None = None,
    x_label: str | None = None, labels: Mapping[str, str] | None = None,
) -> go.Figure:  # fmt: skip
    """Columns ``ys`` (one panel each, side by side) against ``x``, one line per ``color`` value."""
    labels = dict(labels or {})
    groups = [(str(k), g) for k, g in frame.groupby(color, sort=True)] if color else [("", frame)]
    colors = method_colors(name for name, _ in groups)
    fig = make_subplots(
        rows=1, cols=len(ys), subplot_titles=[labels.get(y, y) for y in ys],
        horizontal_spacing=0.08,
    )  # fmt: skip
    for c, y in enumerate(ys, start=1):
        for name, rows in groups:
            rows = rows.sort_values(x)
            hover = [
                f"{name}<br>{x_label or x} {format_number(x, a)}: {labels.get(y, y)} "
                f"{format_number(y, b)}"
                for a, b in zip(rows[x], rows[y], strict=True)
            ]
            fig.add_trace(
                go.Scatter(
                    x=rows[x].tolist(),
                    y=rows[y].tolist(),
                    mode="lines+markers" if len(rows) < 60 else "lines",
                    name=name or y,
                    legendgroup=name or y,
                    showlegend=c == 1,
                    line={"color": colors.get(name, "#333")},
                    customdata=hover,
                    hovertemplate="%{customdata}<extra></extra>",
                ),
                row=1,
                col=c,
            )
        fig.update_xaxes(title_text=x_label or x, row=1, col=c)
    return _layout(fig, height=420)
