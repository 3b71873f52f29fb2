"""Neural recordings and analyses: planted gains recovered, hand-computed indices, round trips,
bad input."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from bioattn.analysis.neural import (
    AnalysisError,
    analyze_recording,
    condition_means,
    fsgm_analysis,
    fsgm_fits,
    line_fits,
    modulation_index,
    population_fit,
    rank_bin_labels,
    rank_bins,
    spatial_analysis,
    tuning_ranks,
    vector_angle,
    vector_angle_analysis,
)
from bioattn.attention.values import tuning_values
from bioattn.cli import main
from bioattn.data.imageset import ImageSet
from bioattn.data.tasks import make_task_set
from bioattn.errors import CategoryError, ConfigError, DataError, LayerError
from bioattn.experiments.recording import (
    RecordingConfig,
    estimate_recording_bytes,
    load_recording,
    open_recording,
    plan_recording,
    record,
    record_tasks,
)
from bioattn.models.hooks import capture_activity, record_map_means
from tests.conftest import make_image_set, make_tiny_network

BETA = 0.5
OFFSET = 1.0  # planted tuning of each map's preferred category
STEP = 0.5  # planted drop in tuning per rank


# --- fixtures -----------------------------------------------------------------------------------
def _five_categories(split: str) -> ImageSet:
    """The conftest images plus a fifth category (random images), so 2×2 arrays can be drawn."""
    base = make_image_set(n_per_category=10, split=split)
    generator = torch.Generator().manual_seed(5 if split == "train" else 6)
    extra = 0.3 + 0.5 * torch.rand(10, 1, 8, 8, generator=generator)
    return ImageSet(
        torch.cat([base.images, extra]),
        torch.cat([base.labels, torch.full((10,), 4)]),
        ("a", "b", "c", "d", "e"),
        split,
    )


def _planted_ranks(n_categories: int, n_units: int) -> np.ndarray:
    """A different permutation of ranks 1..K for every map (seeded)."""
    rng = np.random.default_rng(7)
    return np.stack([rng.permutation(n_categories) + 1 for _ in range(n_units)], axis=1)


def _planted_values(network, images: ImageSet) -> tuple[xr.Dataset, np.ndarray]:
    """Tuning values replaced by OFFSET − STEP·(rank − 1), linear in each map's rank."""
    values = tuning_values(network, images)
    ranks = _planted_ranks(values.sizes["category"], values.sizes["unit"])
    values["tuning"] = (("category", "unit"), (OFFSET - STEP * (ranks - 1)).astype(np.float32))
    return values, ranks


@pytest.fixture
def network():
    """A tiny network whose maps are all active on the test images (seed 5)."""
    return make_tiny_network(seed=5)


Tiny = namedtuple("Tiny", "network values ranks path test")


@pytest.fixture(scope="module")
def merged_recording(tmp_path_factory) -> Tiny:
    """All 4 categories attended at the last layer (conv2_1) and the first, merged images.

    Module-scoped: tests only read it.
    """
    network = make_tiny_network(seed=5)
    values, ranks = _planted_values(network, make_image_set())
    test = make_image_set(n_per_category=10, split="test")
    config = RecordingConfig(
        attend_layers=("conv2_1", "conv1_1"),
        betas=(0.0, BETA),
        image_type="merged",
        n_pos=6,
        n_neg=4,
        n_reference=5,
        batch_size=4,
    )
    out = tmp_path_factory.mktemp("recording") / "rec.nc"
    path = record(network, values, test, out, config, progress=False)
    return Tiny(network, values, ranks, path, test)


# --- pure functions -----------------------------------------------------------------------------
def test_tuning_ranks_bins_and_labels():
    tuning = np.array([[0.5, -1.0], [2.0, 0.0], [-1.0, 0.0]])
    assert tuning_ranks(tuning).tolist() == [[2, 3], [1, 1], [3, 2]]  # tie keeps order
    assert rank_bins(np.arange(1, 11)).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert rank_bin_labels(10) == ["1", "2–3", "4–5", "6–7", "8–9", "10"]
    assert rank_bin_labels(5) == ["1", "2–3", "4–5"]


