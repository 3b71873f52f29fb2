"""Spatial kernels of the SSN's lateral weights: truncated Gaussians, their spectra and the
depthwise-convolution operator that applies them.

A pathway's spatial weights onto the cell at (y, x) are ``G_σ(y − y', x − x') / Z_σ(y, x)``: a
separable Gaussian truncated at ``ceil(truncate·σ)`` positions, normalised by its sum over the
grid seen from (y, x), so the weights onto every cell sum to 1, near borders too.
:func:`gaussian_matrix` gives that operator densely along one axis (for checks),
:class:`Grid` applies it as one depthwise convolution, and :func:`kernel_spectrum` gives the
Fourier spectrum that :meth:`bioattn.ssn.layer.SSNParams.spatial_mode_determinant` uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


def kernel_spectrum(sigma: float, truncate: float, q: torch.Tensor) -> torch.Tensor:
    """Fourier spectrum ĝ(q) of the normalised, truncated 1-D Gaussian at frequencies ``q``."""
    if sigma == 0:
        return torch.ones_like(q)
    radius = math.ceil(truncate * sigma)
    d = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(d**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return (g.view(1, -1) * torch.cos(q.view(-1, 1) * d.view(1, -1))).sum(dim=1)


def gaussian_matrix(size: int, sigma: float, truncate: float, dtype: torch.dtype) -> torch.Tensor:
    """(size, size) row-normalised 1-D Gaussian: row i holds g(i − j) / Σ_j g(i − j).

    g(d) = exp(−d²/2σ²) for |d| <= ceil(truncate·σ), else 0; σ = 0 gives the identity.
    """
    if sigma == 0:
        return torch.eye(size, dtype=dtype)
    index = torch.arange(size, dtype=torch.float64)
    distance = index.view(-1, 1) - index.view(1, -1)
    radius = math.ceil(truncate * sigma)
    g = torch.exp(-(distance**2) / (2.0 * sigma**2)) * (distance.abs() <= radius)
    return (g / g.sum(dim=1, keepdim=True)).to(dtype)


def _tap_sums(taps: torch.Tensor, size: int, radius: int) -> torch.Tensor:
    """Σ over grid positions j of taps[i − j] for each i in 0 … size − 1 (zero padding)."""
    index = torch.arange(size)
    offset = index.view(-1, 1) - index.view(1, -1)
    inside = offset.abs() <= radius
    return (taps[(offset + radius).clamp(0, 2 * radius)] * inside).sum(dim=1)


def gaussian_taps(sigma: float, truncate: float, radius: int) -> torch.Tensor:
    """Unnormalised 1-D Gaussian taps at offsets −radius … radius (float64).

    exp(−d²/2σ²) for |d| <= ceil(truncate·σ), else 0; σ = 0 gives a single 1 at d = 0.
    """
    d = torch.arange(-radius, radius + 1, dtype=torch.float64)
    if sigma == 0:
        return (d == 0).to(torch.float64)
    return torch.exp(-(d**2) / (2.0 * sigma**2)) * (d.abs() <= math.ceil(truncate * sigma))


@dataclass
class Grid:
    """The lateral blurs of one grid, as one depthwise convolution plus border normalisation.

    A blur with a row-normalised Gaussian is ``B x = (G * x) / Z``: G the unnormalised, truncated
    2-D Gaussian convolved with zero padding (a symmetric operator) and Z(y, x) = (G * 1)(y, x)
    its sum over the grid seen from (y, x). Its transpose is therefore ``Bᵀ p = G * (p / Z)``.

    ``shared``: each pathway's width depends only on its source population (σ_EE = σ_IE and
    σ_EI = σ_II), so the conv has one kernel per (source, map) channel and ``inv_z`` is
    (1, 2, 1, H, W). Otherwise it has one kernel per (target, source, map) channel and ``inv_z``
    is (1, 2, 2, 1, H, W).
    """

    shared: bool
    weight: torch.Tensor | None  # (2C or 4C, 1, K, K); None when every width is 0 (identity)
    padding: int
    inv_z: torch.Tensor

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return x
        n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        flat = x.reshape(n, -1, h, w)
        out = F.conv2d(flat, self.weight, padding=self.padding, groups=flat.shape[1])
        return out.view(x.shape)

    def blur(self, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """Blur ``x`` (N, 2, C, H, W) with its populations' blurs.

        Shared widths: the result is (N, 2, C, H, W), population b blurred with blur b. Otherwise
        the result is (N, 2, 2, C, H, W): [target a, source b] = blur_ab(x_b) (forward) or
        [a, b] = blur_abᵀ(x_a) (``transpose``).
        """
        if not self.shared:
            x = x.unsqueeze(2) if transpose else x.unsqueeze(1)
            x = x.expand(x.shape[0], 2, 2, *x.shape[3:])
        if transpose:
            return self._conv(x * self.inv_z)
        return self._conv(x).mul_(self.inv_z)


def build_grid(
    sigmas: tuple[tuple[float, float], tuple[float, float]],
    shared: bool,
    channels: int,
    truncate: float,
    height: int,
    width: int,
    like: torch.Tensor,
) -> Grid:
    """The :class:`Grid` of an H×W layer with ``channels`` maps, in ``like``'s dtype and device.

    ``sigmas[a][b]`` is the width of the pathway onto population a from population b; with
    ``shared`` (widths depend only on the source) the grid keeps one kernel per source.
    """
    chosen = [sigmas[0][0], sigmas[0][1]] if shared else [s for row in sigmas for s in row]
    radius = max(math.ceil(truncate * s) if s > 0 else 0 for s in chosen)
    radius = min(radius, max(height, width) - 1)
    taps = [gaussian_taps(s, truncate, radius) for s in chosen]
    kernels = torch.stack([torch.outer(g, g) for g in taps])  # (P, K, K)
    weight = kernels.repeat_interleave(channels, dim=0).unsqueeze(1)
    # Z(y, x) = Z_rows(y) · Z_cols(x), each the Gaussian's sum over the grid from there
    inv_z = []
    for g in taps:
        z_rows = _tap_sums(g, height, radius)
        z_cols = _tap_sums(g, width, radius)
        inv_z.append(1.0 / torch.outer(z_rows, z_cols))
    shape = (1, 2, 1, height, width) if shared else (1, 2, 2, 1, height, width)
    return Grid(
        shared,
        None if radius == 0 else weight.to(dtype=like.dtype, device=like.device),
        radius,
        torch.stack(inv_z).view(shape).to(dtype=like.dtype, device=like.device),
    )
