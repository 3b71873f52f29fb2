"""The redesigned code reproduces the outputs of the code before the redesign.

``tests/golden/`` holds outputs written by ``tests/golden/make_golden.py`` on the code before
the architecture redesign. Tables must be identical; recordings made with the batched engine
(the old code ran one full pass per condition) agree to float32 rounding. The one intended
change: cueing over a category subset now uses each category's own test set (the old code
seeded it by the index among the requested categories).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))

from make_golden import METHODS, recording_config, spatial_tasks  # noqa: E402

from bioattn.experiments.sweep import SweepConfig, run_sweep  # noqa: E402
from bioattn.models.detectors import fit_detectors  # noqa: E402
from bioattn.netcdf import read_layer_table  # noqa: E402

from .conftest import make_tiny_network, six_categories  # noqa: E402


def golden(name: str) -> pd.DataFrame:
    return pd.read_parquet(GOLDEN / f"{name}.parquet")


@pytest.fixture(scope="module")
def setup():
    network = make_tiny_network()
    train, test = six_categories("train"), six_categories("test")
    detectors = fit_detectors(
        network.readout_features(train.images), train.labels, train.categories
    )
    with xr.open_dataset(GOLDEN / "values.nc", engine="h5netcdf") as handle:
        values = handle.load()
    return network, detectors, values, train, test


@pytest.mark.parametrize("engine", ["batched", "naive"])
def test_sweep_tables_are_unchanged(setup, engine):
    network, detectors, values, _train, test = setup
    config = SweepConfig(methods=METHODS, betas=(0.0, 0.5, 2.0), n_pos=6, n_neg=6)
    table = run_sweep(network, detectors, values, test, config, progress=False, engine=engine)
    pd.testing.assert_frame_equal(table, golden(f"sweep_{engine}"))
    subset = run_sweep(
        network,
        detectors,
        values,
        test,
        replace(config, categories=("c", "e")),
        progress=False,
        engine=engine,
    )
    pd.testing.assert_frame_equal(subset, golden("sweep_subset"))


def test_spatial_sweep_is_unchanged(setup):
    network, detectors, values, _train, test = setup
    spatial = SweepConfig(
        image_types=("array",),
        methods=("spatial", "spatial+tuning", "spatial+gradient-additive"),
        betas=(0.0, 0.3, 1.0),
    )
    table = run_sweep(network, detectors, values, None, spatial, False, tasks=spatial_tasks(test))
    pd.testing.assert_frame_equal(table, golden("sweep_spatial"))


def test_cueing_is_unchanged_and_subsets_use_each_categorys_own_images(setup):
    from bioattn.experiments.psychophysics import CueingConfig, run_cueing

    network, detectors, _values, _train, test = setup
    config = CueingConfig(betas=(0.0, 0.5, 1.0), n_pos=5, n_neg=5)
    full = run_cueing(network, detectors, test, config, progress=False)
    pd.testing.assert_frame_equal(full, golden("cueing"))
    subset = run_cueing(
        network, detectors, test, replace(config, categories=("d", "b")), progress=False
    )
    # the fix: a subset's rows are the full run's rows of those categories
    expected = full[full["category"].isin(["d", "b"])]
    expected = pd.concat([expected[expected["category"] == c] for c in ("d", "b")])
    pd.testing.assert_frame_equal(subset, expected.reset_index(drop=True))
    assert not subset.equals(golden("cueing_subset"))  # the old subset rows were other images


def test_noise_detection_is_unchanged(setup):
    from bioattn.attention.values import tuning_values
    from bioattn.experiments.psychophysics import (
        NoiseConfig,
        noise_gradient_values,
        run_noise_detection,
    )

    network, detectors, _values, train, test = setup
    values = noise_gradient_values(
        tuning_values(network, train), network, detectors, train, 0.5, n=5
    )
    config = NoiseConfig(snrs=(0.5, 2.0, 10.0), n_pos=5, n_neg=5)
    table = run_noise_detection(network, detectors, values, test, config, progress=False)
    pd.testing.assert_frame_equal(table, golden("noise"))


def test_ssn_sweep_is_unchanged(tmp_path):
    # in a fresh process, as the reference was made (see make_golden.ssn_case)
    out = tmp_path / "ssn.parquet"
    script = GOLDEN / "make_golden.py"
    subprocess.run([sys.executable, str(script), "ssn", str(out)], check=True)
    pd.testing.assert_frame_equal(pd.read_parquet(out), golden("ssn_sweep"))


@pytest.mark.parametrize("engine", ["naive", "batched"])
def test_recording_is_unchanged(setup, tmp_path, engine):
    from bioattn.experiments.recording import load_recording, record

    network, detectors, values, _train, test = setup
    config = recording_config()
    path = record(
        network,
        values,
        test,
        tmp_path / "rec.nc",
        config,
        detectors=detectors,
        progress=False,
        engine=engine,
    )
    new, old = load_recording(path), load_recording(GOLDEN / "recording.nc")
    assert sorted(new.variables) == sorted(old.variables)
    # the intended change: CF attributes, and the layer table as string lists (still read from
    # the old JSON form)
    added = {"Conventions", "title", "source", "history", "layers", "layer_modules"}
    assert {k: v for k, v in new.attrs.items() if k not in added} == {
        k: v for k, v in old.attrs.items() if k not in added
    }
    assert read_layer_table(new) == read_layer_table(old)
    assert new.attrs["Conventions"] == "CF-1.8"
    for name in old.variables:
        if old[name].dtype.kind in "fc" and engine == "batched":
            # the engine's tails agree with full passes to float32 rounding (relative to the
            # variable's largest magnitude, as the engine's own tests measure it)
            scale = float(np.nanmax(np.abs(old[name].values)))
            np.testing.assert_allclose(
                new[name].values, old[name].values, rtol=1e-5, atol=1e-5 * scale, err_msg=name
            )
        else:
            np.testing.assert_array_equal(new[name].values, old[name].values, err_msg=name)