def test_modulation_index_matches_hand_values():
    a = np.array([3.0, 1.0, 0.0, 2.0, 0.0])
    u = np.array([1.0, 3.0, 0.0, 2.0, 4.0])
    expected = [0.5, -0.5, np.nan, 0.0, -1.0]
    np.testing.assert_allclose(modulation_index(a, u), expected)


def test_vector_angle_matches_hand_values():
    reference = np.array([1.0, 0.0, 0.0])
    responses = np.array(
        [[2.0, 0, 0], [0, 3.0, 0], [1.0, 1.0, 0], [1.0, 1.0, np.sqrt(2)], [0, 0, 0]]
    )
    np.testing.assert_allclose(vector_angle(reference, responses), [0, 90, 45, 60, np.nan])
    with pytest.raises(AnalysisError, match="units"):
        vector_angle(reference, np.ones((2, 4)))


def test_line_fits_and_population_fit():
    x = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, np.nan]])
    y = np.array([[1.0, 5.0], [3.0, 6.0], [5.0, 7.0]])
    slope, intercept, n = line_fits(x, y)
    assert slope[0] == pytest.approx(2.0) and intercept[0] == pytest.approx(1.0)
    assert np.isnan(slope[1]) and n.tolist() == [3, 2]  # one distinct x: no line
    tuning = np.array([-1.0, 0.0, 0.5, 2.0, 1.0])
    ratio = 1.2 + 0.3 * tuning
    ratio[4] = np.nan
    fit = population_fit(ratio, tuning)
    assert fit["slope"] == pytest.approx(0.3)
    assert fit["intercept"] == pytest.approx(1.2)
    assert fit["r"] == pytest.approx(1.0)
    assert fit["n_units"] == 4


@pytest.mark.parametrize("attended", [10, 6])
def test_fsgm_fits_recover_planted_line(attended):
    """Ratios linear in rank are recovered exactly, with all or a subset of categories."""
    slope, intercept = -0.07, 1.4
    ranks = _planted_ranks(10, 40)[:attended]
    ratios = intercept + slope * (ranks - 1.0)
    ratios[0, 3] = np.nan  # an excluded (silent) map-category pair changes nothing
    fits = fsgm_fits(ratios, ranks)
    np.testing.assert_allclose(fits["slope"], slope, atol=1e-12)
    np.testing.assert_allclose(fits["intercept"], intercept, atol=1e-12)
    assert fits["binned"].shape == (6, 40)


def _synthetic_recording(slope: float, intercept: float, n_categories: int = 6) -> xr.Dataset:
    """A recording built from arrays: attended activity = unattended × planted ratio."""
    rng = np.random.default_rng(3)
    units, n_images = 12, 3
    ranks = _planted_ranks(n_categories, units)
    tuning = -(ranks - 1.0)  # rank 1 has the largest tuning
    layers = np.array(["conv1_1"] * 5 + ["conv2_1"] * 7)
    rows, blocks, condition = [], [], 0
    for k in range(n_categories):
        category = f"c{k}"
        u = rng.uniform(0.5, 2.0, size=(n_images, units))
        ratio = intercept + slope * (ranks[k] - 1.0)
        for name, activity, role in (("none", u, "task"), ("conv1_1", u * ratio, "task")):
            for i in range(n_images):
                rows.append(
                    {
                        "condition": condition,
                        "role": role,
                        "task_category": category,
                        "image": i,
                        "is_target": True,
                        "target_quadrant": -1,
                        "attended_category": "none" if name == "none" else category,
                        "attended_layer": name,
                        "method": "none" if name == "none" else "tuning",
                        "beta": 0.0 if name == "none" else 1.0,
                    }
                )
            blocks.append(activity)
            condition += 1
    frame = pd.DataFrame(rows)
    coords = {name: ("stimulus", frame[name].to_numpy()) for name in frame.columns}
    return xr.Dataset(
        {
            "activity": (("stimulus", "unit"), np.concatenate(blocks)),
            "tuning": (("category", "unit"), tuning),
        },
        coords={
            **coords,
            "unit": np.arange(units),
            "layer": ("unit", layers),
            "channel": ("unit", np.r_[np.arange(5), np.arange(7)]),
            "category": [f"c{k}" for k in range(n_categories)],
        },
        attrs={"network_layers": json.dumps(["conv1_1", "conv2_1"])},
    )


