"""Bad values never give a wrong table: values of another model, values with non-finite
entries and damaged values files are refused, with errors that name what is wrong and what
would be right, and nothing is written."""

from __future__ import annotations

import gc
import re
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from bioattn.attention.values import (
    FINGERPRINT_ATTR,
    check_values_match,
    load_values,
    model_fingerprint,
    save_values,
    tuning_values,
)
from bioattn.errors import ConfigError, DataError
from bioattn.experiments.config import load_config
from bioattn.experiments.prepare import prepare
from bioattn.experiments.sweep import SweepConfig, resolve_sweep, run_sweep
from bioattn.models.detectors import fit_detectors
from bioattn.models.network import Network
from bioattn.netcdf import read_layer_table
from tests.conftest import make_image_set, make_tiny_network, six_categories, write_pattern_folder

GOLDEN = Path(__file__).parent / "golden"
HASH = "[0-9a-f]{16}"


def _unit(values: xr.Dataset, alias: str, channel: int) -> int:
    """Index along ``unit`` of one map."""
    match = (values["layer"].values == alias) & (values["channel"].values == channel)
    return int(np.flatnonzero(match)[0])


# --- the fingerprint -------------------------------------------------------------------------
class _NormedNet(nn.Module):
    """A conv, BatchNorm (its 0-dim ``num_batches_tracked`` buffer) and ReLU, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU())
        self.classifier = nn.Linear(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def test_values_carry_the_fingerprint_of_their_model(
    tmp_path, tiny_network, tiny_images, tiny_detectors, values
):
    weights_only = model_fingerprint(tiny_network)
    full = model_fingerprint(tiny_network, tiny_detectors)
    assert re.fullmatch(f"weights:{HASH}", weights_only)
    assert re.fullmatch(f"weights:{HASH},detectors:{HASH}", full)
    assert full.startswith(weights_only + ",")
    # tuning values need no detectors; gradient values add them to the fingerprint
    assert tuning_values(tiny_network, tiny_images).attrs[FINGERPRINT_ATTR] == weights_only
    assert values.attrs[FINGERPRINT_ATTR] == full
    # the same weights in another instance, on another precision: the same fingerprint
    same = make_tiny_network(seed=0)
    same.precision = "bfloat16"
    assert model_fingerprint(same, tiny_detectors) == full
    other = model_fingerprint(make_tiny_network(seed=1), tiny_detectors)
    assert other.split(",")[0] != full.split(",")[0]
    assert other.split(",")[1] == full.split(",")[1]
    other_detectors = replace(tiny_detectors, categories=("a", "b", "c", "e"))
    assert model_fingerprint(tiny_network, other_detectors) != full
    # a 0-dim tensor in the state dict is hashed too
    torch.manual_seed(0)
    normed = Network(_NormedNet(), "normed", "classifier", (0.0,), (1.0,))
    first = model_fingerprint(normed)
    normed.module.features[1].num_batches_tracked += 1
    assert model_fingerprint(normed) != first
    # kept by the file
    loaded = load_values(save_values(values, tmp_path / "values.nc"), tiny_network, tiny_detectors)
    assert loaded.attrs[FINGERPRINT_ATTR] == full


def test_values_numbers_are_unchanged_only_the_fingerprint_and_layer_lists_are_new():
    if str(GOLDEN) not in sys.path:
        sys.path.insert(0, str(GOLDEN))
    from make_golden import tiny_values

    network = make_tiny_network()
    train = six_categories("train")
    detectors = fit_detectors(
        network.readout_features(train.images), train.labels, train.categories
    )
    new = tiny_values(network, train, detectors)
    with xr.open_dataset(GOLDEN / "values.nc", engine="h5netcdf") as handle:
        old = handle.load()
    assert new.attrs.pop(FINGERPRINT_ATTR) == model_fingerprint(network, detectors)
    # the layer table is now two string lists (the old files' JSON form is still read)
    assert read_layer_table(new) == read_layer_table(old)
    for dataset in (new, old):
        for key in ("layers", "layer_modules"):
            dataset.attrs.pop(key, None)
    xr.testing.assert_identical(new, old)  # bit-identical numbers, coordinates and attrs


# --- values of another model -----------------------------------------------------------------
def test_load_values_refuses_values_of_another_model(tmp_path, values, tiny_detectors):
    path = save_values(values, tmp_path / "values.nc")
    before = path.read_bytes()
    other = make_tiny_network(seed=1)
    with pytest.raises(ConfigError) as error:
        load_values(path, other, tiny_detectors)
    assert str(error.value) == (
        f"values file {path} was computed for another model: its fingerprint is "
        f"{values.attrs[FINGERPRINT_ATTR]} but model 'tiny' here is "
        f"{model_fingerprint(other, tiny_detectors)}; the weights differ. Recompute the values "
        "with `bioattn values` for this model, or set [values] allow_other_model = true to use "
        "them on purpose"
    )
    with pytest.raises(ConfigError, match="the weights differ"):
        load_values(path, other)  # without detectors: the weights alone
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["values.nc"]


def test_values_of_other_detectors_are_refused(tiny_network, tiny_images, tiny_detectors, values):
    other = replace(tiny_detectors, bias=tiny_detectors.bias + 1.0)
    with pytest.raises(ConfigError) as error:
        check_values_match(values, tiny_network, other)
    assert str(error.value) == (
        "the values dataset was computed for another model: its fingerprint is "
        f"{model_fingerprint(tiny_network, tiny_detectors)} but model 'tiny' here is "
        f"{model_fingerprint(tiny_network, other)}; the detectors (or categories) differ. "
        "Recompute the values with `bioattn values` for this model, or set [values] "
        "allow_other_model = true to use them on purpose"
    )
    renamed = replace(tiny_detectors, categories=("a", "b", "c", "e"))
    with pytest.raises(ConfigError, match=r"the detectors \(or categories\) differ"):
        check_values_match(values, tiny_network, renamed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_values_match(values, tiny_network)  # the same weights: no detectors to compare
        # tuning values depend on the weights only: any detectors go with them
        check_values_match(tuning_values(tiny_network, tiny_images), tiny_network, other)


def test_allow_other_model_only_warns(tmp_path, values, tiny_detectors):
    path = save_values(values, tmp_path / "values.nc")
    other = make_tiny_network(seed=1)
    expected = (
        f"values file {path} was computed for another model: its fingerprint is "
        f"{values.attrs[FINGERPRINT_ATTR]} but model 'tiny' here is "
        f"{model_fingerprint(other, tiny_detectors)}; the weights differ; using them anyway "
        "([values] allow_other_model = true)"
    )
    with pytest.warns(UserWarning) as record:
        loaded = load_values(path, other, tiny_detectors, allow_other_model=True)
    assert [str(w.message) for w in record] == [expected]
    for name in values.data_vars:
        np.testing.assert_array_equal(loaded[name].values, values[name].values)
    assert loaded.attrs[FINGERPRINT_ATTR] == values.attrs[FINGERPRINT_ATTR]  # still its origin
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_values_match(loaded, other)  # later checks (a sweep's) of the accepted model pass
    with pytest.raises(ConfigError, match="the weights differ"):
        check_values_match(loaded, make_tiny_network(seed=2))  # a third model does not


def test_values_without_fingerprint_are_accepted_with_a_warning(tmp_path, values, tiny_detectors):
    old = values.copy()
    del old.attrs[FINGERPRINT_ATTR]
    path = save_values(old, tmp_path / "values.nc")
    for network in (make_tiny_network(seed=0), make_tiny_network(seed=1)):
        with pytest.warns(UserWarning) as record:
            loaded = load_values(path, network, tiny_detectors)
        assert [str(w.message) for w in record] == [
            f"values file {path} carries no model fingerprint (written by an older bioattn), so "
            "it cannot be checked that it was computed for model 'tiny'; recompute the values "
            "with `bioattn values` to have them checked"
        ]
        assert FINGERPRINT_ATTR not in loaded.attrs


# --- non-finite values -----------------------------------------------------------------------
def test_non_finite_values_are_refused(tmp_path, values, tiny_network, tiny_detectors):
    bad = values.copy(deep=True)
    bad["tuning"].values[1, _unit(bad, "conv2_1", 2)] = np.inf
    bad["gradient_merged"].values[2, _unit(bad, "conv1_1", 1)] = np.nan
    bad["gradient_merged"].values[3, _unit(bad, "conv2_1", 0)] = -np.inf
    path = save_values(bad, tmp_path / "values.nc")
    problem = (
        "holds 3 non-finite entries (NaN or inf: 1 in 'tuning', 2 in 'gradient_merged'); the "
        "first is tuning[category 'b', layer conv2_1 channel 2] = inf. Values must be finite: "
        "recompute them with `bioattn values`"
    )
    for network in (None, tiny_network):
        with pytest.raises(DataError) as error:
            load_values(path, network, tiny_detectors)
        assert str(error.value) == f"values file {path} {problem}"
    with pytest.raises(DataError) as error:
        check_values_match(bad, tiny_network)
    assert str(error.value) == f"the values dataset {problem}"
    one = values.copy(deep=True)
    one["mean_activity"].values[0, _unit(one, "conv1_1", 0)] = np.nan
    with pytest.raises(DataError) as error:
        check_values_match(one, tiny_network)
    assert "holds 1 non-finite entry (NaN or inf: 1 in 'mean_activity'); the first is " in str(
        error.value
    )
    assert "mean_activity[category 'a', layer conv1_1 channel 0] = nan" in str(error.value)
    # a sweep refuses them before any work (they used to act as 0)
    config = SweepConfig(image_types=("merged",), betas=(0.0, 1.0), methods=("tuning",))
    with pytest.raises(DataError, match="holds 3 non-finite entries"):
        run_sweep(
            tiny_network, tiny_detectors, bad, make_image_set(split="test"), config, progress=False
        )


def test_unit_coordinates_that_do_not_follow_the_layer_table_are_refused(values, tiny_network):
    edited = values.assign_coords(channel=("unit", values["channel"].values[::-1].copy()))
    with pytest.raises(DataError) as error:
        check_values_match(edited, tiny_network)
    assert str(error.value) == (
        "the values dataset has the layer table of model 'tiny' but its per-unit 'channel' "
        "coordinate does not follow it (the file is damaged or was edited); recompute the "
        "values with `bioattn values`"
    )


# --- damaged files ---------------------------------------------------------------------------
def _damage(data: bytes, how: str, tuning: np.ndarray) -> bytes:
    damaged = bytearray(data)
    if how == "signature":
        damaged[:8] = b"\x00" * 8
    elif how in ("root header", "variable header"):  # HDF5 object headers (checksummed)
        start = data.index(b"OHDR")
        if how == "variable header":
            start = data.index(b"OHDR", start + 4)
        damaged[start + 16 : start + 24] = b"\x41" * 8
    elif how == "data":
        start = data.index(tuning.tobytes()[:16])
        damaged[start : start + 8] = b"\x41" * 8  # finite numbers: only a checksum sees it
    elif how == "truncated":
        damaged = damaged[: len(data) // 2]
    else:
        damaged = bytearray(b"not a netcdf file")
    return bytes(damaged)


@pytest.mark.parametrize(
    "how", ["signature", "root header", "variable header", "data", "truncated", "text"]
)
def test_damaged_values_file_is_refused(tmp_path, values, tiny_network, how):
    path = save_values(values, tmp_path / "values.nc")
    path.write_bytes(_damage(path.read_bytes(), how, values["tuning"].values))
    unraisable: list[object] = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        with pytest.raises(DataError) as error:
            load_values(path, tiny_network)
        gc.collect()
    finally:
        sys.unraisablehook = hook
    message = str(error.value)
    assert message.startswith(
        f"cannot read values file {path}: it is corrupt or not a values file ("
    )
    assert message.endswith(
        "); recompute it with `bioattn values` (a netCDF file written by `bioattn values` is "
        "expected)"
    )
    assert error.value.__cause__ is None and error.value.__context__ is None
    assert unraisable == []  # no late AttributeError from a half-opened h5netcdf file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["values.nc"]


# --- prepare(): RUN/values.nc and [values] path ----------------------------------------------
CONFIG_TOML = """
[model]
spec = "tests.conftest:tiny_rgb_net"
seed = {seed}

