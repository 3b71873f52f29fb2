"""The report in a real browser: headless Chromium loads the page from disk, as a reader would.

Skipped only when no Chromium binary is installed (``make test`` installs Debian's ``chromium``
when run as root). Each page load takes a few seconds.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from bioattn.report import write_comparison, write_report
from bioattn.report.browser import find_chromium, inspect_page

DEMO = Path(__file__).parent / "data" / "report" / "demo"

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium binary (looked for $CHROMIUM, chromium, chromium-browser, "
    "google-chrome); `apt-get install chromium` or `make test` as root installs it",
)

# Click the numeric heading "Δ performance (pp) [95 % CI]" of the effects table twice (up, then
# down) and read the raw values; then filter the rows by two words and count what is visible.
_SORT = """(() => {
  const table = document.getElementById("table-1");
  const heads = Array.from(table.tHead.rows[0].cells);
  const th = heads.find(h => h.textContent.startsWith("Δ performance (pp) [95 % CI]"));
  const i = heads.indexOf(th);
  const read = () => Array.from(table.tBodies[0].rows).map(r => parseFloat(r.cells[i].dataset.v));
  th.click(); const up = read(); th.click(); const down = read();
  return {up: up, down: down, sort: th.getAttribute("aria-sort")};
})()"""
_FILTER = """(() => {
  const input = document.querySelector('input.filter[data-table="table-1"]');
  input.value = "gradient array";
  input.dispatchEvent(new Event("input"));
  const rows = Array.from(document.getElementById("table-1").tBodies[0].rows);
  const shown = rows.filter(r => !r.hidden);
  return {shown: shown.length, all: rows.length,
          ok: shown.every(r => ["gradient", "array"].every(w => r.textContent.includes(w))),
          count: document.getElementById("table-1-count").textContent};
})()"""


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_demo_page_renders_in_chromium_without_errors(tmp_path):
    run = tmp_path / "demo"
    shutil.copytree(DEMO, run)
    page = write_report(run)
    shot = tmp_path / "report.png"
    seen = inspect_page(page, screenshot=shot, scripts={"sort": _SORT, "filter": _FILTER})
    assert seen.console_errors == []
    assert seen.external_requests == []
    assert seen.figures == 3 and seen.drawn == 3, seen.empty
    assert seen.tables == 5
    assert "Finding 1: attention by gradient values beats tuning values" in seen.text
    assert _png_size(shot) == (1280, 900) and shot.stat().st_size > 20_000
    sort = seen.results["sort"]
    assert sort["up"] == sorted(sort["up"]) and sort["down"] == sorted(sort["up"], reverse=True)
    assert sort["sort"] == "descending"
    found = seen.results["filter"]
    assert 0 < found["shown"] < found["all"] and found["ok"]
    assert found["count"] == f"{found['shown']} of {found['all']} rows"


def test_comparison_page_renders(tmp_path):
    for name in ("a", "b"):
        shutil.copytree(DEMO, tmp_path / name)
    page = write_comparison([tmp_path / "a", tmp_path / "b"], tmp_path / "both.html")
    seen = inspect_page(page)
    assert seen.console_errors == [] and seen.external_requests == []
    assert seen.figures == seen.drawn == 1 and "Findings side by side" in seen.text


def test_the_check_sees_errors_empty_figures_and_requests(tmp_path):
    """The browser check itself: a broken page is reported, not passed."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><div class="js-plotly-plot" id="empty"></div>'
        '<img src="http://example.invalid/x.png">'
        '<script>console.error("drawn wrong"); undefinedFunction();</script></body></html>'
    )
    seen = inspect_page(page)
    assert any("drawn wrong" in e for e in seen.console_errors)
    assert any("undefinedFunction" in e for e in seen.console_errors)
    assert seen.external_requests == ["http://example.invalid/x.png"]
    assert seen.figures == 1 and seen.drawn == 0 and seen.empty == ["empty"]
