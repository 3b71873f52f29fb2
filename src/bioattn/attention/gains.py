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

from bioattn.errors import ConfigError
from bioattn.models.network import LayerInfo, Network


@dataclass(frozen=True)
class Modulation:
    """``r' = r * scale + shift`` at one layer; ``None`` leaves that part out."""

    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None

    def __call__(self, activity: torch.Tensor) -> torch.Tensor:
        """Apply to an activity tensor (N, C, H, W)."""
        out = activity
        if self.scale is not None:
            out = out * _broadcastable(self.scale, activity)
        if self.shift is not None:
            out = torch.clamp(out + _broadcastable(self.shift, activity), min=0.0)
        return out

    def combine(self, other: Modulation) -> Modulation:
        """Both modulations at once: scales multiply, shifts add."""
        scale = _product(self.scale, other.scale)
        shift = (
            self.shift
            if other.shift is None
            else (other.shift if self.shift is None else self.shift + other.shift)
        )
        return Modulation(scale, shift)


def _product(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return _as_nchw(a) * _as_nchw(b)


def _as_nchw(t: torch.Tensor) -> torch.Tensor:
    """View a (C,) gain as (1, C, 1, 1) and an (H, W) map as (1, 1, H, W); 4-D passes through."""
    if t.ndim == 1:
        return t.view(1, -1, 1, 1)
    if t.ndim == 2:
        return t.view(1, 1, *t.shape)
    if t.ndim == 3:
        return t.unsqueeze(0)
    return t


def _broadcastable(t: torch.Tensor, activity: torch.Tensor) -> torch.Tensor:
    return _as_nchw(t).to(dtype=activity.dtype, device=activity.device)


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
    """Context in which forward passes of ``network`` apply ``modulations`` after the ReLUs.

    Hooks are forward hooks on each attended layer's ReLU module, so the change lands after the
    nonlinearity and before any pooling, and everything downstream sees it. They are removed on
    exit, even after an error.
    """
    handles = []
    try:
        for spec, modulation in modulations.items():
            if not isinstance(modulation, Modulation):
                raise ConfigError(f"expected a Modulation for layer {spec!r}, got {modulation!r}")
            layer = network.resolve_layer(spec)

            def hook(_module, _inputs, output, modulation=modulation):
                return modulation(output)

            handles.append(network.submodule(layer.activation).register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
