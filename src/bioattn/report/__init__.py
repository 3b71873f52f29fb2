"""The report of a results folder: one self-contained HTML page a scientist reads.

``bioattn report RUN_DIR`` writes ``RUN_DIR/report.html``; ``bioattn report RUN1 RUN2 ...
--out FILE.html`` a page comparing the runs. The top of the page says what was run (model,
data, conditions, when, how long) in two lines, then the findings as verdicts with their
numbers, then the key figures (performance increase by layer, Δd′/Δc by layer, performance,
d′ and criterion against β; cueing, noise, SSN and mechanisms figures where the folder holds
them), then formatted tables: fixed precision per quantity, Δ in pp with its 95 % interval,
long tables collapsed, every table sortable, filterable and downloadable as CSV.

Figures are drawn with plotly (:mod:`bioattn.report.figures`). Why plotly: its wheel ships
plotly.js (``plotly.offline.get_plotlyjs``), which the page inlines once, so it renders offline
with nothing fetched and nothing else installed; altair would need the Vega bundle from a CDN or
the vl-convert binary package to be self-contained. Hover values, legend toggles (a method hides
in every panel) and a layer menu come with plotly, so no figure code is hand-written JS. The
page is deterministic: the same folder gives the same bytes.

Modules: :mod:`~bioattn.report.folders` (reading a folder into a section), :mod:`~.tables`
(formatting), :mod:`~.figures` (plotly figures), :mod:`~.page` (HTML), :mod:`~.browser`
(headless Chromium: console errors, rendered figures, screenshots; used by the tests).
"""

from bioattn.report.page import render_comparison, render_report, write_comparison, write_report

__all__ = ["render_comparison", "render_report", "write_comparison", "write_report"]
