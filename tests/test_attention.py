"""Attention formulas checked against hand computations on a tiny network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bioattn.attention.gains import (
    Modulation,
    feature_gain,
    modulate,
    response_gain_shift,
    spatial_gain,
)
from bioattn.attention.values import (
    add_gradient_values,
    check_values_match,
    layer_values,
    load_values,
    normalise_per_unit,
    raw_gradients,
    save_values,
    tuning_values,
    zscore_across_categories,
)
from bioattn.data.tasks import make_task_set
from bioattn.errors import ConfigError, DataError
from bioattn.models.hooks import record_map_means
from tests.conftest import make_tiny_network


def manual_layer_activity(network, images):
    """Post-ReLU activity of both tiny layers computed without any hook."""
    features = network.module.features
    first = torch.relu(features[0](images))
    second = torch.relu(features[3](features[2](first)))
    return first, second


def test_tuning_is_zscore_of_category_means(tiny_network, tiny_images):
    values = tuning_values(tiny_network, tiny_images)
    first, second = manual_layer_activity(tiny_network, tiny_images.images)
    per_image = torch.cat([first.mean((2, 3)), second.mean((2, 3))], dim=1).detach().numpy()
    labels = tiny_images.labels.numpy()
    means = np.stack([per_image[labels == k].mean(0) for k in range(4)])
    spread = means.std(0)  # population std across categories
    assert (spread > 0).sum() >= 3  # most maps vary, so the comparison means something
    expected = np.zeros_like(means)
    varying = spread > 0
    expected[:, varying] = (means[:, varying] - means[:, varying].mean(0)) / spread[varying]
    np.testing.assert_allclose(values["mean_activity"].values, means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(values["tuning"].values, expected, rtol=1e-4, atol=1e-5)
    assert list(values["layer"].values) == ["conv1_1"] * 2 + ["conv2_1"] * 3
    assert list(values["channel"].values) == [0, 1, 0, 1, 2]


def test_zero_variance_map_gets_zero_tuning(tiny_images):
    network = make_tiny_network()
    with torch.no_grad():  # map 1 of layer 1: constant output whatever the image
        network.module.features[0].weight[1].zero_()
        network.module.features[0].bias[1] = 0.5
    values = tuning_values(network, tiny_images)
    assert np.all(values["tuning"].values[:, 1] == 0.0)
    assert np.isfinite(values["tuning"].values).all()


def test_zscore_helper_handles_constant_columns():
    table = np.array([[1.0, 2.0], [3.0, 2.0]])
    np.testing.assert_allclose(zscore_across_categories(table), [[-1.0, 0.0], [1.0, 0.0]])


def test_gradient_sign_and_normalisation(tiny_network, tiny_images, tiny_detectors):
    # The last layer feeds a global average pool straight into the detectors, so
    # d(logit_c)/dr summed over space is exactly the detector weight on that map.
    task = make_task_set(tiny_images, "a", "standard", n_pos=5, n_neg=5, seed=0)
    raw = raw_gradients(tiny_network, tiny_detectors, task)
    np.testing.assert_allclose(raw[2:], tiny_detectors.weight[0].numpy(), rtol=1e-5, atol=1e-6)
    tasks = {
        name: make_task_set(tiny_images, name, "standard", n_pos=5, n_neg=5, seed=1)
        for name in "abcd"
    }
    values = add_gradient_values(
        tuning_values(tiny_network, tiny_images), tiny_network, tiny_detectors, tasks, "standard"
    )
    grads = values["gradient_standard"].values[:, 2:]
    weight = tiny_detectors.weight.numpy()
    np.testing.assert_allclose(grads, weight / np.abs(weight).max(0), rtol=1e-5, atol=1e-6)
    assert np.abs(values["gradient_standard"].values).max() <= 1.0 + 1e-6


def test_normalisation_removes_nan_and_all_zero_maps():
    g = np.array([[np.nan, 0.0, 2.0], [np.inf, 0.0, -4.0]])
    out = normalise_per_unit(g)
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5], [0.0, 0.0, -1.0]])


def test_feature_gain_rules():
    v = torch.tensor([-1.0, 0.0, 0.5, float("nan")])
    np.testing.assert_allclose(feature_gain(v, 2.0), [0.0, 1.0, 2.0, 1.0])
    np.testing.assert_allclose(feature_gain(v, 2.0, positive_only=True), [1.0, 1.0, 2.0, 1.0])
    np.testing.assert_allclose(feature_gain(v, 0.5), [0.5, 1.0, 1.25, 1.0])
    np.testing.assert_allclose(response_gain_shift(v[:3], 2.0, 0.5), [-1.0, 0.0, 0.5])


def test_spatial_gain_map():
    gain = spatial_gain(4, 4, slice(0, 2), slice(2, 4), 0.5)
    assert gain[0, 3] == 1.5 and gain[3, 0] == 0.5
    assert spatial_gain(2, 2, slice(0, 1), slice(0, 1), 2.0)[1, 1] == 0.0


def test_gain_is_applied_after_relu_and_before_pooling(tiny_network, tiny_images):
    images = tiny_images.images[:6]
    gain = torch.tensor([0.0, 3.0])
    layer = tiny_network.resolve_layer("conv1_1")
    with modulate(tiny_network, {layer: Modulation(scale=gain)}):
        modulated = record_map_means(tiny_network, images, [tiny_network.layers[1]])
        output = tiny_network(images)
    features = tiny_network.module.features
    first = torch.relu(features[0](images)) * gain.view(1, 2, 1, 1)
    second = torch.relu(features[3](features[2](first)))
    torch.testing.assert_close(modulated["conv2_1"], second.mean((2, 3)))
    expected = tiny_network.module.classifier(second.mean((2, 3)))
    torch.testing.assert_close(output, expected)
    # the hook is gone after the context
    torch.testing.assert_close(
        tiny_network(images),
        tiny_network.module.classifier(
            torch.relu(features[3](features[2](torch.relu(features[0](images))))).mean((2, 3))
        ),
    )


def test_response_gain_keeps_rates_non_negative(tiny_network, tiny_images):
    shift = torch.tensor([-100.0, 0.0])
    layer = tiny_network.layers[0]
    with modulate(tiny_network, {layer: Modulation(shift=shift)}):
        means = record_map_means(tiny_network, tiny_images.images[:4], [layer])
    assert torch.all(means["conv1_1"][:, 0] == 0.0)


def test_values_roundtrip_and_model_check(tmp_path, tiny_network, tiny_images):
    values = tuning_values(tiny_network, tiny_images)
    path = save_values(values, tmp_path / "values.nc")
    loaded = load_values(path, tiny_network)
    np.testing.assert_allclose(loaded["tuning"].values, values["tuning"].values)
    layer = tiny_network.layers[1]
    np.testing.assert_allclose(
        layer_values(loaded, "tuning", "b", layer).numpy(), values["tuning"].values[1, 2:]
    )

    class Other(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
            self.classifier = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(x).mean(dim=(2, 3)))

    from bioattn.models.network import Network

    other = Network(Other(), "other", "classifier", (0.0,), (1.0,))
    with pytest.raises(ConfigError, match="does not match model 'other'"):
        check_values_match(loaded, other)


def test_missing_and_corrupt_values_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_values(tmp_path / "none.nc")
    bad = tmp_path / "bad.nc"
    bad.write_bytes(b"not a netcdf file")
    with pytest.raises(DataError, match="cannot read values file"):
        load_values(bad)
