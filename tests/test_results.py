"""``bioattn.sweep`` -> ``SweepResult``: the five-line API, its summary, figure, HTML and files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.figure import Figure

import bioattn
from bioattn.errors import ConfigError, DataError
from bioattn.experiments.results import RESULT_FILES

from .conftest import write_tiny_config


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """The tiny three-block network prepared on a pattern image folder (seconds)."""
    return bioattn.prepare(write_tiny_config(tmp_path_factory.mktemp("results")), progress=False)


@pytest.fixture(scope="module")
def result(experiment):
    return bioattn.sweep(experiment, layers=["conv3_1"], betas=[0, 0.5, 1], progress=False)


def test_the_five_line_api_gives_run_sweeps_table(experiment, result):
    config = dataclasses.replace(experiment.config.sweep, layers=("conv3_1",), betas=(0, 0.5, 1))
    table = bioattn.run_sweep(
        experiment.network,
        experiment.detectors,
        experiment.values,
        experiment.test_images,
        config,
        progress=False,
    )
    pd.testing.assert_frame_equal(result.table, table)
    assert set(result.table["layer"]) == {"conv3_1", "all"}
    assert result.values is experiment.values
    assert result.config.betas == (0, 0.5, 1)
    assert result.config.image_types == ("merged",)  # the experiment's [sweep] section


def test_beta_zero_is_added_to_the_config_as_run_sweep_adds_it(experiment):
    with pytest.warns(UserWarning, match="β = 0 was missing"):
        found = bioattn.sweep(
            experiment, layers=["conv3_1"], betas=[1], methods=["tuning"], progress=False
        )
    assert found.config.betas == (0.0, 1)
    assert set(found.table["beta"]) == {0.0, 1.0}


def test_summary_has_the_increase_with_its_interval_per_layer_and_method(result):
    summary = result.summary
    assert set(zip(summary["layer"], summary["method"], strict=True)) == {
        (layer, method) for layer in ("conv3_1", "all") for method in result.config.methods
    }
    assert (summary["ci_low_pp"] <= summary["mean_delta_pp"] + 1e-9).all()
    assert (summary["mean_delta_pp"] <= summary["ci_high_pp"] + 1e-9).all()
    assert (summary["n_categories"] == 3).all()
    # the means are those of the per-category gains
    gains = result.gains.groupby(["layer", "method"])["delta_pp"].mean()
    for row in summary.itertuples():
        assert row.mean_delta_pp == pytest.approx(gains[(row.layer, row.method)])


def test_plot_returns_a_figure_with_a_panel_per_image_type(result):
    figure = result.plot()
    assert isinstance(figure, Figure)
    (axis,) = figure.axes
    assert axis.get_title() == "merged"
    assert [t.get_text() for t in axis.get_xticklabels()] == ["conv3_1", "all (β/10)"]


def test_html_and_text_show_the_summary(result):
    page = result._repr_html_()
    assert page.count("<table") == 1 and "conv3_1" in page and "shuffled-tuning" in page
    assert repr(result).startswith("SweepResult of tests.conftest:tiny_rgb_vgg: 72 rows")


def test_save_and_load_round_trip(result, tmp_path):
    folder = result.save(tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == sorted(RESULT_FILES)
    loaded = bioattn.load_results(folder)
    pd.testing.assert_frame_equal(loaded.table, result.table)
    # the file adds CF attributes (units, long_name, Conventions, history); the rest is equal
    xr.testing.assert_equal(loaded.values, result.values)
    assert loaded.values.attrs["Conventions"] == "CF-1.8"
    for name, value in result.values.attrs.items():
        assert loaded.values.attrs[name] == value, name
    assert loaded.config == result.config
    assert loaded.model["name"] == result.model["name"]
    pd.testing.assert_frame_equal(loaded.summary, result.summary)


def test_bad_settings_are_refused_before_any_work(experiment):
    with pytest.raises(ConfigError, match=r"unknown sweep settings \['beta'\]; valid: layers"):
        bioattn.sweep(experiment, beta=[1])
    with pytest.raises(ConfigError, match="prepare it with values=True"):
        bioattn.sweep(dataclasses.replace(experiment, values=None))


def test_load_results_names_a_folder_without_a_table(tmp_path):
    with pytest.raises(DataError, match=r"has no performance\.parquet"):
        bioattn.load_results(tmp_path)


def test_a_saved_result_is_a_results_folder_the_report_reads(result, tmp_path):
    from bioattn.cli import main

    folder = result.save(tmp_path / "saved")
    assert main(["report", str(folder)]) == 0
    assert (folder / "report.html").stat().st_size > 0
    assert bioattn.load_results(folder).table.equals(result.table)  # the report's files are extra


def test_one_name_or_any_sequence_is_taken_for_a_tuple_setting(experiment):
    found = bioattn.sweep(
        experiment,
        layers="conv2_1",
        betas=np.array([0.0, 1.0]),
        methods="tuning",
        all_layers=False,
        progress=False,
    )
    assert found.config.layers == ("conv2_1",)
    assert found.config.betas == (0.0, 1.0) and type(found.config.betas[1]) is float
    assert set(found.table["layer"]) == {"conv2_1"} and set(found.table["method"]) == {"tuning"}
