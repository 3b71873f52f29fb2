"""Soft feature attention by feedback (dasNet-style, Stollenga et al. 2014).

The network first runs without attention. A feedback *policy* reads its top-layer activity (the
readout features, standardised as the detectors standardise them) and the cued category, and
sets one gain per feature map of every attended layer, ``g = 1 + tanh(z)`` in (0, 2). The
network runs again with those gains; after ``feedback_steps`` rounds the cued detector decides.
The policy's last layer starts at zero (all gains 1: no attention). Two ways to train it, the
network and detectors fixed: :func:`train_dasnet` by backprop through all rounds on the cued
detector's cross-entropy (the cheap choice), and :func:`train_dasnet_snes` as Stollenga et al.
did, with separable natural evolution strategies (:mod:`.snes`): each generation scores a
population of policies by the reward of whole multi-pass episodes (the negative cross-entropy
of the final decision on a minibatch) and needs no gradient through the network.

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
    detection_loss,
    frozen,
    network_features,
    train_with_frozen_network,
)
from bioattn.mechanisms.snes import SearchDistribution, default_population, snes_step
from bioattn.mechanisms.training import (
    Budget,
    RunOptions,
    TrainingLog,
    step_generator,
    train_loop,
)
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


def train_dasnet_snes(
    network: Network,
    detectors: Detectors,
    policy: FeedbackPolicy,
    layers: Sequence[LayerInfo],
    data: CuedSet,
    budget: Budget,
    feedback_steps: int = 2,
    seed: int = 0,
    options: RunOptions = RunOptions(),
    population: int | None = None,
    sigma: float = 0.05,
) -> TrainingLog:
    """Train the feedback policy with SNES, as dasNet did: ``budget.steps`` generations of
    ``population`` policies (default SNES's 4 + ⌊3 ln d⌋ for d policy parameters), all scored
    on one minibatch of ``budget.batch_size`` cued images per generation (fitness: minus the
    cued detector's cross-entropy after ``feedback_steps`` rounds); ``budget.learning_rate``
    is SNES's η_μ. The policy ends at the distribution's mean (resumable: the distribution is
    checkpointed)."""
    distribution = SearchDistribution.of(policy, sigma)
    if population is None:
        population = default_population(distribution.mean.numel())

    def fitness(batch: CuedSet, theta: torch.Tensor) -> float:
        distribution.load_into(policy, theta)
        logits = dasnet_pass(
            network, detectors, policy, layers, batch.images, batch.category, feedback_steps
        )[0]
        return -float(detection_loss(logits, batch.is_target))

    def step(index: int) -> dict[str, float]:
        generator = step_generator(seed, index)
        batch = data.sample(budget.batch_size, generator)
        with torch.no_grad():
            scores = snes_step(
                distribution,
                lambda theta: fitness(batch, theta),
                population,
                generator,
                budget.learning_rate,
            )
            at_mean = fitness(batch, distribution.mean)
        return {"loss": -at_mean, "best_member_loss": -float(scores.max())}

    settings = {
        "mechanism": "dasnet-snes",
        "model": network.name,
        "layers": [layer.alias for layer in layers],
        "feedback_steps": feedback_steps,
        "image_type": data.image_type,
        "n": len(data),
        "budget": {"batch_size": budget.batch_size, "learning_rate": budget.learning_rate},
        "population": population,
        "sigma": sigma,
        "seed": seed,
    }
    with frozen(network.module), frozen(policy):
        log = train_loop(
            {"distribution": distribution},
            None,
            step,
            budget.steps,
            settings,
            f"dasnet-snes ({data.image_type})",
            options,
            data=(data.images, data.category, data.is_target),
        )
    distribution.load_into(policy)
    return log


def mean_gains(
    gains: Sequence[torch.Tensor], category: torch.Tensor, n_categories: int
) -> list[torch.Tensor]:
    """Average gains (K, C_l) per cued category of per-image gains (N, C_l) per layer."""
    one_hot = nn.functional.one_hot(category, n_categories).to(torch.float32)
    counts = one_hot.sum(0).clamp_min(1.0)[:, None]
    return [(one_hot.T @ g.to(torch.float32)) / counts for g in gains]
