"""Soft spatial attention (Xu et al. 2015, Show-Attend-Tell), cued by category.

At one conv layer of the (frozen) network, a small attention network scores every position
from the activity there and the cued category, ``e_ij = w_c · tanh(W a_ij + u_c)``, and a softmax
over positions turns the scores into weights ``α_ij`` (summing to 1 per image). The layer's
activity is then multiplied by ``H·W·α_ij`` at every position (the same on every feature map):
uniform weights leave the network unchanged, and at the last conv layer, where the network
averages over positions, this is exactly Show-Attend-Tell's attention-weighted context vector
``Σ α_ij a_ij``. The attention network starts at ``w_c = 0`` (uniform weights, i.e. no
attention) and is trained by backprop on the cued detector's cross-entropy; the network and the
detectors stay fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bioattn.attention.gains import Modulation
from bioattn.mechanisms.common import (
    CuedSet,
    cued_logits,
    plot_image_row,
    train_with_frozen_network,
)
from bioattn.mechanisms.training import Budget, RunOptions, TrainingLog
from bioattn.models.detectors import Detectors
from bioattn.models.network import LayerInfo, Network


class SoftSpatialAttention(nn.Module):
    """Category-cued softmax weights over the positions of a (N, C, H, W) activity map."""

    def __init__(self, channels: int, n_categories: int, hidden: int = 32) -> None:
        super().__init__()
        self.project = nn.Conv2d(channels, hidden, 1)
        self.cue = nn.Embedding(n_categories, hidden)
        self.score = nn.Parameter(torch.zeros(n_categories, hidden))

    def forward(self, activity: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """Weights α (N, H, W), non-negative and summing to 1 over positions of each image."""
        n, _, h, w = activity.shape
        features = torch.tanh(self.project(activity) + self.cue(category)[:, :, None, None])
        scores = torch.einsum("nkhw,nk->nhw", features, self.score[category])
        return F.softmax(scores.reshape(n, h * w), dim=1).reshape(n, h, w)


@dataclass(frozen=True, eq=False)
class SoftSpatialModulation(Modulation):
    """Multiplies activity by ``H·W·α`` from a :class:`SoftSpatialAttention`; usable with
    :func:`bioattn.attention.gains.modulate`. Weights of each pass are appended to ``record``."""

    attention: SoftSpatialAttention | None = None
    category: torch.Tensor | None = None
    record: list[torch.Tensor] | None = None

    def __call__(self, activity: torch.Tensor) -> torch.Tensor:
        """Apply the attention weights to ``activity`` (N, C, H, W)."""
        assert self.attention is not None and self.category is not None
        alpha = self.attention(activity, self.category)
        if self.record is not None:
            self.record.append(alpha.detach())
        h, w = activity.shape[-2:]
        return activity * (h * w) * alpha.unsqueeze(1)


def soft_spatial_logits(
    network: Network,
    detectors: Detectors,
    attention: SoftSpatialAttention,
    layer: LayerInfo,
    images: torch.Tensor,
    category: torch.Tensor,
    record: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Cued detector logits (N,) with soft spatial attention at ``layer`` (differentiable)."""
    modulation = SoftSpatialModulation(attention=attention, category=category, record=record)
    return cued_logits(network, detectors, images, category, {layer: modulation})


def train_soft_spatial(
    network: Network,
    detectors: Detectors,
    attention: SoftSpatialAttention,
    layer: LayerInfo,
    data: CuedSet,
    budget: Budget,
    seed: int = 0,
    options: RunOptions = RunOptions(),
) -> TrainingLog:
    """Train the attention network by backprop on cued detection; the network stays fixed."""

    def logits(batch: CuedSet) -> torch.Tensor:
        return soft_spatial_logits(
            network, detectors, attention, layer, batch.images, batch.category
        )

    return train_with_frozen_network(
        network,
        {"attention": attention},
        logits,
        budget,
        data,
        seed,
        {"mechanism": "soft-spatial", "layer": layer.alias},
        options,
    )


def plot_attention_maps(
    images: torch.Tensor, weights: torch.Tensor, stem: str | Path, titles: list[str] | None = None
) -> list[Path]:
    """Images with their soft attention weights overlaid (upsampled to the image). PNG + SVG."""
    up = F.interpolate(weights.unsqueeze(1), size=images.shape[-2:], mode="nearest").squeeze(1)

    def draw(ax: Any, i: int) -> None:
        ax.imshow(up[i].numpy(), cmap="inferno", alpha=0.5)

    title = "Soft spatial attention weights α (brighter: more weight)"
    return plot_image_row(images, stem, title, titles, draw)
