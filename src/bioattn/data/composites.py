"""Composite stimuli built from image batches: merged, 2×2 arrays, and images in noise.

Pure, deterministic tensor functions on images with pixel values in [0, 1] and shape
(N, C, H, W). Randomness (noise) comes only from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math

import torch

from bioattn.errors import ConfigError

QUADRANTS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
"""Quadrant names; a quadrant's index is its position here (row-major order)."""


def merge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Transparent overlay of two image batches: the pixel mean ``(a + b) / 2``."""
    if a.shape != b.shape:
        raise ValueError(
            f"merged images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return (a + b) / 2


def array_grid(tiles: torch.Tensor) -> torch.Tensor:
    """Arrange four tiles per image into a 2×2 grid.

    ``tiles`` has shape (N, 4, C, H, W); tile ``q`` goes to quadrant ``QUADRANTS[q]`` (0 top-left,
    1 top-right, 2 bottom-left, 3 bottom-right). Returns (N, C, 2H, 2W).
    """
    if tiles.ndim != 5 or tiles.shape[1] != 4:
        raise ValueError(f"tiles must have shape (N, 4, C, H, W), got {tuple(tiles.shape)}")
    n, _, c, h, w = tiles.shape
    # (N, row, col, C, H, W) -> (N, C, row, H, col, W) -> (N, C, 2H, 2W)
    return tiles.reshape(n, 2, 2, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, 2 * h, 2 * w)


def resolve_quadrant(quadrant: int | str) -> int:
    """Index (0..3) of a quadrant given as an index or a name from :data:`QUADRANTS`."""
    if isinstance(quadrant, str) and not quadrant.isdigit():
        name = quadrant.strip().lower().replace("_", "-").replace(" ", "-")
        if name in QUADRANTS:
            return QUADRANTS.index(name)
        raise ConfigError(
            f"unknown quadrant {quadrant!r}; valid quadrants are {', '.join(QUADRANTS)} (or 0..3)"
        )
    index = int(quadrant)
    if not 0 <= index < 4:
        raise ConfigError(
            f"quadrant index {index} is out of range; valid are 0..3 ({', '.join(QUADRANTS)})"
        )
    return index


def quadrant_slices(height: int, width: int, quadrant: int | str) -> tuple[slice, slice]:
    """(row slice, column slice) of ``quadrant`` in a ``height`` × ``width`` image or feature map.

    ``height`` and ``width`` are the size of the whole 2×2 image (2H × 2W for an array of H × W
    tiles) or of a feature map computed from it. For even sizes the quadrants tile the image
    exactly. For an odd size (e.g. a 7 × 7 feature map) the middle row (column) straddles both
    halves and belongs to both, so quadrants stay the same size and symmetric.
    """
    index = resolve_quadrant(quadrant)
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height} × {width}")
    row, col = divmod(index, 2)
    rows = slice(0, (height + 1) // 2) if row == 0 else slice(height // 2, height)
    cols = slice(0, (width + 1) // 2) if col == 0 else slice(width // 2, width)
    return rows, cols


def snr_db_to_ratio(snr_db: float) -> float:
    """Convert a signal-to-noise ratio in decibels to a linear power ratio: ``10 ** (dB / 10)``."""
    return 10.0 ** (snr_db / 10.0)


def snr_ratio_to_db(snr: float) -> float:
    """Convert a linear power ratio to decibels: ``10 * log10(snr)``."""
    if snr <= 0:
        raise ConfigError(f"an SNR power ratio must be positive to express in dB, got {snr}")
    return 10.0 * math.log10(snr)


def _pixel_variance(images: torch.Tensor) -> torch.Tensor:
    return images.flatten(1).var(dim=1, unbiased=False)


def embed_in_noise(
    images: torch.Tensor, snr: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add zero-mean Gaussian white noise to each image at signal-to-noise ratio ``snr``.

    SNR is a linear power ratio per image: the variance of the image's pixels (over all channels
    and positions) divided by the variance of the noise added to it (use :func:`snr_db_to_ratio`
    for decibels). The noise is drawn i.i.d. Gaussian from ``generator`` and then, per image,
    centred and scaled so that its empirical mean is exactly 0 and its variance exactly
    ``var(image) / snr``; the measured SNR (:func:`measured_snr`) therefore equals ``snr``.
    The result is not clipped to [0, 1] (clipping would change the SNR; networks normalise their
    input linearly). ``snr = inf`` returns a copy; an image with zero variance gets no noise.
    """
    if images.ndim < 2:
        raise ValueError(f"images must be a batch (N, ...), got shape {tuple(images.shape)}")
    snr = float(snr)
    if math.isnan(snr) or snr <= 0:
        raise ConfigError(
            f"snr must be a positive power ratio (var(image) / var(noise)), got {snr}; "
            "use snr_db_to_ratio() to convert from decibels"
        )
    if math.isinf(snr):
        return images.clone()
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")
    device = generator.device if generator is not None else images.device
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=device)
    flat = noise.flatten(1).to(images.device)
    flat = flat - flat.mean(dim=1, keepdim=True)
    flat = flat / flat.std(dim=1, unbiased=False, keepdim=True).clamp_min(1e-12)
    noise_std = (_pixel_variance(images) / snr).sqrt()
    noise = (flat * noise_std[:, None]).reshape(images.shape)
    return images + noise


def measured_snr(images: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Per-image SNR of ``noisy`` relative to the clean ``images``: var(images) / var(noise).

    The noise is ``noisy - images``. Returns a float tensor of shape (N,): ``inf`` where no noise
    was added to a non-blank image, ``nan`` for a blank (constant) image left unchanged.
    """
    if images.shape != noisy.shape:
        raise ValueError(
            f"images and noisy must have the same shape, got {tuple(images.shape)} "
            f"and {tuple(noisy.shape)}"
        )
    return _pixel_variance(images) / _pixel_variance(noisy - images)
