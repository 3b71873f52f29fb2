"""Optimal feature gains: an upper bound for FSGM-style attention.

For one layer, every category gets its own gain vector ``g`` (one gain per feature map, the same
at every position, as FSGM), optimised directly for that category's detection on a training
pool: Adam on the balanced cross-entropy of the cued detector plus ``l2 · mean((g − 1)²)``
(regularised towards no attention), with ``g`` projected onto ``[low, high]`` after every step
(bounded; the bounds must contain 1). All categories are optimised together in one batch.

The performance (TP + TN) / 2 of each category's current gains is measured at every step on
the training pool (from the same forward pass as the gradient) and, when a *validation* set is
given, on it (images disjoint from the training pool, :func:`holdout_split`). The gains kept
per category are those of the step that scored best on the validation set (on the training
pool without one): early stopping chosen per category. With ``patience`` the run also stops
once no category has improved on the validation set for that many steps. The first gains
measured are all 1 — no attention, β = 0 — so the returned gains are never worse than β = 0
on the set they were chosen on.

Fitted on the 20 + 20 images of the FSGM selection pool and kept by their training score,
optimal gains overfit (0.90 on their pool, 0.815 on the test arrays, no better than FSGM): the
"upper bound" bounded nothing. :func:`bioattn.mechanisms.compare.compare_mechanisms` now fits
them on a larger pool, stops them on a validation split and reports train, validation and test;
RESULTS.md says how far that makes them a bound (on held-out arrays still not above FSGM).
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
    """Per-category gain vectors (K, C) of one layer, with the kept gains, their scores and
    the early-stopping state (buffers, so that a checkpoint restores them)."""

    def __init__(self, n_categories: int, channels: int) -> None:
        super().__init__()
        nan = torch.full((n_categories,), np.nan)
        self.gains = nn.Parameter(torch.ones(n_categories, channels))
        self.register_buffer("best_gains", torch.ones(n_categories, channels))
        self.register_buffer("best_score", torch.full((n_categories,), -1.0))
        self.register_buffer("best_train", nan.clone())
        self.register_buffer("best_validation", nan.clone())
        self.register_buffer("best_step", torch.zeros(n_categories, dtype=torch.int64))
        self.register_buffer("baseline_train", nan.clone())
        self.register_buffer("baseline_validation", nan.clone())
        self.register_buffer("steps_without_improvement", torch.zeros((), dtype=torch.int64))


@dataclass
class OptimalGains:
    """Result for one layer: the kept gains (K, C) and, per category (K,), their performance on
    the training pool and on the validation set (NaN without one), β = 0's on both, and the
    step they come from (0: the initial gains, all 1)."""

    layer: LayerInfo
    gains: torch.Tensor
    train_performance: torch.Tensor
    validation_performance: torch.Tensor
    baseline_train: torch.Tensor
    baseline_validation: torch.Tensor
    best_step: torch.Tensor
    log: TrainingLog

    @property
    def selection_performance(self) -> torch.Tensor:
        """The score the gains were kept by: validation performance, else training."""
        if self.validation_performance.isnan().all():
            return self.train_performance
        return self.validation_performance

    @property
    def selection_baseline(self) -> torch.Tensor:
        """β = 0's performance on the set the gains were kept by."""
        if self.baseline_validation.isnan().all():
            return self.baseline_train
        return self.baseline_validation


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
    validation: CuedSet | None = None,
    patience: int | None = None,
) -> OptimalGains:
    """Optimise per-category gains at ``layer`` on ``data`` (full batch, chunked by
    ``budget.batch_size`` for memory), keeping per category the gains that scored best on
    ``validation`` (on ``data`` without it) and stopping after ``patience`` steps in which no
    category improved; see the module docstring."""
    low, high = check_bounds(bounds)
    if l2 < 0:
        raise ConfigError(f"l2 must be >= 0, got {l2}")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ConfigError(
            f"patience must be a whole number >= 1 (or None: no early stop), got {patience}"
        )
    if validation is not None and validation.image_type != data.image_type:
        raise ConfigError(
            f"the validation set holds {validation.image_type} images but the training pool "
            f"{data.image_type} images; give both of one image type"
        )
    k = len(detectors.categories)
    gain_set = GainSet(k, layer.channels)
    optimizer = torch.optim.Adam(gain_set.parameters(), lr=budget.learning_rate)
    n = len(data)

    def validation_performance() -> torch.Tensor:
        assert validation is not None
        with torch.no_grad():
            logits = [
                cued_logits(
                    network,
                    detectors,
                    batch.images,
                    batch.category,
                    {layer: Modulation(scale=gain_set.gains[batch.category][:, :, None, None])},
                )
                for batch in (
                    validation.subset(torch.arange(len(validation))[part])
                    for part in batched(len(validation), budget.batch_size)
                )
            ]
        return per_category_performance(
            torch.cat(logits), validation.is_target, validation.category, k
        ).to(torch.float32)

    def step(index: int) -> dict[str, float]:
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
            train = per_category_performance(
                torch.cat(logits), data.is_target, data.category, k
            ).to(torch.float32)
            held_out = (
                validation_performance()
                if validation is not None
                else torch.full_like(train, np.nan)
            )
            score = train if validation is None else held_out
            if index == 0:  # the initial gains, all 1: no attention
                gain_set.baseline_train.copy_(train)
                gain_set.baseline_validation.copy_(held_out)
            better = score > gain_set.best_score
            gain_set.best_score.copy_(torch.where(better, score, gain_set.best_score))
            gain_set.best_train.copy_(torch.where(better, train, gain_set.best_train))
            gain_set.best_validation.copy_(torch.where(better, held_out, gain_set.best_validation))
            gain_set.best_step.copy_(torch.where(better, index, gain_set.best_step))
            gain_set.best_gains.copy_(
                torch.where(better[:, None], gain_set.gains, gain_set.best_gains)
            )
            if bool(better.any()):
                gain_set.steps_without_improvement.zero_()
            else:
                gain_set.steps_without_improvement.add_(1)
        optimizer.step()
        with torch.no_grad():
            gain_set.gains.clamp_(low, high)
        metrics = {"performance": _mean_present(train)}
        if validation is not None:
            metrics["validation"] = _mean_present(held_out)
        return metrics

    def stop() -> bool:
        return patience is not None and int(gain_set.steps_without_improvement) >= patience

    settings = {
        "mechanism": "optimal-gains",
        "model": network.name,
        "layer": layer.alias,
        "image_type": data.image_type,
        "n": n,
        "l2": l2,
        "bounds": [low, high],
        "learning_rate": budget.learning_rate,
        "validation": None if validation is None else len(validation),
        "patience": patience,
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
            data=(data.images, data.category, data.is_target)
            + (
                ()
                if validation is None
                else (validation.images, validation.category, validation.is_target)
            ),
            stop_when=stop,
        )
    return OptimalGains(
        layer,
        gain_set.best_gains.detach().clone(),
        gain_set.best_train.detach().clone(),
        gain_set.best_validation.detach().clone(),
        gain_set.baseline_train.detach().clone(),
        gain_set.baseline_validation.detach().clone(),
        gain_set.best_step.detach().clone(),
        log,
    )


def _mean_present(performance: torch.Tensor) -> float:
    present = ~torch.isnan(performance)
    return float(performance[present].mean()) if present.any() else 0.0


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
