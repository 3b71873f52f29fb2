"""Brain-Score-style assemblies of recordings: layout, values, the CLI, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import bioattn
from bioattn.analysis.neural import ROW_COORDS, AnalysisError
from bioattn.cli import main
from bioattn.errors import DataError
from bioattn.experiments.assembly import save_assembly, to_brainscore_assembly
from bioattn.experiments.recording import load_recording
from tests.conftest import make_tiny_recording
from tests.test_netcdf import assert_cf


@pytest.fixture(scope="module")
def recording_path(tmp_path_factory):
    return make_tiny_recording(tmp_path_factory.mktemp("export") / "rec.nc")


def test_assembly_layout_coordinates_and_values(recording_path):
    recording = load_recording(recording_path)
    assembly = bioattn.to_brainscore_assembly(recording_path)  # the top-level API, from a path
    assert assembly.dims == ("presentation", "neuroid")
    assert assembly.shape == recording["activity"].shape
    assert assembly.dtype == np.float32
    np.testing.assert_array_equal(assembly.values, recording["activity"].values)
    for name in ("stimulus_id", "category_name", "target_logit", *ROW_COORDS):
        assert assembly[name].dims == ("presentation",), name
    for name in ROW_COORDS:
        np.testing.assert_array_equal(assembly[name].values, recording[name].values, err_msg=name)
    for name in ("neuroid_id", "layer", "channel", "unit"):
        assert assembly[name].dims == ("neuroid",), name
    ids = list(assembly["neuroid_id"].values)
    assert ids == ["conv1_1.0", "conv1_1.1", "conv2_1.0", "conv2_1.1", "conv2_1.2"]
    assert len(set(ids)) == len(ids)
    # an image keeps its stimulus id across attention conditions; task and reference images differ
    baseline = assembly.where(assembly["attended_layer"] == "none", drop=True)
    attended = assembly.where(assembly["attended_layer"] == "conv2_1", drop=True)
    task_ids = baseline["stimulus_id"].values[baseline["role"].values == "task"]
    assert sorted(task_ids) == sorted(attended["stimulus_id"].values)
    assert set(assembly["stimulus_id"].values) == {
        f"{c}.{r}.{i}"
        for c, r, i in zip(
            recording["task_category"].values,
            recording["role"].values,
            recording["image"].values,
            strict=True,
        )
    }
    assert "a.reference.0" in set(assembly["stimulus_id"].values)
    assert set(assembly["beta"].values) == {0.0, 0.5}
    assert assembly.attrs["format"] == "bioattn-brainscore-assembly-1"
    assert assembly.attrs["layers"] == ["conv1_1", "conv2_1"]
    # an open dataset gives the same assembly
    xr.testing.assert_identical(to_brainscore_assembly(recording), assembly)


def test_cli_round_trip_writes_a_cf_netcdf_assembly(recording_path, tmp_path, capsys):
    out = tmp_path / "assembly.nc"
    assert main(["export", "brainscore", str(recording_path), "--out", str(out)]) == 0
    assert "neuroids written to" in capsys.readouterr().out
    with xr.open_dataset(out, engine="h5netcdf") as dataset:
        assert_cf(dataset.load())
    read = xr.open_dataarray(out, engine="h5netcdf").load()
    expected = to_brainscore_assembly(recording_path)
    np.testing.assert_array_equal(read.values, expected.values)
    for name in expected.coords:
        np.testing.assert_array_equal(read[name].values, expected[name].values, err_msg=name)
    assert read.dims == ("presentation", "neuroid")
    assert read["is_target"].dtype == bool


def test_bad_input_is_refused_clearly(recording_path, tmp_path, capsys):
    missing = tmp_path / "nope.nc"
    with pytest.raises(DataError, match="does not exist; make one with `bioattn record`"):
        to_brainscore_assembly(missing)
    assert main(["export", "brainscore", str(missing), "--out", str(tmp_path / "a.nc")]) == 2
    assert "bioattn export: error: recording" in capsys.readouterr().err
    # an assembly (or any other netCDF file) is not a recording
    assembly = save_assembly(to_brainscore_assembly(recording_path), tmp_path / "assembly.nc")
    with pytest.raises(DataError, match="is not a bioattn recording"):
        to_brainscore_assembly(assembly)
    text = tmp_path / "text.nc"
    text.write_text("not netCDF")
    with pytest.raises(DataError, match="cannot read recording"):
        to_brainscore_assembly(text)
    # a dataset without a recording's coordinates
    with pytest.raises(AnalysisError, match="which the recording lacks"):
        to_brainscore_assembly(xr.Dataset({"activity": (("stimulus", "unit"), np.zeros((2, 3)))}))
