"""The HTML report: what the page says, how numbers and tables look, every family, bad input.

``tests/data/report/demo`` is the tables of a real ``bioattn demo`` run (the default network,
all categories; values and figures left out). The browser checks are in test_report_browser.py.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bioattn.cli import main
from bioattn.data.gratings import GratingSpec
from bioattn.errors import DataError
from bioattn.experiments.orientation import OrientationConfig, run_orientation
from bioattn.experiments.psychophysics import write_cueing, write_noise
from bioattn.report import render_comparison, render_report, write_report
from bioattn.report.tables import Table, format_number, render_table

DEMO = Path(__file__).parent / "data" / "report" / "demo"
GOLDEN = Path(__file__).parent / "golden"


def _without_plotly_js(page: str) -> str:
    """The page less the inlined plotly.js bundle (whose code mentions map tile URLs)."""
    start = page.index("<script>", page.index("<head>"))
    end = page.index("</script>", start)
    return page[:start] + page[end:]


def _table(page: str, title: str) -> str:
    start = page.index(title)
    return page[start : page.index("</table>", start)]


def _column(table_html: str, heading: str) -> list[str]:
    headings = re.findall(r"<th\b[^>]*>(.*?)</th>", table_html)
    index = headings.index(heading)
    rows = re.findall(r"<tr>(.*?)</tr>", table_html.split("<tbody>", 1)[1])
    return [re.findall(r"<td[^>]*>(.*?)</td>", row)[index] for row in rows]


@pytest.fixture(scope="module")
def demo_page() -> str:
    return render_report(DEMO)


def test_page_puts_what_ran_findings_and_figures_before_tables(demo_page):
    facts = demo_page[: demo_page.index("<h2>Findings")]
    assert "model fashion-vgg, test accuracy 92.3 %" in facts
    assert "4 methods (tuning, gradient, shuffled-tuning, shuffled-gradient)" in facts
    assert "7 layer settings × 10 β (0.00–4.00)" in facts and "took 2.6 min" in facts
    order = [demo_page.index(h) for h in ("<h2>Findings", "<h2>Key figures", "<h2>Tables")]
    assert order == sorted(order)
    findings = pd.read_csv(DEMO / "findings.csv")
    block = demo_page[order[0] : order[1]]
    for row in findings.itertuples():
        assert f"<b>Finding {row.finding}</b>" in block or "<b>Control</b>" in block
        assert f'class="finding {row.verdict.replace(" ", "-")}"' in block
    # finding 1's first comparison with its interval, at one decimal (comparisons.csv)
    first = pd.read_csv(DEMO / "comparisons.csv").iloc[0]
    numbers = f"<b>{first['mean']:+.1f}</b> [{first.ci_low:+.1f}, {first.ci_high:+.1f}] pp"
    assert numbers in block
    assert "Δ gradient − Δ tuning" in block  # what the comparisons measure, said once


def test_figures_are_embedded_plotly_with_the_method_colours(demo_page):
    assert demo_page.count("Plotly.newPlot(") == 3
    for title in ("Performance increase by layer", "Sensitivity (d′) and criterion by layer",
                  "Performance, d′ and criterion against β"):  # fmt: skip
        assert f"<h3>{title}</h3>" in demo_page
    assert '"color":"#d62728"' in demo_page and '"color":"#1f77b4"' in demo_page  # gradient, tuning
    assert "attention at conv3_2" in demo_page  # the β curves' layer menu


def test_page_has_no_external_references(demo_page):
    assert demo_page.count("<script>") == 2 + 3  # plotly.js, the tables' script, three figures
    ours = _without_plotly_js(demo_page)
    for pattern in (r"<script[^>]*\bsrc=", r"<link\b", r"\bsrc=\"https?:", r"\bhref=\"https?:",
                    r"url\(\s*['\"]?https?:", r"@import"):  # fmt: skip
        assert not re.search(pattern, ours), pattern


def test_tables_are_formatted_sortable_filterable_and_downloadable(demo_page):
    effects = _table(demo_page, "Performance increase by layer: Δ with 95 % intervals")
    cells = _column(effects, "Δ performance (pp) [95 % CI]")
    assert len(cells) == len(pd.read_csv(DEMO / "effects.csv"))
    assert all(re.fullmatch(r"[+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]", c) for c in cells)
    dprime = _column(effects, "Δd′ [95 % CI]")
    assert all(re.fullmatch(r"[+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", c) for c in dprime)
    assert "ci_low_pp" not in re.findall(r"<th\b[^>]*>(.*?)</th>", effects)  # merged into the cell
    assert 'data-type="num"' in effects and 'data-v="' in effects
    assert 'class="filter"' in demo_page and "<input" in demo_page
    links = dict(re.findall(r'download="([^"]+)" href="data:text/csv;base64,([^"]+)"', demo_page))
    assert {"effects.csv", "gains.csv", "findings.csv", "method_tests.csv"} <= set(links)
    shipped = pd.read_csv(DEMO / "gains.csv")
    embedded = pd.read_csv(pd.io.common.BytesIO(base64.b64decode(links["gains.csv"])))
    pd.testing.assert_frame_equal(embedded, shipped)
    # long tables are collapsed, short ones open
    gains_at = demo_page.index("Per category: chosen β and held-out Δ")
    assert demo_page.rfind("<details", 0, gains_at) > demo_page.rfind("</details>", 0, gains_at)


def test_numbers_have_one_precision_per_quantity():
    assert format_number("delta_pp", 14.4) == "+14.4"
    assert format_number("delta_pp", -0.04) == "+0.0"  # never "-0.0"
    assert format_number("performance", 0.826667) == "82.7"
    assert format_number("dprime", 1.9) == "1.90"
    assert format_number("delta_criterion", -2.484) == "-2.48"
    assert format_number("p_value", 0.009394) == "0.009"
    assert format_number("p_value", 0.0004) == "<0.001"
    assert format_number("mean", 0.288, "z") == "+0.29"
    assert format_number("mean", 7.12, "pp") == "+7.1"
    assert format_number("n_categories", 10) == "10"
    assert format_number("best_beta", 0.75) == "0.75"
    assert format_number("delta_pp", float("nan")) == ""


def test_constant_columns_are_named_once_under_the_table():
    frame = pd.DataFrame({"task": ["category"] * 3, "layer": ["a", "b", "c"],
                          "layer_number": [1, 2, 3], "delta_pp": [1.0, 2.25, -3.0]})  # fmt: skip
    page = render_table(Table("t", frame, "t.csv"), "table-1")
    assert "Every row: task category." in page
    assert "<th" in page and ">task<" not in page
    assert _column(page, "Δ performance (pp)") == ["+1.0", "+2.2", "-3.0"]
    assert 'data-v="1.0"' in page  # layer sorts by layer_number


def test_page_is_deterministic(demo_page):
    assert render_report(DEMO) == demo_page


def test_write_report_and_cli(tmp_path, capsys):
    run = tmp_path / "demo"
    shutil.copytree(DEMO, run)
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert (run / "report.html").read_text().startswith("<!DOCTYPE html>")
    out = write_report(run, out=tmp_path / "elsewhere" / "page.html")
    assert out.exists() and 'href="../demo/selection.parquet"' in out.read_text()


def test_bad_folders_get_clear_errors(tmp_path, capsys):
    with pytest.raises(DataError, match="does not exist"):
        render_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="holds no results the report knows"):
        render_report(tmp_path / "empty")
    bad = tmp_path / "bad"
    shutil.copytree(DEMO, bad)
    (bad / "effects.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"effects.csv lacks the columns \['image_type'"):
        render_report(bad)
    (bad / "effects.csv").write_bytes(b'"unclosed,1\n2,3')
    with pytest.raises(DataError, match=r"effects\.csv is not a readable CSV table"):
        render_report(bad)
    (bad / "effects.csv").unlink()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(DataError, match=r"config\.json is not valid JSON"):
        render_report(bad)
    (bad / "config.json").write_text("{}")
    (bad / "selection.parquet").write_bytes(b"PAR1 broken")
    with pytest.raises(DataError, match=r"selection\.parquet is not a readable Parquet table"):
        render_report(bad)
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_several_runs_make_one_comparison_page(tmp_path, capsys):
    first, second = tmp_path / "net-a", tmp_path / "net-b"
    shutil.copytree(DEMO, first)
    shutil.copytree(DEMO, second)
    findings = pd.read_csv(second / "findings.csv")
    findings.loc[findings["finding"] == "2", "verdict"] = "does not hold"
    findings.to_csv(second / "findings.csv", index=False)
    page = render_comparison([first, second])
    assert "<h2>Findings side by side</h2>" in page
    matrix = page[page.index('<table class="matrix"') : page.index("</table>")]
    row = re.search(r"<tr><td>Finding 2</td>.*?</tr>", matrix).group(0)
    assert "holds" in row and "does not hold" in row
    assert page.count("Plotly.newPlot(") == 1
    assert f'"name":{json.dumps("net-a · gradient")}' in page  # a trace per run and method
    runs = _column(_table(page, "Effects of every run"), "run")
    assert set(runs) == {"net-a", "net-b"}
    assert main(["report", str(first), str(second)]) == 2
    assert "give its file with --out" in capsys.readouterr().err
    out = tmp_path / "comparison.html"
    assert main(["report", str(first), str(second), "--out", str(out)]) == 0
    assert out.read_text() == render_comparison([first, second])


def test_orientation_folder_has_the_same_look(tiny_network, tmp_path):
    config = OrientationConfig(
        spec=GratingSpec(size=8, cycles_per_pixel=0.2), orientations=("0°", "80°"),
        betas=(0.0, 1.0), spatial_betas=(0.0, 0.5), n_pos=4, n_neg=4, n_train=6, n_gradient=3,
    )  # fmt: skip
    run_orientation(tiny_network, tmp_path, config, progress=False)
    page = render_report(tmp_path)
    assert "<h1>Orientation and spatial attention (bioattn orientation)" in page
    for heading in ("Feature attention to orientation", "Spatial attention"):
        assert f"<h2>{heading}</h2>" in page
    assert page.count("Plotly.newPlot(") >= 4  # by layer (2) and β curves, for each sub-sweep
    assert "Criterion and sensitivity changes" in page and "Orientation detectors" in page


def test_cueing_and_noise_folders(tmp_path):
    write_cueing(pd.read_parquet(GOLDEN / "cueing.parquet"), tmp_path / "cueing")
    write_noise(pd.read_parquet(GOLDEN / "noise.parquet"), tmp_path / "noise")
    cueing = render_report(tmp_path / "cueing")
    assert "per cue" in cueing and "Spatial cueing: means over categories" in cueing
    assert cueing.count("Plotly.newPlot(") == 1 and '"name":"valid"' in cueing
    noise = render_report(tmp_path / "noise")
    assert "Detection in noise: psychometric curves" in noise and "signal-to-noise ratio" in noise


def test_mechanisms_folder_gets_its_bar_chart(tmp_path):
    frame = pd.DataFrame({"image_type": ["array"] * 2, "mechanism": ["fsgm", "ram"],
                          "tp": [0.8, 0.7], "tp_sem": [0.02, 0.03], "dprime": [1.5, 1.1],
                          "dprime_sem": [0.1, 0.2], "n_categories": [10, 10]})  # fmt: skip
    frame.to_csv(tmp_path / "comparison.csv", index=False)
    page = render_report(tmp_path)
    assert "Attention mechanisms compared: d′" in page and page.count("Plotly.newPlot(") == 1
    assert '"type":"bar"' in page and "Attention mechanisms compared</h3>" in page
