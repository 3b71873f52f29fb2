"""Spatial cueing and detection in noise on a tiny network."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from bioattn.analysis.sdt import detection_metrics
from bioattn.attention.gains import Modulation, SpatialCue
from bioattn.attention.rules import SpatialGain, ValueSource
from bioattn.attention.values import tuning_values
from bioattn.data.tasks import make_task_set
from bioattn.errors import ConfigError, DataError
from bioattn.experiments.engine import target_logits
from bioattn.experiments.evaluate import make_evaluator
from bioattn.experiments.grid import Arm, Condition, LayerSetting
from bioattn.experiments.psychophysics import (
    CueingConfig,
    NoiseConfig,
    cue_quadrants,
    detection_thresholds,
    run_cueing,
    run_noise_detection,
)
from bioattn.models.detectors import fit_detectors

from .conftest import six_categories


@pytest.fixture
def six(tiny_network):
    train = six_categories("train")
    detectors = fit_detectors(
        tiny_network.readout_features(train.images), train.labels, train.categories
    )
    return train, six_categories("test"), detectors


def test_valid_cues_point_at_the_target_and_invalid_cues_never_do(six):
    _, test, _ = six
    task = make_task_set(test, "b", "array", n_pos=12, n_neg=12, seed=3)
    valid = cue_quadrants(task, "valid", torch.Generator().manual_seed(0))
    invalid = cue_quadrants(task, "invalid", torch.Generator().manual_seed(0))
    target = task.target_quadrant
    assert torch.equal(valid[:12], target[:12])
    assert (invalid[:12] != target[:12]).all()
    assert torch.equal(valid[12:], invalid[12:])  # negatives: same cue in both conditions
    assert ((valid >= 0) & (valid < 4)).all()
    with pytest.raises(ConfigError, match="valid' or 'invalid"):
        cue_quadrants(task, "sideways", torch.Generator())


@pytest.mark.parametrize("engine", ["naive", "batched"])
def test_per_image_cues_equal_one_image_at_a_time(tiny_network, six, engine):
    _, test, detectors = six
    task = make_task_set(test, "c", "array", n_pos=4, n_neg=4, seed=1)
    quadrants = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    layer = tiny_network.layers[0]
    condition = Condition(LayerSetting.single(layer), Arm(SpatialGain(), "valid"), 0.7, quadrants)
    evaluator = make_evaluator(tiny_network, detectors, engine)
    grouped = evaluator.evaluate(task, [condition], ValueSource(xr.Dataset())).logits[0]
    for i in range(len(task)):
        single = type(task)(
            task.images[i : i + 1],
            task.is_target[i : i + 1],
            task.contents[i : i + 1],
            task.target,
            task.categories,
            task.image_type,
            task.split,
        )
        cue = {layer: Modulation(spatial=SpatialCue(int(quadrants[i]), 0.7))}
        expected = target_logits(tiny_network, detectors, single, cue)
        torch.testing.assert_close(grouped[i : i + 1], expected)


def test_cueing_table(tiny_network, six):
    _, test, detectors = six
    config = CueingConfig(categories=("a", "d"), betas=(0.5,), n_pos=8, n_neg=8)
    table = run_cueing(tiny_network, detectors, test, config, progress=False)
    assert set(table["method"]) == {"valid", "neutral", "invalid"}
    assert sorted(table["beta"].unique()) == [0.0, 0.5]
    at_zero = table[table["beta"] == 0.0].groupby("category")["performance"].nunique()
    assert (at_zero == 1).all()  # with β = 0 every cue is no cue
    neutral = table[table["method"] == "neutral"].groupby("category")["performance"].nunique()
    assert (neutral == 1).all()
    with pytest.raises(DataError, match="training images"):
        run_cueing(tiny_network, detectors, six[0], config, progress=False)


def test_noise_detection_table_and_thresholds(tiny_network, six):
    train, test, detectors = six
    values = tuning_values(tiny_network, train)
    config = NoiseConfig(
        categories=("e",),
        snrs=(0.5, 4.0),
        cues=("none", "tuning", "wrong-tuning"),
        n_pos=8,
        n_neg=8,
        layer="conv1_1",
    )
    table = run_noise_detection(tiny_network, detectors, values, test, config, progress=False)
    assert len(table) == 2 * 3 and set(table["snr"]) == {0.5, 4.0}
    # seeded by e's index among all categories (4), not among the requested ones
    task = make_task_set(test, "e", "noise", 8, 8, seed=4, snr=4.0)
    uncued = detection_metrics(target_logits(tiny_network, detectors, task), task.is_target)
    row = table[(table["method"] == "none") & (table["snr"] == 4.0)].iloc[0]
    assert row["performance"] == pytest.approx(uncued["performance"])
    with pytest.raises(ConfigError, match="gradient_noise"):
        run_noise_detection(
            tiny_network, detectors, values, test, NoiseConfig(cues=("gradient",)), progress=False
        )


def test_threshold_interpolates_in_log_snr():
    table = pd.DataFrame(
        {
            "category": ["a"] * 3 + ["b"] * 3,
            "method": ["none"] * 6,
            "snr": [0.1, 1.0, 10.0] * 2,
            "performance": [0.5, 0.7, 0.8, 0.5, 0.8, 0.9],
        }
    )
    result = detection_thresholds(table).iloc[0]
    # mean curve: 0.5, 0.75, 0.85 -> crosses 0.75 exactly at SNR 1
    assert result["threshold_snr"] == pytest.approx(1.0)
    # category a crosses halfway (in log SNR) between 1 and 10; b between 0.1 and 1 at 5/6
    expected = 10 ** np.median([0.5, -1 + 25 / 30])
    assert result["median_category_threshold_snr"] == pytest.approx(expected)