def test_fsgm_analysis_recovers_planted_slope_and_intercept():
    recording = _synthetic_recording(slope=-0.12, intercept=1.3)
    means = condition_means(recording)
    tables = fsgm_analysis(means, recording["tuning"])
    summary = tables["summary"].set_index("recorded_layer")
    np.testing.assert_allclose(summary["median_slope"], -0.12, atol=1e-9)
    np.testing.assert_allclose(summary["median_intercept_minus_1"], 0.3, atol=1e-9)
    assert summary.loc["conv2_1", "n_units"] == 7
    assert summary.loc["conv2_1", "fraction_negative_slope"] == 1.0
    assert summary.loc["conv1_1", "relation"] == "attended"
    bins = tables["bins"]
    first = bins[(bins["recorded_layer"] == "conv2_1") & (bins["bin"] == 0)]
    assert first["mean_ratio"].iloc[0] == pytest.approx(1.3)


# --- recordings on the tiny network ------------------------------------------------------------
def test_recording_round_trip_keeps_coordinates_and_values(network, tmp_path):
    values = tuning_values(network, _five_categories("train"))
    test = _five_categories("test")
    config = RecordingConfig(
        categories=("b", "a"),
        attend_layers=("conv2_1",),
        all_layers=True,
        betas=(0.5, 1.0),
        image_type="array",
        full_maps=("conv1_1",),
        n_pos=4,
        n_neg=3,
        n_reference=2,
        batch_size=3,
    )
    path = record(network, values, test, tmp_path / "rec.nc", config, progress=False)
    assert not list(tmp_path.glob(".*partial*"))
    data = load_recording(path)
    assert data.attrs["format"] == "bioattn-recording-1"
    assert json.loads(data.attrs["attended_categories"]) == ["a", "b"]  # values' order
    assert list(data["layer"].values) == ["conv1_1"] * 2 + ["conv2_1"] * 3
    assert list(data["channel"].values) == [0, 1, 0, 1, 2]
    assert list(data["quadrant"].values) == ["top-left", "top-right", "bottom-left", "bottom-right"]
    # 2 categories × (7 task images × (1 baseline + 2 settings × 2 β) + 2 reference images)
    assert data.sizes["stimulus"] == 2 * (7 * 5 + 2)
    assert data["is_target"].dtype == bool
    rows = data[["condition", "role", "attended_layer", "beta"]].to_dataframe()
    assert set(rows["attended_layer"]) == {"none", "conv2_1", "all"}
    assert set(rows["role"]) == {"task", "reference"}
    assert rows.groupby("condition").size().tolist() == [7, 2, 7, 7, 7, 7] * 2
    np.testing.assert_array_equal(data["tuning"].values, values["tuning"].values)

    # the baseline rows of "a" are the network's activity on its task set
    task = make_task_set(test, "a", "array", n_pos=4, n_neg=3, seed=0)
    base = data.where(
        (data["task_category"] == "a")
        & (data["attended_layer"] == "none")
        & (data["role"] == "task"),
        drop=True,
    )
    direct = record_map_means(network, task.images)
    expected = np.concatenate([direct["conv1_1"], direct["conv2_1"]], axis=1)
    np.testing.assert_allclose(base["activity"].values, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(base["is_target"].values, task.is_target.numpy())
    np.testing.assert_array_equal(base["target_quadrant"].values, task.target_quadrant.numpy())
    layer = network.resolve_layer("conv1_1")
    with torch.no_grad(), capture_activity(network, [layer]) as store:
        network(network.preprocess(task.images))
    np.testing.assert_allclose(base["maps_conv1_1"].values, store["conv1_1"].numpy(), atol=1e-7)
    # even map sizes: the four quadrants tile the map, so their mean is the map mean
    np.testing.assert_allclose(
        base["quadrant_activity"].mean("quadrant").values, expected, rtol=1e-5, atol=1e-7
    )
    reference = data.where(data["role"] == "reference", drop=True)
    assert np.isnan(reference["maps_conv1_1"].values).all()  # 8×8 images: maps of another size
    assert np.isnan(reference["quadrant_activity"].values).all()
    assert estimate_recording_bytes(_plan(network, values, config)) >= path.stat().st_size


def _plan(network, values, config):
    sizes = {c: config.n_pos + config.n_neg for c in config.categories}
    refs = {c: config.n_reference for c in config.categories}
    return plan_recording(network, values, config, sizes, refs, (1, 16, 16), (1, 8, 8))


def test_attention_at_last_layer_gives_planted_ratios_and_fsgm_line(merged_recording):
    """Attended at conv2_1 the ratio of each map is its gain 1 + β·tuning, linear in rank."""
    with open_recording(merged_recording.path) as data:
        means = condition_means(data)
        tables = fsgm_analysis(means, data["tuning"])
        mi = analyze_recording(data, analyses=["modulation"]).tables["modulation_units"]
    last = means["attended_layer"].values == "conv2_1"
    units = means["layer"].values == "conv2_1"
    ratio = means["attended"].values[last][:, units] / means["unattended"].values[last][:, units]
    categories = list(means["attended_category"].values[last])
    index = [list(merged_recording.values["category"].values).index(c) for c in categories]
    tuning = merged_recording.values["tuning"].values[index][:, 2:]
    gain = 1 + BETA * tuning
    np.testing.assert_allclose(ratio, gain, rtol=1e-5)

    summary = tables["summary"].set_index(["attended_layer", "recorded_layer"])
    planted = summary.loc[("conv2_1", "conv2_1")]
    assert planted["median_slope"] == pytest.approx(-BETA * STEP, abs=1e-5)
    assert planted["median_intercept_minus_1"] == pytest.approx(BETA * OFFSET, abs=1e-5)
    assert planted["n_units"] == 3 and planted["relation"] == "attended"
    upstream = summary.loc[("conv2_1", "conv1_1")]
    assert upstream["relation"] == "upstream"
    assert upstream["median_slope"] == pytest.approx(0.0, abs=1e-6)
    assert upstream["median_intercept_minus_1"] == pytest.approx(0.0, abs=1e-6)
    first = summary.loc[("conv1_1", "conv1_1")]
    assert first["median_slope"] == pytest.approx(-BETA * STEP, abs=1e-5)

    at_last = mi[(mi["attended_layer"] == "conv2_1") & (mi["recorded_layer"] == "conv2_1")]
    flat_gain = gain.reshape(-1)
    np.testing.assert_allclose(
        at_last["modulation_index"], (flat_gain - 1) / (flat_gain + 1), atol=1e-5
    )


def test_vector_angle_analysis_matches_hand_computation(merged_recording):
    data = load_recording(merged_recording.path)
    table = vector_angle_analysis(data)["categories"]
    row = table[
        (table["attended_category"] == "c")
        & (table["attended_layer"] == "conv2_1")
        & (table["recorded_layer"] == "conv2_1")
    ].iloc[0]
    units = data["layer"].values == "conv2_1"
    is_c = data["task_category"].values == "c"
    role = data["role"].values
    layer = data["attended_layer"].values
    positive = data["is_target"].values
    activity = data["activity"].values[:, units].astype(float)
    prototype = activity[is_c & (role == "reference")].mean(axis=0)

    def angles(rows):
        x = activity[rows]
        cos = x @ prototype / (np.linalg.norm(x, axis=1) * np.linalg.norm(prototype))
        return np.degrees(np.arccos(np.clip(cos, -1, 1)))

    unattended = angles(is_c & (role == "task") & (layer == "none") & positive)
    attended = angles(is_c & (layer == "conv2_1") & positive)
    assert row["angle_unattended"] == pytest.approx(unattended.mean(), abs=1e-6)
    assert row["angle_attended"] == pytest.approx(attended.mean(), abs=1e-6)
    assert row["delta_angle"] == pytest.approx((attended - unattended).mean(), abs=1e-6)
    assert row["n_images"] == 6
    upstream = table[
        (table["attended_layer"] == "conv2_1") & (table["recorded_layer"] == "conv1_1")
    ]
    np.testing.assert_allclose(upstream["delta_angle"], 0.0, atol=1e-6)


def test_feature_attention_is_spatially_global_at_the_attended_layer(network, tmp_path):
    values, _ranks = _planted_values(network, _five_categories("train"))
    config = RecordingConfig(
        attend_layers=("conv2_1",), image_type="array", n_pos=5, n_neg=2, n_reference=0
    )
    path = record(
        network, values, _five_categories("test"), tmp_path / "a.nc", config, progress=False
    )
    tables = spatial_analysis(load_recording(path))
    units = tables["units"]
    at_layer = units[units["recorded_layer"] == "conv2_1"].dropna(subset=["mi_target", "mi_other"])
    assert len(at_layer) >= 10
    np.testing.assert_allclose(at_layer["mi_target"], at_layer["mi_other"], atol=1e-5)
    summary = tables["summary"].set_index("recorded_layer")
    assert summary.loc["conv2_1", "fraction_target_more_modulated"] == 0.0
    assert summary.loc["conv1_1", "median_mi_difference"] == pytest.approx(0.0, abs=1e-6)


# --- bad input ----------------------------------------------------------------------------------
def test_unknown_layer_is_a_clear_error(network, tmp_path):
    values = tuning_values(network, make_image_set())
    test = make_image_set(10, split="test")
    for field in ("attend_layers", "record_layers", "full_maps"):
        config = RecordingConfig(**{field: ("conv9_9",)})
        with pytest.raises(LayerError, match=r"conv9_9.*valid layers.*conv1_1"):
            record(network, values, test, tmp_path / "x.nc", config, progress=False)
    assert not list(tmp_path.iterdir())


def test_recording_larger_than_free_disk_is_refused(network, tmp_path, monkeypatch):
    values = tuning_values(network, make_image_set())
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10_000, 9_000, 1_000))
    config = RecordingConfig(n_pos=3, n_neg=3, full_maps=("conv1_1",))
    with pytest.raises(DataError, match=r"would need about .* but only 1000 B is free"):
        test = make_image_set(10, split="test")
        record(network, values, test, tmp_path / "big.nc", config, progress=False)
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_bad_settings_are_refused(network, tmp_path):
    values = tuning_values(network, make_image_set())
    test = make_image_set(10, split="test")
    out = tmp_path / "x.nc"
    with pytest.raises(ConfigError, match="non-zero β"):
        record(network, values, test, out, RecordingConfig(betas=(0.0,)), progress=False)
    with pytest.raises(DataError, match="training images"):
        record(network, values, make_image_set(), out, RecordingConfig(), progress=False)
    with pytest.raises(ConfigError, match="gradient_merged"):
        record(network, values, test, out, RecordingConfig(methods=("gradient",)), progress=False)
    with pytest.raises(CategoryError, match="zebra"):
        record(network, values, test, out, RecordingConfig(categories=("zebra",)), progress=False)


