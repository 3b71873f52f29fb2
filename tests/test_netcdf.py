"""CF attributes on every netCDF file bioattn writes, and files of the older form still load."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest
import xarray as xr

from bioattn import __version__
from bioattn.attention.values import check_values_match, load_values, save_values
from bioattn.errors import ConfigError
from bioattn.experiments.recording import load_recording, open_recording
from bioattn.netcdf import read_layer_table, string_list, variable_attrs
from tests.conftest import make_tiny_recording

GOLDEN_VALUES = "tests/golden/values.nc"
GOLDEN_RECORDING = "tests/golden/recording.nc"


def assert_cf(dataset: xr.Dataset) -> None:
    """Every variable and coordinate has units and a long name; the global CF attributes."""
    for name, variable in dataset.variables.items():
        assert variable.attrs.get("units") == "1", name
        assert variable.attrs.get("long_name"), name
    assert dataset.attrs["Conventions"] == "CF-1.8"
    assert dataset.attrs["title"].startswith("bioattn ")
    assert dataset.attrs["source"] == f"bioattn {__version__}"
    stamp, _, what = dataset.attrs["history"].splitlines()[-1].partition(" ")
    assert datetime.fromisoformat(stamp).tzinfo is not None and "bioattn" in what


def test_values_files_carry_cf_attributes_and_the_same_numbers(values, tiny_network, tmp_path):
    before = {name: dict(v.attrs) for name, v in values.variables.items()}
    path = save_values(values, tmp_path / "values.nc")
    assert {name: dict(v.attrs) for name, v in values.variables.items()} == before  # unchanged
    loaded = load_values(path, tiny_network)
    assert_cf(loaded)
    assert "gradient value on merged images" in loaded["gradient_merged"].attrs["long_name"]
    assert loaded["tuning"].attrs["source_split"] == "train"  # earlier attributes are kept
    for name in values.variables:
        np.testing.assert_array_equal(loaded[name].values, values[name].values, err_msg=name)
    # the layer table as two string arrays, not a JSON string
    assert loaded.attrs["layers"] == ["conv1_1", "conv2_1"]
    assert loaded.attrs["layer_modules"] == ["features.0", "features.3"]
    assert read_layer_table(loaded) == [("conv1_1", "features.0", 2), ("conv2_1", "features.3", 3)]
    # written again: the history keeps its first line
    again = load_values(save_values(loaded, tmp_path / "again.nc"))
    assert len(again.attrs["history"].splitlines()) == 2


def test_recordings_carry_cf_attributes_on_every_variable(tmp_path):
    path = make_tiny_recording(tmp_path / "rec.nc")
    data = load_recording(path)
    assert {"maps_conv1_1", "quadrant_activity", "target_logit", "quadrant"} <= set(data.variables)
    assert_cf(data)
    assert data["maps_conv1_1"].attrs["long_name"] == "full post-ReLU feature maps of layer conv1_1"
    assert data["activity"].attrs["description"] == "spatially averaged post-ReLU activity"
    assert data.attrs["layers"] == ["conv1_1", "conv2_1"]
    assert read_layer_table(data) == [("conv1_1", "features.0", 2), ("conv2_1", "features.3", 3)]
    assert data["is_target"].dtype == bool  # the units do not disturb xarray's decoding


def test_a_one_layer_file_reads_its_layer_list(tmp_path):
    # netCDF readers give a one-element string array back as a plain string
    path = make_tiny_recording(tmp_path / "one.nc", record_layers=("conv2_1",), full_maps=())
    with open_recording(path) as data:
        assert data.attrs["layers"] == "conv2_1"
        assert read_layer_table(data) == [("conv2_1", "features.3", 3)]


def test_old_files_with_a_json_layer_table_still_load(values, tiny_network, tmp_path):
    old = values.copy()
    old.attrs = {k: v for k, v in values.attrs.items() if k != "layer_modules"}
    old.attrs["layers"] = json.dumps([["conv1_1", "features.0", 2], ["conv2_1", "features.3", 3]])
    path = tmp_path / "old.nc"
    old.to_netcdf(path, engine="h5netcdf")  # as bioattn wrote values before
    loaded = load_values(path, tiny_network)
    assert loaded.attrs["layers"] == old.attrs["layers"]
    np.testing.assert_array_equal(loaded["tuning"].values, values["tuning"].values)
    # the golden files were written by the old code
    with xr.open_dataset(GOLDEN_VALUES, engine="h5netcdf") as golden:
        assert isinstance(golden.attrs["layers"], str)
        with pytest.warns(UserWarning, match="no model fingerprint"):
            check_values_match(golden, tiny_network)
    with open_recording(GOLDEN_RECORDING) as recording:
        assert read_layer_table(recording) == [
            ("conv1_1", "features.0", 2),
            ("conv2_1", "features.3", 3),
        ]


def test_a_values_file_of_other_layers_is_still_refused(values, tiny_network, tmp_path):
    other = values.copy()
    other.attrs["layer_modules"] = ["features.0", "features.4"]
    path = save_values(other, tmp_path / "other.nc")
    with pytest.raises(ConfigError, match=r"does not match model 'tiny'"):
        load_values(path, tiny_network)


def test_string_lists_and_unknown_variables():
    assert string_list(["a", "b"]) == ["a", "b"]
    assert string_list("a") == ["a"]
    assert string_list('["a", "b"]') == ["a", "b"]  # the old JSON form
    assert string_list(np.array(["a", "b"], dtype=object)) == ["a", "b"]
    assert string_list(None) == []
    # a variable a user added gets its description as long name, and no unit is invented
    assert variable_attrs("extra", {"description": "my numbers"}) == {"long_name": "my numbers"}
    assert variable_attrs("tuning", {"units": "custom"})["units"] == "custom"
