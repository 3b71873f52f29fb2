"""End to end on the real default: trained network, detectors, a small demo and the CLI.

The trained default is cached under the user cache directory, so these tests train it once
(about five minutes on two cores) and then reuse it, as `make demo` does.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bioattn.analysis.findings import CLAIMS
from bioattn.analysis.sdt import choose_betas
from bioattn.cli import main
from bioattn.experiments.sweep import DEFAULT_METHODS
from bioattn.models.train import load_default

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained():
    return load_default(progress=False)


def test_default_network_and_detectors_are_accurate(trained):
    assert trained.metrics["test_accuracy"] >= 0.90
    balanced = trained.metrics["detector_balanced_accuracy"]
    assert len(balanced) == 10
    # chance is 0.5; every detector should be far above it on standard test images
    assert min(balanced.values()) > 0.85


def test_quick_demo_writes_a_complete_results_folder(trained, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--all", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "performance increase" in printed
    assert "spatial vs feature attention" in printed and "spatial cueing" in printed
    spatial = pd.read_csv(out / "orientation" / "spatial" / "criterion_sensitivity.csv")
    assert {"spatial", "spatial+tuning", "spatial+gradient"} <= set(spatial["method"])
    assert set(spatial["layer"]) == {"conv3_2"}
    orientation = pd.read_parquet(out / "orientation" / "orientation" / "performance.parquet")
    assert set(orientation["category"]) == {"0°", "80°"}
    assert (out / "cueing" / "cueing_summary.csv").stat().st_size > 0
    written = (
        *("values.nc", "performance.parquet", "selection.parquet", "gains.csv", "summary.csv"),
        *("effects.csv", "comparisons.csv", "findings.csv", "config.json"),
    )
    for name in written:
        assert (out / name).stat().st_size > 0, name
    for stem in ("performance_increase", "tp_fp_vs_beta", "dprime_criterion_vs_beta"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 0
        assert (out / "figures" / f"{stem}.svg").stat().st_size > 0
    table = pd.read_parquet(out / "performance.parquet")
    assert set(table["image_type"]) == {"merged", "array"}
    assert set(table["method"]) == set(DEFAULT_METHODS)
    assert set(table["category"]) == {"Trouser", "Bag"}
    assert len(set(table["layer"])) == 7  # six layers and all-layers mode
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["sweep"]["betas"] == [0.0, 0.5, 2.0]
    # every β on the selection images; on the test images only β = 0 and the chosen β
    selection = pd.read_parquet(out / "selection.parquet")
    assert sorted(selection["beta"].unique()) == [0.0, 0.5, 2.0]
    keys = ["image_type", "category", "layer", "method"]
    assert (table.groupby(keys)["beta"].nunique() <= 2).all()
    gains = pd.read_csv(out / "gains.csv")
    chosen = choose_betas(selection)
    for row in gains.itertuples():
        assert row.best_beta == chosen[(row.image_type, row.category, row.layer, row.method)]
    findings = pd.read_csv(out / "findings.csv")
    assert list(findings["finding"].astype(str)) == list(CLAIMS)
    assert set(findings["verdict"]) <= {"holds", "does not hold", "mixed", "not run"}
    assert "findings of Lindsay & Miller" in printed

    # the sweep command reuses the values file and writes the same kind of folder
    again = tmp_path / "sweep"
    code = main(
        [
            "sweep",
            "--values",
            str(out / "values.nc"),
            "--out",
            str(again),
            "--categories",
            "Bag",
            "--layers",
            "conv3_2",
            "--betas",
            "1",
            "--image-types",
            "merged",
            "--n-pos",
            "10",
            "--n-neg",
            "10",
            "--no-all-layers",
        ]
    )
    assert code == 0
    swept = pd.read_parquet(again / "performance.parquet")
    assert sorted(swept["beta"].unique()) == [0.0, 1.0]


def test_cli_reports_bad_input_clearly(trained, tmp_path, capsys):
    code = main(["sweep", "--values", str(tmp_path / "missing.nc"), "--out", str(tmp_path)])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["layers", "no-such-model"]) == 2
    assert "valid" in capsys.readouterr().err


def test_layers_command_lists_aliases(capsys):
    assert main(["layers", "fashion-vgg"]) == 0
    printed = capsys.readouterr().out
    assert "conv1_1" in printed and "features.12" in printed