def test_analysis_of_a_file_without_the_needed_conditions(merged_recording, tmp_path):
    data = load_recording(merged_recording.path)
    no_baseline = data.isel(stimulus=np.flatnonzero(data["attended_layer"].values != "none"))
    with pytest.raises(AnalysisError, match="no unattended baseline for category"):
        analyze_recording(no_baseline, analyses=["fsgm"])
    only_baseline = data.isel(stimulus=np.flatnonzero(data["attended_layer"].values == "none"))
    with pytest.raises(AnalysisError, match="no attended conditions"):
        analyze_recording(only_baseline, analyses=["modulation"])
    one = data.isel(stimulus=np.flatnonzero(data["task_category"].values == "a"))
    with pytest.raises(AnalysisError, match="at least two"):
        analyze_recording(one, analyses=["fsgm"])
    with pytest.raises(AnalysisError, match="quadrant activity"):
        analyze_recording(data, analyses=["spatial"])
    report = analyze_recording(data)  # by default, what cannot run is skipped with the reason
    assert set(report.skipped) == {"spatial"} and "quadrant activity" in report.skipped["spatial"]
    assert {"fsgm_summary", "population_fits", "angle_summary"} <= set(report.tables)
    no_reference = data.isel(stimulus=np.flatnonzero(data["role"].values != "reference"))
    with pytest.raises(AnalysisError, match="reference images"):
        analyze_recording(no_reference, analyses=["angle"])
    with pytest.raises(DataError, match="does not exist"):
        open_recording(tmp_path / "missing.nc")
    not_a_recording = tmp_path / "values.nc"
    merged_recording.values.to_netcdf(not_a_recording, engine="h5netcdf")
    with pytest.raises(DataError, match="not a bioattn recording"):
        open_recording(not_a_recording)


