"""The sweep on a tiny network: baselines, all-layers β/10, controls and bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from bioattn.analysis.sdt import detection_metrics
from bioattn.attention.gains import Modulation, SpatialCue, feature_gain, modulate
from bioattn.attention.values import layer_values
from bioattn.data.tasks import make_task_set
from bioattn.errors import CategoryError, ConfigError, DataError, LayerError
from bioattn.experiments.engine import target_logits
from bioattn.experiments.sweep import (
    PERFORMANCE_COLUMNS,
    SweepConfig,
    run_sweep,
)
from tests.conftest import make_image_set


@pytest.fixture
def test_images():
    return make_image_set(n_per_category=10, split="test")


CONFIG = SweepConfig(
    image_types=("merged",), betas=(0.0, 0.5, 2.0), n_pos=6, n_neg=6, methods=("tuning", "gradient")
)


def test_sweep_table_shape_and_baselines(tiny_network, tiny_detectors, values, test_images):
    table = run_sweep(tiny_network, tiny_detectors, values, test_images, CONFIG, progress=False)
    assert list(table.columns) == PERFORMANCE_COLUMNS
    # 4 categories × (2 layers + all) × 2 methods × 3 β
    assert len(table) == 4 * 3 * 2 * 3
    assert set(table["layer"]) == {"conv1_1", "conv2_1", "all"}
    baseline = table[table["beta"] == 0.0]
    per_category = baseline.groupby("category")["performance"].nunique()
    assert (per_category == 1).all()  # β = 0 is the same network for every layer and method
    assert np.allclose(table["performance"], (table["tp"] + table["tn"]) / 2)
    assert (table[["n_pos", "n_neg"]] == 6).all().all()


def test_beta_zero_reproduces_unattended_outputs(tiny_network, tiny_detectors, values, test_images):
    task = make_task_set(test_images, "b", "merged", n_pos=6, n_neg=6, seed=0)
    plain = target_logits(tiny_network, tiny_detectors, task)
    zero = {
        layer: Modulation(scale=feature_gain(layer_values(values, "tuning", "b", layer), 0.0))
        for layer in tiny_network.layers
    }
    assert torch.equal(target_logits(tiny_network, tiny_detectors, task, zero), plain)


def test_all_layers_mode_uses_beta_over_ten(tiny_network, tiny_detectors, values, test_images):
    config = SweepConfig(
        image_types=("merged",),
        categories=("c",),
        betas=(0.0, 2.0),
        n_pos=6,
        n_neg=6,
        methods=("gradient",),
        layers=("conv2_1",),
    )
    table = run_sweep(tiny_network, tiny_detectors, values, test_images, config, progress=False)
    row = table[(table["layer"] == "all") & (table["beta"] == 2.0)].iloc[0]
    task = make_task_set(test_images, "c", "merged", n_pos=6, n_neg=6, seed=config.seed * 7919 + 0)
    manual = {
        layer: Modulation(
            scale=feature_gain(layer_values(values, "gradient_merged", "c", layer), 0.2)
        )
        for layer in tiny_network.layers
    }
    expected = detection_metrics(
        target_logits(tiny_network, tiny_detectors, task, manual), task.is_target
    )
    assert row["performance"] == pytest.approx(expected["performance"])
    assert row["criterion"] == pytest.approx(expected["criterion"])


def test_controls_and_response_gain_run(tiny_network, tiny_detectors, values, test_images):
    config = SweepConfig(
        image_types=("merged",),
        categories=("a",),
        betas=(1.0,),
        n_pos=6,
        n_neg=6,
        methods=("uniform", "shuffled-tuning", "response-gradient", "tuning-positive"),
        all_layers=False,
    )
    with pytest.warns(UserWarning, match="β = 0 was missing"):
        table = run_sweep(tiny_network, tiny_detectors, values, test_images, config, progress=False)
    assert set(table["method"]) == set(config.methods)
    assert sorted(table["beta"].unique()) == [0.0, 1.0]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"categories": ("zebra",)}, CategoryError, "valid categories are: a, b, c, d"),
        ({"layers": ("conv9_9",)}, LayerError, "valid layers are"),
        ({"image_types": ("collage",)}, ConfigError, "unknown image type"),
        ({"n_pos": 0}, ConfigError, "at least one positive"),
        ({"image_types": ("array",)}, ConfigError, "gradient_array"),
        ({"methods": ()}, ConfigError, "no methods"),
    ],
)
def test_bad_input_fails_before_work(
    tiny_network, tiny_detectors, values, test_images, change, error, message
):
    config = SweepConfig(**{**CONFIG.to_dict(), **change})
    with pytest.raises(error, match=message):
        run_sweep(tiny_network, tiny_detectors, values, test_images, config, progress=False)


def test_training_images_are_refused_for_testing(tiny_network, tiny_detectors, values):
    train = make_image_set(split="train")
    with pytest.raises(DataError, match="training images"):
        run_sweep(tiny_network, tiny_detectors, values, train, CONFIG, progress=False)


def test_sweep_is_deterministic(tiny_network, tiny_detectors, values, test_images):
    first = run_sweep(tiny_network, tiny_detectors, values, test_images, CONFIG, progress=False)
    second = run_sweep(tiny_network, tiny_detectors, values, test_images, CONFIG, progress=False)
    pd.testing.assert_frame_equal(first, second)


@pytest.fixture
def cued_tasks(test_images):
    """Merged task sets with a cued quadrant (a per category), as prebuilt tasks for run_sweep."""
    return {
        ("merged", name): replace(
            make_task_set(test_images, name, "merged", n_pos=6, n_neg=6, seed=k),
            cued_quadrant=k,
        )
        for k, name in enumerate("abcd")
    }


SPATIAL = replace(
    CONFIG,
    methods=("spatial", "tuning", "spatial+tuning", "spatial+gradient-additive"),
    betas=(0.0, 0.3, 1.0),
)


def test_spatial_sweep_applies_the_tasks_cue(tiny_network, tiny_detectors, values, cued_tasks):
    table = run_sweep(
        tiny_network, tiny_detectors, values, None, SPATIAL, progress=False, tasks=cued_tasks
    )
    assert set(table["method"]) == set(SPATIAL.methods)
    layer = tiny_network.layers[0]
    row = table.query("category == 'c' and layer == @layer.alias and method == 'spatial+tuning'")
    row = row.loc[row["beta"] == 0.3].iloc[0]
    task = cued_tasks[("merged", "c")]
    modulation = Modulation(
        scale=feature_gain(layer_values(values, "tuning", "c", layer), 0.3),
        spatial=SpatialCue(2, 0.3),
    )
    with modulate(tiny_network, {layer: modulation}):
        expected = detection_metrics(
            target_logits(tiny_network, tiny_detectors, task), task.is_target
        )
    assert row["tp"] == pytest.approx(expected["tp"]) and row["fp"] == pytest.approx(expected["fp"])
    naive = run_sweep(
        tiny_network,
        tiny_detectors,
        values,
        None,
        SPATIAL,
        progress=False,
        engine="naive",
        tasks=cued_tasks,
    )
    pd.testing.assert_frame_equal(table, naive, check_exact=False, rtol=1e-9, atol=1e-9)


def test_prebuilt_tasks_are_checked(tiny_network, tiny_detectors, values, test_images, cued_tasks):
    with pytest.raises(ConfigError, match="spatial methods need task sets with a cued quadrant"):
        run_sweep(tiny_network, tiny_detectors, values, test_images, SPATIAL, progress=False)
    partial = {key: task for key, task in cued_tasks.items() if key[1] != "d"}
    with pytest.raises(ConfigError, match=r"no task set for \[\('merged', 'd'\)\]"):
        run_sweep(
            tiny_network, tiny_detectors, values, None, SPATIAL, progress=False, tasks=partial
        )
    uncued = {
        **cued_tasks,
        ("merged", "a"): replace(cued_tasks[("merged", "a")], cued_quadrant=None),
    }
    with pytest.raises(ConfigError, match="need a cued quadrant"):
        run_sweep(tiny_network, tiny_detectors, values, None, SPATIAL, progress=False, tasks=uncued)
    with pytest.raises(ConfigError, match="test images or prebuilt task sets"):
        run_sweep(tiny_network, tiny_detectors, values, None, CONFIG, progress=False)


def test_a_sweep_over_some_categories_sees_the_same_images(
    tiny_network, tiny_detectors, values, test_images
):
    full = run_sweep(tiny_network, tiny_detectors, values, test_images, CONFIG, progress=False)
    some = run_sweep(
        tiny_network,
        tiny_detectors,
        values,
        test_images,
        replace(CONFIG, categories=("c",)),
        progress=False,
    )
    pd.testing.assert_frame_equal(
        some, full.loc[full["category"] == "c"].reset_index(drop=True), check_exact=True
    )
