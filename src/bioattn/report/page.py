"""The HTML page: one self-contained file, findings and figures first, tables after.

Layout, for every family alike: the title and two lines on what was run (model, data, task,
conditions, when, how long, versions); the findings as verdict cards with their numbers; the key
interactive figures; the formatted tables (long ones collapsed, each sortable, filterable and
downloadable as CSV); then each result sub-folder as a section of the same shape; last, the
run's own PNG figures and ``config.json``, collapsed. plotly.js is inlined once in the head and
the CSVs are embedded as ``data:`` links, so the page opens offline; the only script written
here is the tables' sorting and filtering (about twenty lines).
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.io as pio
from plotly.offline import get_plotlyjs

from bioattn.cache import atomic_write_bytes
from bioattn.errors import DataError
from bioattn.report.figures import runs_comparison_figure
from bioattn.report.folders import Finding, Plot, Section, read_folder
from bioattn.report.tables import Table, render_table

__all__ = ["render_comparison", "render_report", "write_comparison", "write_report"]

_STYLE = """
:root { --ink: #1d232b; --muted: #5b6673; --line: #d9dee4; --soft: #f5f7f9; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
  margin: 0 auto; padding: 1.2em 2em 4em; max-width: 1240px; line-height: 1.45; }
h1 { font-size: 1.55em; margin: 0.2em 0 0.3em; }
h2 { font-size: 1.25em; margin: 1.3em 0 0.5em; padding-bottom: 0.2em;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 1.02em; margin: 1.2em 0 0.3em; }
.facts { color: var(--muted); margin: 0 0 1em; font-size: 0.95em; }
.muted, .note, figcaption { color: var(--muted); font-size: 0.88em; }
table.findings { border-collapse: collapse; width: 100%; font-size: 0.9em; }
table.findings td { border-top: 1px solid var(--line); padding: 0.25em 0.5em; vertical-align: top; }
table.findings td:first-child { width: 11em; border-left: 5px solid #999; }
table.findings td:nth-child(2) { width: 33%; line-height: 1.3; }
tr.holds td:first-child { border-left-color: #2e7d32; }
tr.does-not-hold td:first-child { border-left-color: #c62828; }
tr.mixed td:first-child { border-left-color: #ef8f00; }
.verdict { display: inline-block; font-size: 0.8em; font-weight: 700; text-transform: uppercase;
  letter-spacing: 0.03em; padding: 0.05em 0.5em; border-radius: 3px; color: #fff;
  background: #9e9e9e; margin-right: 0.4em; white-space: nowrap; }
.holds .verdict { background: #2e7d32; } .does-not-hold .verdict { background: #c62828; }
.mixed .verdict { background: #ef8f00; }
.measure { font-size: 0.85em; color: var(--muted); margin-top: 0.1em; }
.chip { display: inline-block; font-size: 0.82em; margin: 0 0.25em 0.2em 0; padding: 0 0.4em;
  border: 1px solid var(--line); border-radius: 3px; background: var(--soft);
  font-variant-numeric: tabular-nums; white-space: nowrap; }
.chip.supports { border-color: #a5d6a7; background: #f1f8f1; }
.chip.contradicts, .chip.does-not-support { border-color: #ef9a9a; background: #fdf1f1; }
.outcome { color: var(--muted); } .outcome.supports { color: #2e7d32; }
.outcome.contradicts, .outcome.does-not-support { color: #c62828; }
figure { margin: 0.8em 0 1.6em; } figure h3 { margin-top: 0; }
.scroll { overflow-x: auto; max-height: 36em; overflow-y: auto; border: 1px solid var(--line); }
table.data, table.matrix { border-collapse: collapse; font-size: 0.84em;
  font-variant-numeric: tabular-nums; }
table.data th, table.data td, table.matrix th, table.matrix td { padding: 0.25em 0.6em;
  border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
table.data th, table.matrix th { background: var(--soft); position: sticky; top: 0;
  cursor: pointer; user-select: none; }
table.matrix td:nth-child(2), table.matrix th:nth-child(2) { text-align: left;
  white-space: normal; }
table.data th[aria-sort=ascending]::after { content: " ▲"; }
table.data th[aria-sort=descending]::after { content: " ▼"; }
table.data tbody tr:hover { background: #fafbe6; }
details { margin: 0.7em 0; } summary { cursor: pointer; font-weight: 600; }
.controls { margin: 0.3em 0; font-size: 0.86em; }
.controls input { font: inherit; padding: 0.15em 0.4em; width: 16em; }
section.child { margin-top: 2.5em; } section.child > h2 { font-size: 1.35em; }
img.static { max-width: 100%; border: 1px solid var(--line); margin: 0.4em 0; }
pre { background: var(--soft); padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
"""

# Sorting (click a heading; numbers by data-v) and filtering (every word must occur in the row).
_TABLE_SCRIPT = """
document.querySelectorAll("table.data").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, i) {
    th.addEventListener("click", function () {
      var up = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      var num = th.dataset.type === "num", body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[i].dataset.v, y = b.cells[i].dataset.v;
        if (num) {
          x = x === "" ? Infinity : parseFloat(x);
          y = y === "" ? Infinity : parseFloat(y);
        }
        var r = num ? (x < y ? -1 : x > y ? 1 : 0) : x.localeCompare(y);
        return up ? r : -r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
document.querySelectorAll("input.filter").forEach(function (input) {
  input.addEventListener("input", function () {
    var table = document.getElementById(input.dataset.table), rows = table.tBodies[0].rows;
    var words = input.value.toLowerCase().split(/\\s+/).filter(Boolean), shown = 0;
    Array.prototype.forEach.call(rows, function (row) {
      var text = row.textContent.toLowerCase();
      row.hidden = !words.every(function (w) { return text.indexOf(w) >= 0; });
      if (!row.hidden) { shown += 1; }
    });
    document.getElementById(input.dataset.table + "-count").textContent =
      (words.length ? shown + " of " : "") + rows.length + " rows";
  });
});
"""
_OUTCOME_MARKS = {
    "supports": "✓",
    "contradicts": "✗",
    "does not support": "✗",
    "inconclusive": "○",
}
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


class _Ids:
    """Deterministic element ids (the page is byte-identical for the same folder)."""

    def __init__(self) -> None:
        self.figures = 0
        self.tables = 0

    def figure(self) -> str:
        self.figures += 1
        return f"figure-{self.figures}"

    def table(self) -> str:
        self.tables += 1
        return f"table-{self.tables}"


def _e(text: object) -> str:
    return html.escape(str(text))


def _findings_html(findings: Sequence[Finding]) -> str:
    """One row per finding: verdict, claim (and what is measured), each comparison's number."""
    rows = []
    for finding in findings:
        css = finding.verdict.replace(" ", "-")
        chips = []
        for setting, numbers, outcome in finding.evidence:
            short, _, detail = setting.partition(" (")
            title = f' title="{_e(setting)}"' if detail else ""
            mark = _OUTCOME_MARKS.get(outcome, "")
            kind = outcome.replace(" ", "-")
            head, _, rest = numbers.partition(" ")
            value = f" <b>{_e(head)}</b> {_e(rest)}" if numbers else ""
            chips.append(f'<span class="chip {kind}"{title}>{_e(mark)} {_e(short)}{value}</span>')
        measure = f'<div class="measure">{_e(finding.measure)}</div>' if finding.measure else ""
        counts = f'<div class="measure">{_e(finding.counts)}</div>' if finding.counts else ""
        rows.append(
            f'<tr class="finding {css}"><td><span class="verdict">{_e(finding.verdict)}</span>'
            f"{counts}</td><td><b>{_e(finding.label)}</b>: {_e(finding.claim)}{measure}</td>"
            f"<td>{''.join(chips)}</td></tr>"
        )
    return f'<table class="findings"><tbody>{"".join(rows)}</tbody></table>'


def _plot_html(plot: Plot, ids: _Ids) -> str:
    div = pio.to_html(
        plot.figure,
        full_html=False,
        include_plotlyjs=False,
        div_id=ids.figure(),
        config=_PLOT_CONFIG,
        default_width="100%",
    )
    return (
        f'<figure class="plot"><h3>{_e(plot.title)}</h3>{div}'
        f"<figcaption>{_e(plot.caption)}</figcaption></figure>"
    )


def _image_html(path: Path, base: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    label = _e(os.path.relpath(path, base))
    return (
        f'<figure><img class="static" loading="lazy" alt="{label}" '
        f'src="data:image/png;base64,{data}"><figcaption>{label}</figcaption></figure>'
    )


def _section_html(section: Section, ids: _Ids, base: Path, level: int) -> str:
    h = "h1" if level == 0 else "h2"
    parts = [f"<{h}>{_e(section.title)}</{h}>"] if level else []
    if section.facts and level:
        parts.append(f'<p class="facts">{"<br>".join(_e(f) for f in section.facts)}</p>')
    if section.note:
        parts.append(f'<p class="note">{_e(section.note)}</p>')
    if section.findings:
        parts.append("<h2>Findings</h2>" if level == 0 else "<h3>Findings</h3>")
        parts.append(_findings_html(section.findings))
        findings_csv = section.path / "findings.csv"
        if findings_csv.exists():
            data = base64.b64encode(findings_csv.read_bytes()).decode("ascii")
            parts.append(
                '<p class="muted">Verdicts: holds when every comparison supports the finding, '
                "does not hold when none does, mixed otherwise. Each comparison: its estimate "
                "with the 95 % interval; ✓ supports (interval on the finding's side of zero), "
                "✗ contradicts, ○ inconclusive. "
                f'<a download="findings.csv" href="data:text/csv;base64,{data}">'
                "download findings.csv</a></p>"
            )
    if section.plots:
        parts.append("<h2>Key figures</h2>" if level == 0 else "")
        parts.extend(_plot_html(p, ids) for p in section.plots)
    if section.tables:
        parts.append("<h2>Tables</h2>" if level == 0 else "<h3>Tables</h3>")
        parts.extend(render_table(t, ids.table()) for t in section.tables)
    for child in section.children:
        parts.append(
            f'<section class="child">{_section_html(child, ids, base, level + 1)}</section>'
        )
    if section.images:
        shown = "" if section.plots or section.children or level else " open"
        parts.append(
            f"<details{shown}><summary>Figures as written by the run (PNG, "
            f"{len(section.images)})</summary>"
            + "".join(_image_html(p, base) for p in section.images)
            + "</details>"
        )
    if section.files:
        links = ", ".join(
            f'<a href="{_e(Path(os.path.relpath(p, base)).as_posix())}">{_e(p.name)}</a>'
            for p in section.files
        )
        parts.append(f'<p class="muted">Other files beside this page: {links}.</p>')
    if section.config is not None:
        parts.append(
            "<details><summary>Configuration (config.json)</summary>"
            f"<pre>{_e(json.dumps(section.config, indent=2))}</pre></details>"
        )
    return "\n".join(p for p in parts if p)


def _page(title: str, facts: Sequence[str], body: str) -> str:
    lines = "<br>".join(_e(f) for f in facts)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{_STYLE}</style>",
            f"<script>{get_plotlyjs()}</script></head><body>",
            f"<header><h1>{_e(title)}</h1>",
            f'<p class="facts">{lines}</p></header>' if lines else "</header>",
            body,
            f"<script>{_TABLE_SCRIPT}</script>",
            "</body></html>",
        ]
    )


def _read(run_dir: Path) -> Section:
    section = read_folder(run_dir)
    if section.empty():
        raise DataError(
            f"{run_dir} holds no results the report knows (no config.json, CSV or Parquet "
            "tables, findings or figures); give a folder written by `bioattn demo`, `replicate`, "
            "`sweep`, `orientation`, `cueing`, `noise`, `analyze neural`, `ssn` or `mechanisms`"
        )
    return section


def render_report(run_dir: str | Path, title: str | None = None, base: Path | None = None) -> str:
    """The HTML of ``run_dir``'s report page (see the module doc for its layout)."""
    run_dir = Path(run_dir)
    section = _read(run_dir)
    title = title or f"{section.title}: {run_dir.resolve().name}"
    body = _section_html(section, _Ids(), base or run_dir, level=0)
    return _page(title, section.facts, body)


def write_report(
    run_dir: str | Path, title: str | None = None, out: str | Path | None = None
) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``); return it."""
    run_dir = Path(run_dir)
    target = Path(out) if out is not None else run_dir / "report.html"
    page = render_report(run_dir, title, base=target.parent)
    atomic_write_bytes(target, page.encode("utf-8"))
    return target


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    names = [p.resolve().name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in run_dirs]


def render_comparison(
    run_dirs: Sequence[str | Path], title: str | None = None, base: Path | None = None
) -> str:
    """The HTML of a page comparing several runs: what each ran, the verdicts side by side,
    the performance increase of all in one figure and their effects in one table."""
    dirs = [Path(p) for p in run_dirs]
    if len(dirs) < 2:
        raise DataError("a comparison needs at least two results folders; give RUN1 RUN2 ...")
    sections = [_read(p) for p in dirs]
    labels = _labels(dirs)
    ids = _Ids()
    parts = ["<h2>The runs</h2>"]
    for label, section in zip(labels, sections, strict=True):
        facts = "<br>".join(_e(f) for f in section.facts) or "no config.json"
        parts.append(f'<h3>{_e(label)}: {_e(section.title)}</h3><p class="facts">{facts}</p>')
    verdicts: dict[str, dict[str, Finding]] = {}
    claims: dict[str, str] = {}
    for label, section in zip(labels, sections, strict=True):
        for finding in section.findings:
            verdicts.setdefault(finding.label, {})[label] = finding
            claims.setdefault(finding.label, finding.claim)
    if verdicts:
        head = "".join(f"<th>{_e(label)}</th>" for label in labels)
        rows = []
        for name, by_run in verdicts.items():
            cells = []
            for label in labels:
                found = by_run.get(label)
                if found is None:
                    cells.append("<td>—</td>")
                    continue
                css = found.verdict.replace(" ", "-")
                counts = f' <span class="muted">{_e(found.counts.split(" comparisons")[0])}</span>'
                cells.append(
                    f'<td class="finding-cell {css}"><span class="verdict">{_e(found.verdict)}'
                    f"</span>{counts if found.counts else ''}</td>"
                )
            rows.append(f"<tr><td>{_e(name)}</td><td>{_e(claims[name])}</td>{''.join(cells)}</tr>")
        parts.append(
            "<h2>Findings side by side</h2>"
            f'<div class="scroll"><table class="matrix"><thead><tr><th>finding</th><th>claim</th>'
            f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )
    summaries = {
        label: s.effects
        for label, s in zip(labels, sections, strict=True)
        if s.effects is not None and not s.effects.empty
    }
    if summaries:
        figure = runs_comparison_figure(summaries)
        parts.append("<h2>Key figures</h2>")
        parts.append(
            _plot_html(
                Plot(
                    "Performance increase by layer, every run",
                    "Colour: method (as in every bioattn figure); line style and marker: run. "
                    "Click legend entries to hide or show them.",
                    figure,
                ),
                ids,
            )
        )
        table = pd.concat(
            [s.assign(run=label) for label, s in summaries.items()], ignore_index=True
        )
        table = table[["run", *[c for c in table.columns if c != "run"]]]
        parts.append("<h2>Tables</h2>")
        parts.append(render_table(Table("Effects of every run", table, "effects.csv"), ids.table()))
    facts = [f"{len(dirs)} results folders: {', '.join(labels)}"]
    return _page(title or f"bioattn: {len(dirs)} runs compared", facts, "\n".join(parts))


def write_comparison(
    run_dirs: Sequence[str | Path], out: str | Path, title: str | None = None
) -> Path:
    """Write the comparison page of several runs to ``out``; return it."""
    target = Path(out)
    if target.suffix.lower() not in (".html", ".htm"):
        raise DataError(f"--out {target} should name an .html file for the comparison page")
    page = render_comparison(run_dirs, title, base=target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, page.encode("utf-8"))
    return target
