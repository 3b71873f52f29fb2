"""Tables of the report: fixed precision by quantity, intervals merged into one cell, HTML.

Every number is formatted by what its column holds, never by its own magnitude, so a column
reads at one precision: percentage points with one decimal and a sign (``+14.3``), rates and
performance as percent with one decimal, d′ and criterion with two decimals, β with two,
p-values with three (``<0.001`` below), counts as integers. A mean and its interval
(``mean_delta_pp``/``ci_low_pp``/``ci_high_pp`` and the like) become one cell,
``+14.3 [+3.7, +26.2]``; a mean and its SEM become ``+14.3 ± 5.1``. Columns that hold one value
in every row are taken out of the table and named once under it. Each cell keeps its raw number
in ``data-v`` so that sorting is numeric (``layer`` sorts by ``layer_number``).
"""

from __future__ import annotations

import base64
import html
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

__all__ = ["Table", "format_duration", "format_number", "render_table"]

#: (mean, low, high, heading) column triples merged into "mean [low, high]".
_INTERVALS = (
    ("mean_delta_pp", "ci_low_pp", "ci_high_pp", "Δ performance (pp) [95 % CI]"),
    ("dprime_mean", "dprime_ci_low", "dprime_ci_high", "Δd′ [95 % CI]"),
    ("criterion_mean", "criterion_ci_low", "criterion_ci_high", "Δc [95 % CI]"),
    ("mean", "ci_low", "ci_high", "estimate [95 % CI]"),
)
#: (mean, sem, heading) column pairs merged into "mean ± sem".
_SEMS = (
    ("mean_delta_pp", "sem_delta_pp", "Δ performance (pp) ± SEM"),
    ("mean_delta_dprime", "sem_delta_dprime", "Δd′ ± SEM"),
    ("mean_delta_criterion", "sem_delta_criterion", "Δc ± SEM"),
)
_PERCENT = {
    "performance",
    "tp",
    "tn",
    "fp",
    "baseline",
    "best_performance",
    "accuracy",
    "balanced_accuracy",
    "test_accuracy",
    "classifier_accuracy",
}
_HEADINGS = {
    "image_type": "image type",
    "delta_pp": "Δ performance (pp)",
    "selection_delta_pp": "Δ on selection images (pp)",
    "mean_selection_delta_pp": "Δ on selection images (pp)",
    "best_beta": "best β",
    "mean_best_beta": "mean best β",
    "beta": "β",
    "dprime": "d′",
    "baseline_dprime": "baseline d′",
    "best_dprime": "best d′",
    "delta_dprime": "Δd′",
    "baseline_criterion": "baseline c",
    "best_criterion": "best c",
    "criterion": "c",
    "delta_criterion": "Δc",
    "n_betas": "β values",
    "p_value": "p",
    "p_value_over_categories": "p (over categories)",
    "effect_size_dz": "dz",
    "effect_size_dz_over_categories": "dz (over categories)",
    "snr": "SNR",
}


def _fmt(x: float, spec: str) -> str:
    """``format(x, spec)``, with a value that rounds to zero shown as zero (never ``-0.0``)."""
    text = format(x, spec)
    return format(0.0, spec) if float(text) == 0 else text


def format_number(column: str, value: object, unit: str | None = None) -> str:
    """``value`` formatted at the fixed precision of ``column``'s quantity (see module doc).

    ``unit`` (from a table's ``unit`` column) sets the precision of generic estimates: ``pp``
    one decimal, anything else two. Missing values give an empty string.
    """
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
        return ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    x = float(value)
    name = column.lower()
    if name in _PERCENT:
        return _fmt(100 * x, ".1f")
    if name.endswith("_pp") or name == "delta_pp":
        return _fmt(x, "+.1f")
    if name.startswith("p_value"):
        return "<0.001" if x < 0.001 else _fmt(x, ".3f")
    if name in ("mean", "ci_low", "ci_high"):
        return _fmt(x, "+.1f") if unit == "pp" else _fmt(x, "+.2f")
    if "delta" in name or name.endswith("_mean") or "ci_" in name:
        return _fmt(x, "+.2f")
    if "beta" in name or "dprime" in name or "criterion" in name or "effect_size" in name:
        return _fmt(x, ".2f")
    if name in ("statistic", "snr", "angle", "slope") or "slope" in name or "intercept" in name:
        return _fmt(x, ".2f")
    if name.endswith("seconds") or name.endswith("_hz") or name.endswith("_ms"):
        return _fmt(x, ".1f")
    if isinstance(value, numbers.Integral) or (x.is_integer() and name.startswith("n_")):
        return str(int(x))
    return _fmt(x, ".3f")


@dataclass(frozen=True)
class Table:
    """One table of the page: its title, the data (long form, as in the CSV) and where from."""

    title: str
    frame: pd.DataFrame
    csv_name: str
    note: str = ""


@dataclass
class _Column:
    heading: str
    cell: Callable[[pd.Series], str]
    key: Callable[[pd.Series], object]
    numeric: bool


