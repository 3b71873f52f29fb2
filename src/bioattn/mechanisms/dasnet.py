"""Soft feature attention by feedback (dasNet-style, Stollenga et al. 2014).

The network first runs without attention. A feedback *policy* reads its top-layer activity (the
readout features, standardised as the detectors standardise them) and the cued category, and
sets one gain per feature map of every attended layer, ``g = 1 + tanh(z)`` in (0, 2). The
network runs again with those gains; after ``feedback_steps`` rounds the cued detector decides.
The policy's last layer starts at zero (all gains 1: no attention). It is trained by backprop
through all rounds on the cued detector's cross-entropy, with the network and detectors fixed
(dasNet trained its policy with an evolution strategy; backprop is the cheaper choice here).

Because its gains are per feature map and the same at every position, the learned policy is an
FSGM-style attention; :func:`mean_gains` gives its average gains per category, which
:func:`bioattn.mechanisms.optimal.gain_value_correlations` compares with tuning and gradient
values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bioattn.attention.gains import Modulation
from bioattn.errors import ConfigError
from bioattn.mechanisms.common import (
    CuedSet,
    network_features,
    train_with_frozen_network,
)
from bioattn.mechanisms.training import Budget, RunOptions, TrainingLog
from bioattn.models.detectors import Detectors
from bioattn.models.network import LayerInfo, Network


class FeedbackPolicy(nn.Module):
    """Maps (standardised top-layer features, cued category) to per-map gains of each layer."""

    def __init__(
        self, n_features: int, channels: Sequence[int], n_categories: int, hidden: int = 64
    ) -> None:
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.n_categories = n_categories
        self.hidden = nn.Linear(n_features + n_categories, hidden)
        self.out = nn.Linear(hidden, sum(self.channels))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor, category: torch.Tensor) -> list[torch.Tensor]:
        """Gains (N, C_l) in (0, 2) per attended layer."""
        cue = nn.functional.one_hot(category, self.n_categories).to(features.dtype)
        z = self.out(torch.relu(self.hidden(torch.cat([features, cue], dim=1))))
        return list(torch.split(1.0 + torch.tanh(z), self.channels, dim=1))


def dasnet_pass(
    network: Network,
    detectors: Detectors,
    policy: FeedbackPolicy,
    layers: Sequence[LayerInfo],
    images: torch.Tensor,
    category: torch.Tensor,
    feedback_steps: int = 2,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Cued logits (N,) after ``feedback_steps`` rounds of feedback, and the last gains."""
    if feedback_steps < 1:
        raise ConfigError(f"feedback_steps must be >= 1, got {feedback_steps}")
    gains: list[torch.Tensor] = [
        images.new_ones(images.shape[0], layer.channels) for layer in layers
    ]
    features = network_features(network, images)
    mean = detectors.feature_mean.to(features.dtype)
    std = detectors.feature_std.to(features.dtype)
    for _ in range(feedback_steps):
        gains = policy((features - mean) / std, category)
        modulations = {
            layer: Modulation(scale=g[:, :, None, None])
            for layer, g in zip(layers, gains, strict=True)
        }
        features = network_features(network, images, modulations)
    logits = detectors.logits(features).gather(1, category.view(-1, 1)).squeeze(1)
    return logits, gains


def train_dasnet(
    network: Network,
    detectors: Detectors,
    policy: FeedbackPolicy,
    layers: Sequence[LayerInfo],
    data: CuedSet,
    budget: Budget,
    feedback_steps: int = 2,
    seed: int = 0,
    options: RunOptions = RunOptions(),
) -> TrainingLog:
    """Train the feedback policy by backprop through the feedback rounds; the network is fixed."""

    def logits(batch: CuedSet) -> torch.Tensor:
        return dasnet_pass(
            network, detectors, policy, layers, batch.images, batch.category, feedback_steps
        )[0]

    return train_with_frozen_network(
        network,
        {"policy": policy},
        logits,
        budget,
        data,
        seed,
        {
            "mechanism": "dasnet",
            "layers": [layer.alias for layer in layers],
            "feedback_steps": feedback_steps,
        },
        options,
    )


def mean_gains(
    gains: Sequence[torch.Tensor], category: torch.Tensor, n_categories: int
) -> list[torch.Tensor]:
    """Average gains (K, C_l) per cued category of per-image gains (N, C_l) per layer."""
    one_hot = nn.functional.one_hot(category, n_categories).to(torch.float32)
    counts = one_hot.sum(0).clamp_min(1.0)[:, None]
    return [(one_hot.T @ g.to(torch.float32)) / counts for g in gains]
