"""The retina-like glimpse sensor of the recurrent attention model (Mnih et al. 2014).

A glimpse at location ``l`` is ``n_scales`` square patches centred on the same pixel, of sides
``patch · factor**i`` (i = 0 … n_scales − 1), each average-pooled down to ``patch × patch``: high
resolution at the centre, coarse context around it. Locations are (row, column) in [−1, 1]
(−1: first row/column, +1: last); the centre pixel of a glimpse is
``round((l + 1) / 2 · (side − 1))``. A patch of side ``s`` covers pixels
``centre − s // 2 … centre − s // 2 + s − 1``; pixels outside the image read as 0.

The sensor is vectorised over the batch (one gather per scale, no per-image Python loop) and
not differentiable with respect to the location (RAM learns locations with REINFORCE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bioattn.data.clutter import crop_windows
from bioattn.errors import ConfigError


def location_to_pixels(locations: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre pixels (N, 2) int64 (row, col) of glimpse ``locations`` (N, 2) in [−1, 1]."""
    if locations.ndim != 2 or locations.shape[1] != 2:
        raise ConfigError(f"locations must be (N, 2) (row, col), got {tuple(locations.shape)}")
    sides = torch.tensor([height - 1, width - 1], dtype=locations.dtype, device=locations.device)
    centre = torch.round((locations.clamp(-1.0, 1.0) + 1.0) / 2.0 * sides)
    return centre.to(torch.int64)


def patch_sizes(patch: int, n_scales: int, factor: int = 2) -> list[int]:
    """Sides of the glimpse's patches before pooling: ``patch · factor**i``."""
    if patch < 1 or n_scales < 1 or factor < 1:
        raise ConfigError(
            f"glimpse patch, n_scales and factor must be >= 1, got {patch}, {n_scales}, {factor}"
        )
    return [patch * factor**i for i in range(n_scales)]


def glimpse_sensor(
    images: torch.Tensor,
    locations: torch.Tensor,
    patch: int = 8,
    n_scales: int = 3,
    factor: int = 2,
) -> torch.Tensor:
    """Multi-resolution glimpses (N, n_scales, C, patch, patch) of ``images`` (N, C, H, W)."""
    if images.ndim != 4:
        raise ConfigError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    n, _, h, w = images.shape
    if locations.shape != (n, 2):
        raise ConfigError(f"locations must be ({n}, 2), got {tuple(locations.shape)}")
    sizes = patch_sizes(patch, n_scales, factor)
    pad = sizes[-1]
    padded = F.pad(images, (pad, pad, pad, pad))
    centre = location_to_pixels(locations, h, w) + pad
    scales = []
    for size in sizes:
        top_left = centre - size // 2
        window = crop_windows(padded, top_left[:, 0], top_left[:, 1], size, size)
        scales.append(F.avg_pool2d(window, size // patch) if size != patch else window)
    return torch.stack(scales, dim=1)