def _columns(frame: pd.DataFrame) -> tuple[list[_Column], dict[str, object]]:
    """Display columns (merged intervals, constants removed) and the constants."""
    used: set[str] = set()
    columns: list[_Column] = []
    constants: dict[str, object] = {}
    if len(frame) > 1:
        for name in frame.columns:
            values = frame[name]
            if values.nunique(dropna=False) == 1 and name not in ("layer", "method"):
                constants[name] = values.iloc[0]
                used.add(name)
    unit_of = (lambda row: str(row["unit"])) if "unit" in frame.columns else (lambda row: None)
    merged: dict[str, _Column] = {}
    for mean, low, high, heading in _INTERVALS:
        if {mean, low, high} <= set(frame.columns) and mean not in used | set(merged):

            def cell(row, mean=mean, low=low, high=high) -> str:
                unit = unit_of(row)
                parts = [format_number(c, row[c], unit) for c in (mean, low, high)]
                return f"{parts[0]} [{parts[1]}, {parts[2]}]" if parts[0] else ""

            if mean == "mean" and "unit" in frame.columns and frame["unit"].nunique() == 1:
                heading = f"estimate ({frame['unit'].iloc[0]}) [95 % CI]"
            merged[mean] = _Column(heading, cell, lambda row, m=mean: row[m], True)
            used |= {low, high}
    for mean, sem, heading in _SEMS:
        if {mean, sem} <= set(frame.columns) and mean not in used | set(merged):

            def cell(row, mean=mean, sem=sem) -> str:
                value = format_number(mean, row[mean])
                spread = format_number(mean, row[sem]).lstrip("+")
                return f"{value} ± {spread}" if value else ""

            merged[mean] = _Column(heading, cell, lambda row, m=mean: row[m], True)
            used.add(sem)
    for name in frame.columns:
        if name in merged:
            columns.append(merged[name])
        elif name in used or (name == "layer_number" and "layer" in frame.columns):
            continue
        else:
            numeric = pd.api.types.is_numeric_dtype(frame[name]) and not pd.api.types.is_bool_dtype(
                frame[name]
            )
            heading = _HEADINGS.get(name, name.replace("_", " "))
            if name.lower() in _PERCENT:
                heading += " (%)"
            if numeric:
                cell = lambda row, n=name: format_number(n, row[n], unit_of(row))  # noqa: E731
            else:
                cell = lambda row, n=name: "" if pd.isna(row[n]) else str(row[n])  # noqa: E731
            key = lambda row, n=name: row[n]  # noqa: E731
            if name == "layer" and "layer_number" in frame.columns:
                key = lambda row: row["layer_number"]  # noqa: E731
                numeric = True
            columns.append(_Column(heading, cell, key, numeric))
    return columns, constants


def _sort_value(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return "" if value is None else str(value)
    return "" if math.isnan(value) else repr(float(value))


def render_table(table: Table, table_id: str, collapse_over: int = 15) -> str:
    """HTML of ``table``: title, filter box, CSV download (embedded), sortable table.

    Tables longer than ``collapse_over`` rows are collapsed (``<details>``) until opened.
    """
    frame = table.frame.reset_index(drop=True)
    columns, constants = _columns(frame)
    csv = frame.to_csv(index=False).encode("utf-8")
    frame = frame.astype(object)  # rows keep each column's own type (ints stay ints)
    href = "data:text/csv;base64," + base64.b64encode(csv).decode("ascii")
    head = "".join(
        f'<th data-type="{"num" if c.numeric else "text"}" title="sort">'
        f"{html.escape(c.heading)}</th>"
        for c in columns
    )
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for column in columns:
            key = column.key(row)
            cells.append(
                f'<td data-v="{html.escape(_sort_value(key))}">{html.escape(column.cell(row))}</td>'
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    notes = []
    if constants:
        same = ", ".join(
            f"{_HEADINGS.get(k, k.replace('_', ' '))} {format_number(k, v)}"
            for k, v in constants.items()
        )
        notes.append(f"Every row: {same}.")
    if table.note:
        notes.append(table.note)
    note = f'<p class="note">{html.escape(" ".join(notes))}</p>' if notes else ""
    n = len(frame)
    controls = (
        f'<div class="controls"><input type="search" class="filter" placeholder="filter rows" '
        f'aria-label="filter {html.escape(table.title)}" data-table="{table_id}">'
        f' <span class="count" id="{table_id}-count">{n} rows</span>'
        f' · <a download="{html.escape(table.csv_name)}" href="{href}">'
        f"download {html.escape(table.csv_name)}</a></div>"
    )
    body = (
        f'<div class="scroll"><table class="data" id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
    title = html.escape(table.title)
    if n > collapse_over:
        return (
            f'<details class="table"><summary>{title} <span class="muted">({n} rows)</span>'
            f"</summary>{note}{controls}{body}</details>"
        )
    return f'<div class="table"><h3>{title}</h3>{note}{controls}{body}</div>'


def format_duration(seconds: float) -> str:
    """A duration as people read it: seconds below 90 s, minutes below 90 min, else hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
