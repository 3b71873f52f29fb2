"""Binary category detectors: one L2-regularised, class-balanced logistic regression per category,
reading a network's readout features (the default network's pooled features; VGG-16's fc7).

All detectors live in one linear map so that a single forward pass gives every category's logit,
and the map is differentiable, which gradient values need.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from bioattn.cache import atomic_path, update_with_tensor
from bioattn.data.imageset import resolve_category
from bioattn.errors import DataError, WeightsError


@dataclass
class Detectors:
    """Per-category logistic detectors: ``logit = ((x - mean) / std) @ weight.T + bias``.

    A category is judged present when its logit is above 0.
    """

    weight: torch.Tensor  # (K, D)
    bias: torch.Tensor  # (K,)
    feature_mean: torch.Tensor  # (D,)
    feature_std: torch.Tensor  # (D,)
    categories: tuple[str, ...]

    @property
    def n_features(self) -> int:
        """Length of the feature vector the detectors read."""
        return int(self.weight.shape[1])

    def index(self, category: str | int) -> int:
        """Index of a category name (unknown names list the valid ones)."""
        return resolve_category(category, self.categories)

    def update_digest(self, digest: Any) -> None:
        """Feed the detectors' tensors and categories into a ``hashlib`` digest."""
        for tensor in (self.weight, self.bias, self.feature_mean, self.feature_std):
            update_with_tensor(digest, tensor)
        digest.update(json.dumps(list(self.categories)).encode())

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) for readout features (N, D); differentiable with respect to features."""
        if features.shape[-1] != self.n_features:
            raise WeightsError(
                f"detectors read {self.n_features} features but got {features.shape[-1]}: "
                "they were fitted on another model; refit them for this one"
            )
        if not features.is_floating_point() or features.element_size() < 4:
            features = features.float()  # half-precision features: the read-out in float32
        mean, std, weight, bias = (
            t.to(features) for t in (self.feature_mean, self.feature_std, self.weight, self.bias)
        )
        return ((features - mean) / std) @ weight.T + bias

    def save(self, path: Path) -> None:
        """Write to a safetensors file (categories in its metadata)."""
        tensors = {
            "weight": self.weight.contiguous(),
            "bias": self.bias.contiguous(),
            "feature_mean": self.feature_mean.contiguous(),
            "feature_std": self.feature_std.contiguous(),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"categories": json.dumps(self.categories)})

    @classmethod
    def load(cls, path: Path) -> Detectors:
        """Read detectors written by :meth:`save`."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
            categories = tuple(json.loads(metadata["categories"]))
            return cls(
                tensors["weight"],
                tensors["bias"],
                tensors["feature_mean"],
                tensors["feature_std"],
                categories,
            )
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as error:
            raise WeightsError(
                f"cannot read detectors from {path}: {error}; expected a safetensors file "
                "written by Detectors.save (delete it to refit)"
            ) from error


def fit_detectors(
    features: torch.Tensor,
    labels: torch.Tensor,
    categories: Sequence[str],
    l2: float = 1e-3,
    max_iter: int = 300,
) -> Detectors:
    """Fit one class-balanced, L2-regularised logistic regression per category.

    Each detector k separates images of category k (positives) from all others (negatives);
    positives and negatives each carry half of the loss weight, so rare positives count as much
    as the many negatives. Features are standardised first (constant features get std 1). The
    penalty is ``l2 / 2 * ||w_k||^2`` on the standardised weights. The K problems are independent
    and solved together with L-BFGS in float64.
    """
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise DataError(
            f"features must be (N, D) matching labels (N,); got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    x = features.detach().to(torch.float64)
    mean = x.mean(0)
    std = x.std(0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    x = (x - mean) / std
    k = len(categories)
    targets = (labels.view(-1, 1) == torch.arange(k).view(1, -1)).to(torch.float64)  # (N, K)
    n_pos = targets.sum(0)
    n_neg = targets.shape[0] - n_pos
    missing = [categories[i] for i in range(k) if n_pos[i] == 0 or n_neg[i] == 0]
    if missing:
        raise DataError(
            f"cannot fit detectors: categories {missing} have no positive or no negative "
            "training images; every category needs both"
        )
    sample_weight = torch.where(targets > 0, 0.5 / n_pos, 0.5 / n_neg)

    weight = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        z = x @ weight.T + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            z, targets, weight=sample_weight, reduction="sum"
        )
        loss = loss + 0.5 * l2 * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return Detectors(
        weight.detach().to(torch.float32),
        bias.detach().to(torch.float32),
        mean.to(torch.float32),
        std.to(torch.float32),
        tuple(categories),
    )


def evaluate_detectors(
    detectors: Detectors, features: torch.Tensor, labels: torch.Tensor
) -> pd.DataFrame:
    """Per-category hit rate, correct-rejection rate and balanced accuracy on standard images."""
    with torch.no_grad():
        present = detectors.logits(features) > 0
    rows = []
    for k, name in enumerate(detectors.categories):
        positive = labels == k
        tp = present[positive, k].float().mean().item() if positive.any() else np.nan
        tn = (~present[~positive, k]).float().mean().item() if (~positive).any() else np.nan
        rows.append(
            {
                "category": name,
                "tp": tp,
                "tn": tn,
                "balanced_accuracy": (tp + tn) / 2,
                "n_pos": int(positive.sum()),
                "n_neg": int((~positive).sum()),
            }
        )
    return pd.DataFrame(rows)