[data]
kind = "image-folder"
path = "{data}"
size = 16
resize = 16
detector_images = 12

[values]
gradient_images = 4
{values}

[sweep]
image_types = ["merged"]
betas = [0, 0.5]
n_pos = 4
n_neg = 4

[run]
out = "{out}"
"""


def _config(tmp_path: Path, name: str, seed: int, values: str = ""):
    data = tmp_path / "images"
    if not data.exists():
        write_pattern_folder(data, n_per_category=8)
    path = tmp_path / f"{name}.toml"
    out = tmp_path / name
    path.write_text(CONFIG_TOML.format(seed=seed, data=data, values=values, out=out))
    return load_config(path)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """A prepared run of the seed-0 model: ``first/values.nc`` and its detectors."""
    root = tmp_path_factory.mktemp("prepare")
    prepare(_config(root, "first", seed=0), progress=False)
    assert (root / "first" / "values.nc").exists()
    return root


def test_prepare_refuses_values_path_of_a_model_with_another_seed(first_run):
    shared = first_run / "first" / "values.nc"
    before = shared.read_bytes()
    fingerprint = xr.open_dataset(shared, engine="h5netcdf").attrs[FINGERPRINT_ATTR]
    config = _config(first_run, "second", seed=1, values=f'path = "{shared}"')
    with pytest.raises(ConfigError) as error:
        prepare(config, progress=False)
    message = str(error.value)
    assert re.fullmatch(
        f"values file {re.escape(str(shared))} was computed for another model: its fingerprint "
        f"is {fingerprint} but model '[^']+' here is weights:{HASH},detectors:{HASH}; the "
        r"weights and detectors \(or categories\) differ\. Recompute the values with `bioattn "
        r"values` for this model, or set \[values\] allow_other_model = true to use them on "
        "purpose",
        message,
    ), message
    assert shared.read_bytes() == before
    assert not (first_run / "second" / "values.nc").exists()


def test_prepare_with_allow_other_model_uses_them_with_a_warning(first_run):
    shared = first_run / "first" / "values.nc"
    config = _config(
        first_run, "third", seed=1, values=f'path = "{shared}"\nallow_other_model = true'
    )
    assert config.values.allow_other_model
    with pytest.warns(UserWarning, match="was computed for another model.*using them anyway"):
        experiment = prepare(config, progress=False)
    with xr.open_dataset(shared, engine="h5netcdf") as handle:
        original = handle.load()
    for name in original.data_vars:
        np.testing.assert_array_equal(experiment.values[name].values, original[name].values)
    assert not (first_run / "third" / "values.nc").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the sweep's own check does not refuse them again
        resolve_sweep(config.sweep, experiment.network, experiment.detectors, experiment.values)


def test_prepare_refuses_a_run_folder_values_file_of_another_model(first_run):
    values_file = first_run / "first" / "values.nc"
    before = values_file.read_bytes()
    config = _config(first_run, "first", seed=1)  # the same run folder, another model
    with pytest.raises(ConfigError) as error:
        prepare(config, progress=False)
    message = str(error.value)
    assert message.startswith(f"values file {values_file} was computed for another model: ")
    assert "; the weights differ. Recompute the values with `bioattn values` for this model" in (
        message
    )
    assert message.endswith(
        f"to use them on purpose (or remove {values_file}: the run computes it again for this "
        "model)"
    )
    assert values_file.read_bytes() == before
