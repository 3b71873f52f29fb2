"""Gain rules: how attention changes the activity of an attended layer.

Every rule becomes a :class:`Modulation` of a layer's post-ReLU activity ``r`` (N, C, H, W):
``r' = r * scale + shift``, clamped at 0 when a shift is present so that rates stay
non-negative. ``scale`` and ``shift`` broadcast against (N, C, H, W): a (C,) feature gain is
applied identically at every position (feature attention is spatially global), a (H, W) map
identically to every feature map (spatial attention).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from bioattn.data.composites import quadrant_slices
from bioattn.errors import ConfigError
from bioattn.models.network import LayerInfo, Network


@dataclass(frozen=True)
class SpatialCue:
    """Spatial attention to one quadrant (0–3, see ``bioattn.data.composites.QUADRANTS``).

    The factor is ``1 + beta`` inside the quadrant and ``max(0, 1 - beta)`` outside, on every
    feature map; the quadrant is located on each layer's own grid when the layer runs.
    ``additive`` combines it with a feature gain the way the original code did,
    ``g_feature + (g_spatial - 1)`` without the clamps, which can make activity negative; the
    default multiplies the two factors.
    """

    quadrant: int
    beta: float
    additive: bool = False

    def factor(self, height: int, width: int) -> torch.Tensor:
        """The (H, W) factor map, clamped (multiplicative) or raw ±beta (additive)."""
        rows, cols = quadrant_slices(height, width, self.quadrant)
        if self.additive:
            raw = torch.full((height, width), -self.beta)
            raw[rows, cols] = self.beta
            return raw
        return spatial_gain(height, width, rows, cols, self.beta)


@dataclass(frozen=True)
class Modulation:
    """``r' = r * scale + shift`` at one layer; ``None`` leaves that part out.

    With a ``spatial`` cue the scale is multiplied by the cue's (H, W) factor map, or, for an
    additive cue, the raw ±β map is added to it (see :class:`SpatialCue`).
    """

    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    spatial: SpatialCue | None = None

    def full_scale(self, activity: torch.Tensor) -> torch.Tensor | None:
        """The scale as applied to ``activity`` (N, C, H, W), spatial cue included."""
        scale = None if self.scale is None else _broadcastable(self.scale, activity)
        if self.spatial is None:
            return scale
        cue = _broadcastable(self.spatial.factor(*activity.shape[-2:]), activity)
        if self.spatial.additive:
            return cue + (1.0 if scale is None else scale)
        return cue if scale is None else scale * cue

    def __call__(self, activity: torch.Tensor) -> torch.Tensor:
        """Apply to an activity tensor (N, C, H, W)."""
        out = activity
        scale = self.full_scale(activity)
        if scale is not None:
            out = out * scale
        if self.shift is not None:
            out = torch.clamp(out + _broadcastable(self.shift, activity), min=0.0)
        return out


def as_nchw(t: torch.Tensor) -> torch.Tensor:
    """View a (C,) gain as (1, C, 1, 1) and an (H, W) map as (1, 1, H, W); 4-D passes through."""
    if t.ndim == 1:
        return t.view(1, -1, 1, 1)
    if t.ndim == 2:
        return t.view(1, 1, *t.shape)
    if t.ndim == 3:
        return t.unsqueeze(0)
    return t


def _broadcastable(t: torch.Tensor, activity: torch.Tensor) -> torch.Tensor:
    return as_nchw(t).to(dtype=activity.dtype, device=activity.device)


def feature_gain(values: torch.Tensor, beta: float, positive_only: bool = False) -> torch.Tensor:
    """Feature similarity gain per map: ``max(0, 1 + beta * v)``.

    Bidirectional by default (maps with negative values are suppressed); ``positive_only`` sets
    negative values to 0 first so only positively valued maps change. Non-finite values count
    as 0, so no NaN or inf can reach the network.
    """
    v = torch.nan_to_num(values.to(torch.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if positive_only:
        v = torch.clamp(v, min=0.0)
    return torch.clamp(1.0 + beta * v, min=0.0)


def response_gain_shift(
    values: torch.Tensor, beta: float, layer_scale: float, positive_only: bool = False
) -> torch.Tensor:
    """Additive (response-gain) variant: ``beta * v * B_l`` per map.

    ``B_l`` is the layer's mean post-ReLU activity over the tuning images (see
    :func:`bioattn.attention.values.layer_scales`), so one β means a comparable change at every
    layer whatever its activity range.
    """
    v = torch.nan_to_num(values.to(torch.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if positive_only:
        v = torch.clamp(v, min=0.0)
    return beta * v * float(layer_scale)


def spatial_gain(height: int, width: int, rows: slice, cols: slice, beta: float) -> torch.Tensor:
    """(H, W) map: ``1 + beta`` inside the attended region, ``max(0, 1 - beta)`` outside."""
    gain = torch.full((height, width), max(0.0, 1.0 - beta))
    gain[rows, cols] = 1.0 + beta
    return gain


@contextmanager
def modulate(
    network: Network, modulations: Mapping[str | int | LayerInfo, Modulation]
) -> Iterator[None]:
    """Context in which forward passes of ``network`` apply ``modulations`` at their sites.

    Each modulation changes its site's output (after the nonlinearity, before any pooling; at
    every call of a group), so everything downstream sees it. They are removed on exit, even
    after an error.
    """
    removers = []
    try:
        for spec, modulation in modulations.items():
            if not isinstance(modulation, Modulation):
                raise ConfigError(f"expected a Modulation for layer {spec!r}, got {modulation!r}")
            removers.append(network.hook_site(spec, modulation))
        yield
    finally:
        for remove in removers:
            remove()
