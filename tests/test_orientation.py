"""Gratings, two-grating task images, spatial attention masks and their combination."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from bioattn.analysis.sdt import dprime_criterion
from bioattn.attention.gains import Modulation, SpatialCue
from bioattn.data.composites import quadrant_slices
from bioattn.data.gratings import (
    ORIENTATION_NAMES,
    ORIENTATIONS,
    GratingSpec,
    grating,
    grating_image_set,
    resolve_orientation,
)
from bioattn.errors import CategoryError, ConfigError
from bioattn.experiments.orientation import (
    OrientationConfig,
    criterion_sensitivity_table,
    cued_quadrant,
    fit_orientation_detectors,
    orientation_task_set,
    run_orientation,
)


def dominant_orientation(image: torch.Tensor) -> float:
    """Stripe orientation (degrees, counter-clockwise from horizontal) of the Fourier peak."""
    spectrum = torch.fft.fft2(image[0] - image[0].mean()).abs()
    spectrum[0, 0] = 0
    row, col = divmod(int(spectrum.argmax()), spectrum.shape[1])
    size = spectrum.shape[0]
    fy = row if row <= size // 2 else row - size
    fx = col if col <= size // 2 else col - size
    wave = math.degrees(math.atan2(-fy, fx))  # image rows point down
    return (wave - 90.0) % 180.0


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_grating_orientation_matches_its_fourier_peak(orientation):
    # 64 px and 1/8 cycles per pixel put the peak on an exact FFT bin only for some angles,
    # so compare within the angular resolution of the grid of frequency bins
    image = grating(64, orientation, 0.125)
    found = dominant_orientation(image)
    difference = min(abs(found - orientation), 180 - abs(found - orientation))
    assert difference < 8.0, (orientation, found)


def test_grating_values_and_contrast():
    image = grating(28, 40, 0.1, phase=0.3, contrast=0.5)
    assert image.shape == (1, 28, 28)
    assert image.min() >= 0.25 - 1e-6 and image.max() <= 0.75 + 1e-6
    flat = grating(28, 40, 0.1, contrast=0.0)
    assert torch.allclose(flat, torch.full_like(flat, 0.5))


def test_bad_grating_settings_are_errors():
    with pytest.raises(ConfigError, match="Nyquist"):
        GratingSpec(cycles_per_pixel=0.48)
    with pytest.raises(ConfigError, match="Nyquist"):
        grating(28, 0, 0.6)
    with pytest.raises(CategoryError, match="not on the grid; valid orientations: 0°, 20°"):
        resolve_orientation(45)
    assert resolve_orientation("40°") == 2 and resolve_orientation(180) == 0
    with pytest.raises(ConfigError, match="outside 1–4"):
        orientation_task_set(0, quadrant=4)


def test_grating_image_set_is_deterministic_and_labelled():
    first = grating_image_set(3, seed=5)
    assert first.categories == ORIENTATION_NAMES
    assert torch.equal(first.images, grating_image_set(3, seed=5).images)
    assert not torch.equal(first.images, grating_image_set(3, seed=6).images)
    for image, label in zip(first.images[::4], first.labels[::4], strict=True):
        found = dominant_orientation(image)
        expected = ORIENTATIONS[int(label)]
        assert min(abs(found - expected), 180 - abs(found - expected)) < 12.0


def test_task_images_place_gratings_in_their_quadrants():
    spec = GratingSpec(size=16, cycles_per_pixel=0.15)
    task = orientation_task_set(3, spec, n_pos=8, n_neg=8, seed=1)
    assert task.images.shape == (16, 1, 32, 32)
    assert task.cued_quadrant == cued_quadrant(3) == 3
    contents = task.contents
    assert (contents[:8, 3] == 3).all()  # positives: target in the cued quadrant
    assert not (contents[8:] == 3).any()  # negatives never contain the target
    assert (contents[8:, 3] >= 0).all()  # ... but have a grating in the cued quadrant
    assert ((contents >= 0).sum(1) == 2).all()  # exactly two gratings per image
    for image, row in zip(task.images, contents, strict=True):
        for quadrant, orientation in enumerate(row.tolist()):
            rows, cols = quadrant_slices(32, 32, quadrant)
            tile = image[:, rows, cols]
            if orientation < 0:
                assert torch.all(tile == 0.5)
            else:
                found = dominant_orientation(tile)
                expected = ORIENTATIONS[orientation]
                assert min(abs(found - expected), 180 - abs(found - expected)) < 15.0


def test_spatial_cue_mask_and_multiplicative_combination():
    activity = torch.ones(1, 2, 4, 4)
    cue = SpatialCue(quadrant=1, beta=0.5)  # top-right
    spatial_only = Modulation(spatial=cue)(activity)
    expected = torch.full((4, 4), 0.5)
    expected[:2, 2:] = 1.5
    assert torch.equal(spatial_only[0, 0], expected) and torch.equal(spatial_only[0, 1], expected)
    feature = torch.tensor([2.0, 0.0])
    both = Modulation(scale=feature, spatial=cue)(activity)
    assert torch.equal(both[0, 0], 2.0 * expected)
    assert torch.equal(both[0, 1], torch.zeros(4, 4))
    strong = Modulation(spatial=SpatialCue(0, 1.5))(activity)
    assert strong[0, 0, 3, 3] == 0.0 and strong[0, 0, 0, 0] == 2.5  # clamped outside


def test_additive_combination_can_go_negative():
    activity = torch.ones(1, 1, 2, 2)
    out = Modulation(scale=torch.tensor([0.2]), spatial=SpatialCue(0, 0.5, additive=True))(activity)
    np.testing.assert_allclose(out[0, 0].numpy(), [[0.7, -0.3], [-0.3, -0.3]], atol=1e-6)


def test_odd_sized_maps_share_the_middle_row():
    mask = SpatialCue(quadrant=0, beta=1.0).factor(7, 7)
    assert mask[3, 3] == 2.0 and mask[4, 4] == 0.0


def test_grating_layout_larger_than_the_model_input_is_refused(tiny_network):
    small_input = replace(tiny_network, input_size=40)
    with pytest.raises(ConfigError, match=r"larger than the 40 px input.*at most 20 px"):
        fit_orientation_detectors(small_input, GratingSpec(size=28))


def test_criterion_sensitivity_table_means_and_changes():
    rows = [
        # orientation, method, beta, tp, fp
        ("0°", "spatial", 0.0, 0.6, 0.2),
        ("20°", "spatial", 0.0, 0.8, 0.4),
        ("0°", "spatial", 0.5, 0.9, 0.2),
        ("20°", "spatial", 0.5, 0.9, 0.2),
    ]
    table = pd.DataFrame(rows, columns=["category", "method", "beta", "tp", "fp"])
    table["layer"] = "conv3_2"
    table["performance"] = (table["tp"] + 1 - table["fp"]) / 2
    table["dprime"], table["criterion"] = dprime_criterion(table["tp"], table["fp"])
    summary = criterion_sensitivity_table(table).set_index("beta")
    assert summary.loc[0.5, "tp"] == pytest.approx(0.9)
    assert summary.loc[0.5, "delta_tp"] == pytest.approx(0.2)
    assert summary.loc[0.5, "delta_fp"] == pytest.approx(-0.1)
    assert summary.loc[0.0, "delta_dprime"] == 0.0
    d_attended = dprime_criterion(np.array([0.9]), np.array([0.2]))[0][0]
    d_baseline = np.mean(dprime_criterion(np.array([0.6, 0.8]), np.array([0.2, 0.4]))[0])
    assert summary.loc[0.5, "delta_dprime"] == pytest.approx(d_attended - d_baseline)


def test_run_orientation_writes_both_sweeps(tiny_network, tmp_path):
    config = OrientationConfig(
        spec=GratingSpec(size=8, cycles_per_pixel=0.2),
        orientations=("0°", "80°"),
        betas=(0.0, 1.0),
        spatial_betas=(0.0, 0.5),
        n_pos=4,
        n_neg=4,
        additive_spatial=True,
        n_train=6,
        n_gradient=3,
    )
    result = run_orientation(tiny_network, tmp_path, config, progress=False)
    feature = pd.read_parquet(tmp_path / "orientation" / "performance.parquet")
    assert set(feature["category"]) == {"0°", "80°"}
    assert set(feature["method"]) == {"tuning", "gradient"}
    spatial = pd.read_csv(tmp_path / "spatial" / "criterion_sensitivity.csv")
    assert set(spatial["method"]) == {
        "spatial",
        "tuning",
        "gradient",
        "spatial+tuning",
        "spatial+gradient",
        "spatial+tuning-additive",
        "spatial+gradient-additive",
    }
    assert set(spatial["layer"]) == {tiny_network.layers[-1].alias}
    assert (tmp_path / "spatial" / "figures" / "dprime_criterion_vs_beta.png").exists()
    assert (tmp_path / "orientation_values.nc").exists()
    assert len(result["detectors"]) == len(ORIENTATIONS)
