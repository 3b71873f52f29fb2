"""Separable natural evolution strategies (SNES; Schaul, Glasmachers & Schmidhuber 2011).

dasNet (Stollenga et al. 2014) trained its attention policy with SNES: the policy's parameters
θ are drawn from a Gaussian with a mean μ and one standard deviation σ_i per parameter; each
generation draws a population, scores each member by the reward of the whole (multi-pass)
episode, and moves μ and σ along the natural gradient of the expected fitness, estimated from
the members' fitness *ranks* (so only the order of the rewards matters, not their scale):

    θ_k = μ + σ ⊙ s_k,  s_k ~ N(0, I)           (mirrored: s and −s, halving the variance)
    u_k = rank utilities, Σ u_k = 0
    μ ← μ + η_μ · σ ⊙ Σ_k u_k s_k
    σ ← σ ⊙ exp(η_σ / 2 · Σ_k u_k (s_k² − 1)),   η_σ = (3 + ln d) / (5 √d)

No gradient of the network is needed: the policy only has to be run. The distribution is an
``nn.Module`` with buffers, so :func:`~bioattn.mechanisms.training.train_loop` checkpoints and
resumes it like any trained module.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from bioattn.errors import ConfigError

__all__ = ["SearchDistribution", "default_population", "rank_utilities", "snes_step"]


class SearchDistribution(nn.Module):
    """The SNES search distribution over a flat parameter vector: mean and per-parameter std."""

    def __init__(self, initial: torch.Tensor, sigma: float = 0.1) -> None:
        super().__init__()
        if not sigma > 0 or not math.isfinite(sigma):
            raise ConfigError(f"the initial SNES sigma must be a positive number, got {sigma}")
        self.register_buffer("mean", initial.detach().clone().to(torch.float64))
        self.register_buffer("std", torch.full_like(self.mean, float(sigma)))

    @classmethod
    def of(cls, module: nn.Module, sigma: float = 0.1) -> SearchDistribution:
        """A distribution centred on ``module``'s current parameters."""
        return cls(parameters_to_vector(module.parameters()), sigma)

    def load_into(self, module: nn.Module, vector: torch.Tensor | None = None) -> None:
        """Write ``vector`` (default: the mean) into ``module``'s parameters."""
        target = self.mean if vector is None else vector
        reference = next(module.parameters())
        with torch.no_grad():
            vector_to_parameters(target.to(reference.dtype), module.parameters())


def default_population(dimensions: int) -> int:
    """SNES's default population, 4 + ⌊3 ln d⌋, rounded up to an even number (mirrored pairs)."""
    size = 4 + math.floor(3 * math.log(max(int(dimensions), 1)))
    return size + size % 2


def rank_utilities(fitness: torch.Tensor) -> torch.Tensor:
    """SNES's rank-based utilities: the best member gets the most, the worse half nothing
    before centring; they sum to 0. Ties get the mean utility of their ranks."""
    n = fitness.numel()
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    raw = torch.clamp(math.log(n / 2 + 1) - torch.log(ranks), min=0.0)
    raw = raw / raw.sum() - 1.0 / n
    order = torch.argsort(fitness.to(torch.float64), descending=True, stable=True)
    utilities = torch.empty(n, dtype=torch.float64)
    utilities[order] = raw
    values = fitness.to(torch.float64)
    for value in torch.unique(values):  # ties share their ranks' utility
        same = values == value
        if int(same.sum()) > 1:
            utilities[same] = utilities[same].mean()
    return utilities


def snes_step(
    distribution: SearchDistribution,
    fitness_of: Callable[[torch.Tensor], float],
    population: int,
    generator: torch.Generator,
    learning_rate: float = 1.0,
) -> torch.Tensor:
    """One generation: draw ``population`` members (mirrored pairs), score each with
    ``fitness_of(θ)`` (higher is better), update the distribution; returns the fitnesses."""
    if population < 2 or population % 2:
        raise ConfigError(f"an SNES population must be an even number >= 2, got {population}")
    d = distribution.mean.numel()
    half = torch.randn(population // 2, d, generator=generator, dtype=torch.float64)
    samples = torch.cat([half, -half])
    members = distribution.mean + distribution.std * samples
    fitness = torch.tensor([float(fitness_of(theta)) for theta in members], dtype=torch.float64)
    if not torch.isfinite(fitness).all():
        raise ConfigError("an SNES fitness was not finite; check the reward")
    u = rank_utilities(fitness)
    eta_sigma = (3 + math.log(d)) / (5 * math.sqrt(d))
    with torch.no_grad():
        distribution.mean += learning_rate * distribution.std * (u @ samples)
        distribution.std *= torch.exp(eta_sigma / 2 * (u @ (samples**2 - 1)))
    return fitness