def test_cli_analyze_neural_writes_tables_and_figures(merged_recording, tmp_path, capsys):
    out = tmp_path / "analysis"
    code = main(
        [
            "analyze",
            "neural",
            str(merged_recording.path),
            "--out",
            str(out),
            "--analyses",
            "fsgm,modulation,angle",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "FSGM test" in printed
    summary = pd.read_csv(out / "fsgm_summary.csv")
    row = summary[
        (summary["attended_layer"] == "conv2_1") & (summary["recorded_layer"] == "conv2_1")
    ]
    assert row["median_slope"].iloc[0] == pytest.approx(-BETA * STEP, abs=1e-5)
    for stem in ("fsgm_slope_intercept", "fsgm_ratio_by_rank", "modulation_index", "vector_angle"):
        assert (out / "figures" / f"{stem}.png").exists()
        assert (out / "figures" / f"{stem}.svg").exists()
    code = main(
        [
            "analyze",
            "neural",
            str(merged_recording.path),
            "--out",
            str(out),
            "--analyses",
            "spatial",
        ]
    )
    assert code == 2
    assert "quadrant activity" in capsys.readouterr().err


def test_record_tasks_takes_any_task_sets_keyed_by_target(network, tmp_path):
    values = tuning_values(network, make_image_set())
    test = make_image_set(10, split="test")
    tasks = {c: make_task_set(test, c, "standard", n_pos=3, n_neg=2, seed=1) for c in ("d", "b")}
    config = RecordingConfig(attend_layers=("conv2_1",), image_type="standard")
    references = {"b": test.images[test.labels == 1][:2]}
    path = record_tasks(
        network, values, tasks, tmp_path / "t.nc", config, references=references, progress=False
    )
    data = load_recording(path)
    assert json.loads(data.attrs["attended_categories"]) == ["b", "d"]
    assert (data["role"].values == "reference").sum() == 2
    assert data.sizes["stimulus"] == 2 * 5 * 2 + 2
    with pytest.raises(ConfigError, match="holds standard images"):
        record_tasks(network, values, tasks, tmp_path / "u.nc", RecordingConfig(), progress=False)


def test_reading_request_by_request_gives_the_same_means(merged_recording, monkeypatch):
    """Categories too large to read in one block are read per request, with equal results."""
    from bioattn.analysis import neural

    with open_recording(merged_recording.path) as data:
        blocks = condition_means(data)
        monkeypatch.setattr(neural, "READ_BLOCK_BYTES", 1)
        requests = condition_means(data)
    np.testing.assert_array_equal(blocks["attended"].values, requests["attended"].values)
    np.testing.assert_array_equal(blocks["unattended"].values, requests["unattended"].values)
