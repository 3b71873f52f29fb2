"""Optimal feature gains: an upper bound for FSGM-style attention.

For one layer, every category gets its own gain vector ``g`` (one gain per feature map, the same
at every position, as FSGM), optimised directly for that category's detection on a training
pool: Adam on the balanced cross-entropy of the cued detector plus ``l2 · mean((g − 1)²)``
(regularised towards no attention), with ``g`` projected onto ``[low, high]`` after every step
(bounded; the bounds must contain 1). All categories are optimised together in one batch.

The training performance (TP + TN) / 2 of each category's current gains is measured on the
whole pool at every step (from the same forward pass as the gradient), and the best gains so far
are kept. The first gains measured are all 1 — no attention, β = 0 — so the returned gains are
never worse than β = 0 on the training pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn

from bioattn.attention.gains import Modulation
from bioattn.attention.values import layer_values, variable_name
from bioattn.errors import ConfigError
from bioattn.mechanisms.common import (
    CuedSet,
    batched,
    cued_logits,
    detection_loss,
    frozen,
    per_category_performance,
)
from bioattn.mechanisms.training import Budget, RunOptions, TrainingLog, train_loop
from bioattn.models.detectors import Detectors
from bioattn.models.network import LayerInfo, Network


class GainSet(nn.Module):
    """Per-category gain vectors (K, C) of one layer, with the best-so-far gains and scores."""

    def __init__(self, n_categories: int, channels: int) -> None:
        super().__init__()
        self.gains = nn.Parameter(torch.ones(n_categories, channels))
        self.register_buffer("best_gains", torch.ones(n_categories, channels))
        self.register_buffer("best_performance", torch.full((n_categories,), -1.0))
        self.register_buffer("baseline_performance", torch.full((n_categories,), np.nan))


@dataclass
class OptimalGains:
    """Result for one layer: best gains (K, C), their training performance and β = 0's (K,)."""

    layer: LayerInfo
    gains: torch.Tensor
    train_performance: torch.Tensor
    baseline_performance: torch.Tensor
    log: TrainingLog


def check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    """Validate gain bounds: 0 ≤ low ≤ 1 ≤ high, finite."""
    low, high = (float(b) for b in bounds)
    if not (np.isfinite(low) and np.isfinite(high) and 0.0 <= low <= 1.0 <= high):
        raise ConfigError(
            f"gain bounds must satisfy 0 <= low <= 1 <= high (1 is no attention), got {bounds}"
        )
    return low, high


def optimise_gains(
    network: Network,
    detectors: Detectors,
    layer: LayerInfo,
    data: CuedSet,
    budget: Budget,
    l2: float = 1e-3,
    bounds: tuple[float, float] = (0.0, 3.0),
    options: RunOptions = RunOptions(checkpoint_every=10),
) -> OptimalGains:
    """Optimise per-category gains at ``layer`` on ``data`` (full batch, chunked by
    ``budget.batch_size`` for memory); see the module docstring."""
    low, high = check_bounds(bounds)
    if l2 < 0:
        raise ConfigError(f"l2 must be >= 0, got {l2}")
    k = len(detectors.categories)
    gain_set = GainSet(k, layer.channels)
    optimizer = torch.optim.Adam(gain_set.parameters(), lr=budget.learning_rate)
    n = len(data)

    def step(_index: int) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        logits = []
        for part in batched(n, budget.batch_size):
            batch = data.subset(torch.arange(n)[part])
            scale = gain_set.gains[batch.category][:, :, None, None]
            logit = cued_logits(
                network, detectors, batch.images, batch.category, {layer: Modulation(scale=scale)}
            )
            loss = detection_loss(logit, batch.is_target) * (len(batch) / n)
            loss.backward()
            logits.append(logit.detach())
        penalty = l2 * ((gain_set.gains - 1.0) ** 2).mean()
        penalty.backward()
        with torch.no_grad():
            performance = per_category_performance(
                torch.cat(logits), data.is_target, data.category, k
            ).to(torch.float32)
            if torch.isnan(gain_set.baseline_performance).all():
                gain_set.baseline_performance.copy_(performance)
            better = performance > gain_set.best_performance
            gain_set.best_performance.copy_(
                torch.where(better, performance, gain_set.best_performance)
            )
            gain_set.best_gains.copy_(
                torch.where(better[:, None], gain_set.gains, gain_set.best_gains)
            )
        optimizer.step()
        with torch.no_grad():
            gain_set.gains.clamp_(low, high)
        present = ~torch.isnan(performance)
        return {"performance": float(performance[present].mean()) if present.any() else 0.0}

    settings = {
        "mechanism": "optimal-gains",
        "model": network.name,
        "layer": layer.alias,
        "image_type": data.image_type,
        "n": n,
        "l2": l2,
        "bounds": [low, high],
        "learning_rate": budget.learning_rate,
    }
    with frozen(network.module):
        log = train_loop(
            {"gains": gain_set},
            optimizer,
            step,
            budget.steps,
            settings,
            f"optimal gains {layer.alias} ({data.image_type})",
            options,
            data=(data.images, data.category, data.is_target),
        )
    return OptimalGains(
        layer,
        gain_set.best_gains.detach().clone(),
        gain_set.best_performance.detach().clone(),
        gain_set.baseline_performance.detach().clone(),
        log,
    )


def gain_value_correlations(
    gains: Mapping[str, torch.Tensor],
    values: xr.Dataset,
    categories: Sequence[str],
    image_type: str,
    layers: Sequence[LayerInfo],
) -> pd.DataFrame:
    """Pearson r, per layer, between gains (K, C) and tuning / gradient values of the same maps.

    ``gains`` maps layer aliases to (K, C) gains for ``categories`` (in order); the values are
    the FSGM values of those categories (``gradient_<image_type>`` for gradients). Each r is
    over all K·C (category, map) pairs of the layer; NaN when either side is constant. Columns:
    layer, values ("tuning" or "gradient"), r, n.
    """
    rows = []
    for layer in layers:
        if layer.alias not in gains:
            continue
        g = gains[layer.alias].detach().to(torch.float64).numpy().reshape(-1)
        for source in ("tuning", "gradient"):
            name = variable_name(source, image_type)
            if name not in values:
                continue
            v = np.stack(
                [layer_values(values, name, c, layer).numpy() for c in categories]
            ).reshape(-1)
            ok = g.std() > 1e-12 and v.std() > 1e-12
            r = float(np.corrcoef(g, v)[0, 1]) if ok else np.nan
            rows.append({"layer": layer.alias, "values": source, "r": r, "n": g.size})
    return pd.DataFrame(rows)
