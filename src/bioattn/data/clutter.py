"""Translated and cluttered images (Mnih et al. 2014): one object at a random place on a larger
canvas, with small crops of other images scattered around it as clutter.

Also the two vectorised window operations everything spatial here uses: :func:`crop_windows`
(one window per image, each at its own position) and :func:`paste_windows` (the inverse, pasted
with a pixel-wise maximum so the object stays visible over clutter). Both index the whole batch
at once, without a Python loop over images.
"""

from __future__ import annotations

import operator

import torch

from bioattn.data.imageset import ImageSet
from bioattn.errors import ConfigError


def _window_index(
    n: int, rows: torch.Tensor, cols: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Advanced-index tensors (batch, row, col), each broadcasting to (N, height, width)."""
    batch = torch.arange(n, device=rows.device).view(n, 1, 1)
    r = rows.to(torch.int64).view(n, 1, 1) + torch.arange(height, device=rows.device).view(1, -1, 1)
    c = cols.to(torch.int64).view(n, 1, 1) + torch.arange(width, device=rows.device).view(1, 1, -1)
    return batch, r, c


def crop_windows(
    images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Window ``images[i, :, rows[i]:rows[i]+height, cols[i]:cols[i]+width]`` of every image.

    ``images`` is (N, C, H, W); ``rows`` and ``cols`` (N,) are top-left corners, and every window
    must lie inside the image (pad first for windows that may cross the border). Returns
    (N, C, height, width).
    """
    n, _, h, w = images.shape
    if rows.shape != (n,) or cols.shape != (n,):
        raise ValueError(f"rows and cols must have shape ({n},), got {rows.shape}, {cols.shape}")
    if n and (
        int(rows.min()) < 0
        or int(cols.min()) < 0
        or int(rows.max()) + height > h
        or int(cols.max()) + width > w
    ):
        raise ValueError(f"a {height}×{width} window falls outside the {h}×{w} images")
    batch, r, c = _window_index(n, rows, cols, height, width)
    # advanced indices separated by a slice: the broadcast (N, height, width) dims come first
    return images[batch, :, r, c].permute(0, 3, 1, 2)


def paste_windows(
    canvas: torch.Tensor, patches: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """A copy of ``canvas`` (N, C, H, W) with ``patches`` (N, C, h, w) pasted at (rows, cols).

    Pixels combine by maximum, so a pasted patch never hides brighter pixels already there.
    """
    n, _, ph, pw = patches.shape
    batch, r, c = _window_index(n, rows, cols, ph, pw)
    out = canvas.clone()
    out[batch, :, r, c] = torch.maximum(out[batch, :, r, c], patches.permute(0, 2, 3, 1))
    return out


def _count(name: str, value: int, minimum: int) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def make_cluttered(
    source: ImageSet,
    n: int,
    size: int = 60,
    n_clutter: int = 4,
    clutter_size: int = 8,
    seed: int = 0,
) -> ImageSet:
    """``n`` images of ``size`` × ``size``: one source image at a uniformly random position, over
    ``n_clutter`` random ``clutter_size`` × ``clutter_size`` crops of random source images at
    random positions (``n_clutter = 0``: translated images without clutter).

    Labels are the object's category; the split is the source's, so cluttered test images come
    only from a test split. Deterministic given ``seed`` (one ``torch.Generator``).
    """
    n = _count("n", n, 1)
    n_clutter = _count("n_clutter", n_clutter, 0)
    if len(source) == 0:
        raise ConfigError("the source image set is empty; cluttered images need source images")
    _, channels, h, w = source.images.shape
    size = _count("size", size, max(h, w))
    clutter_size = _count("clutter_size", clutter_size, 1)
    if clutter_size > min(h, w):
        raise ConfigError(
            f"clutter_size {clutter_size} is larger than the {h}×{w} source images it is cut from"
        )
    generator = torch.Generator().manual_seed(int(seed))
    objects = torch.randint(len(source), (n,), generator=generator)
    canvas = torch.zeros(n, channels, size, size, dtype=source.images.dtype)
    for _ in range(n_clutter):
        pieces = torch.randint(len(source), (n,), generator=generator)
        crop_r = torch.randint(h - clutter_size + 1, (n,), generator=generator)
        crop_c = torch.randint(w - clutter_size + 1, (n,), generator=generator)
        crops = crop_windows(source.images[pieces], crop_r, crop_c, clutter_size, clutter_size)
        at_r = torch.randint(size - clutter_size + 1, (n,), generator=generator)
        at_c = torch.randint(size - clutter_size + 1, (n,), generator=generator)
        canvas = paste_windows(canvas, crops, at_r, at_c)
    at_r = torch.randint(size - h + 1, (n,), generator=generator)
    at_c = torch.randint(size - w + 1, (n,), generator=generator)
    canvas = paste_windows(canvas, source.images[objects], at_r, at_c)
    return ImageSet(canvas, source.labels[objects].clone(), source.categories, source.split)
