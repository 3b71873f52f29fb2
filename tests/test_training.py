"""Training the default network and its detectors."""

from __future__ import annotations

import torch

from bioattn.models.detectors import Detectors, evaluate_detectors, fit_detectors
from bioattn.models.train import TrainSettings, train_default

QUICK = TrainSettings(epochs=1, n_train=1500, batch_size=100)


def test_training_is_deterministic_given_a_seed():
    first = train_default(QUICK, progress=False)
    second = train_default(QUICK, progress=False)
    for (name, a), (_, b) in zip(
        first.network.module.state_dict().items(),
        second.network.module.state_dict().items(),
        strict=True,
    ):
        assert torch.equal(a, b), name
    assert torch.equal(first.detectors.weight, second.detectors.weight)
    other = train_default(
        TrainSettings(epochs=1, n_train=1500, batch_size=100, seed=1), progress=False
    )
    assert not torch.equal(
        other.network.module.features[0].weight, first.network.module.features[0].weight
    )


def test_detectors_are_balanced_and_roundtrip(tmp_path):
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (600,), generator=generator)
    features = torch.randn(600, 5, generator=generator)
    features[:, :3] += 3.0 * torch.nn.functional.one_hot(labels, 3)
    detectors = fit_detectors(features, labels, ("x", "y", "z"))
    table = evaluate_detectors(detectors, features, labels)
    assert (table["balanced_accuracy"] > 0.9).all()
    # class balance: hit rate and correct-rejection rate are close even with 1:2 imbalance
    assert ((table["tp"] - table["tn"]).abs() < 0.1).all()
    path = tmp_path / "detectors.safetensors"
    detectors.save(path)
    loaded = Detectors.load(path)
    assert loaded.categories == ("x", "y", "z")
    torch.testing.assert_close(loaded.logits(features), detectors.logits(features))
