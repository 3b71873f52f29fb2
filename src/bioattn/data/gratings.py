"""Sinusoidal gratings and two-grating quadrant images for orientation and spatial tasks.

Orientation convention: a grating of orientation θ has stripes at angle θ counter-clockwise
from horizontal (0° = horizontal stripes, 90° = vertical stripes); its luminance varies along
the direction θ + 90°. The grid of the original work is 0°–160° in 20° steps (9 orientations).

Pixel values lie in [0, 1]: ``0.5 + 0.5 · contrast · sin(2π f · d + phase)``, with ``d`` the
signed distance along the wave direction and ``f`` in cycles per pixel (below Nyquist, 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bioattn.data.composites import QUADRANTS, quadrant_slices
from bioattn.data.imageset import ImageSet
from bioattn.errors import CategoryError, ConfigError

#: The orientation grid of Lindsay & Miller (2018), in degrees.
ORIENTATIONS: tuple[int, ...] = tuple(range(0, 180, 20))
#: Grey level of empty quadrants and of zero-contrast gratings.
BACKGROUND = 0.5


def orientation_name(degrees: float) -> str:
    """Category name of an orientation, e.g. ``"40°"``."""
    return f"{degrees:g}°"


ORIENTATION_NAMES: tuple[str, ...] = tuple(orientation_name(o) for o in ORIENTATIONS)


def resolve_orientation(value: str | int | float, grid: Sequence[int] = ORIENTATIONS) -> int:
    """Index of an orientation on ``grid`` given in degrees (``40``, ``"40"``, ``"40°"``)."""
    text = str(value).strip().rstrip("°").removesuffix("deg")
    try:
        degrees = float(text)
    except ValueError:
        raise CategoryError(
            f"orientation {value!r} is not a number of degrees; valid orientations: "
            + ", ".join(orientation_name(o) for o in grid)
        ) from None
    for index, candidate in enumerate(grid):
        if math.isclose(degrees % 180.0, candidate % 180.0, abs_tol=1e-9):
            return index
    raise CategoryError(
        f"orientation {value!r} is not on the grid; valid orientations: "
        + ", ".join(orientation_name(o) for o in grid)
    )


@dataclass(frozen=True)
class GratingSpec:
    """How gratings look: size in pixels, spatial frequency, contrast and frequency jitter.

    ``cycles_per_pixel`` must be below 0.5 (Nyquist). Each grating gets a random phase; with
    ``frequency_jitter`` = j its frequency is drawn uniformly from f·(1 ± j), so detectors cannot
    rely on one exact frequency.
    """

    size: int = 28
    cycles_per_pixel: float = 0.12
    contrast: float = 1.0
    frequency_jitter: float = 0.15

    def __post_init__(self) -> None:
        if self.size < 4:
            raise ConfigError(f"grating size must be at least 4 pixels, got {self.size}")
        highest = self.cycles_per_pixel * (1 + self.frequency_jitter)
        if self.cycles_per_pixel <= 0 or highest >= 0.5:
            raise ConfigError(
                f"spatial frequency {self.cycles_per_pixel} cycles/pixel (up to {highest:.3g} "
                "with jitter) must be above 0 and below the Nyquist limit of 0.5 cycles/pixel"
            )
        if not 0 <= self.contrast <= 1:
            raise ConfigError(f"contrast must lie in [0, 1], got {self.contrast}")
        if not 0 <= self.frequency_jitter < 1:
            raise ConfigError(f"frequency_jitter must lie in [0, 1), got {self.frequency_jitter}")


def gratings(
    size: int,
    orientations: torch.Tensor,
    cycles_per_pixel: torch.Tensor,
    phases: torch.Tensor,
    contrast: float = 1.0,
) -> torch.Tensor:
    """A batch of (N, 1, size, size) gratings with values in [0, 1].

    ``orientations`` (degrees), ``cycles_per_pixel`` and ``phases`` (radians) are (N,) tensors.
    """
    if bool((cycles_per_pixel >= 0.5).any()) or bool((cycles_per_pixel <= 0).any()):
        raise ConfigError(
            f"spatial frequencies must lie in (0, 0.5) cycles/pixel (Nyquist), got "
            f"{cycles_per_pixel.min().item():.3g}–{cycles_per_pixel.max().item():.3g}"
        )
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    x, y = cols, -rows  # y points up, so angles are counter-clockwise on screen
    wave = torch.deg2rad(orientations.to(torch.float64) + 90.0).view(-1, 1, 1)
    distance = x * torch.cos(wave) + y * torch.sin(wave)
    frequency = cycles_per_pixel.to(torch.float64).view(-1, 1, 1)
    phase = phases.to(torch.float64).view(-1, 1, 1)
    values = BACKGROUND + 0.5 * contrast * torch.sin(2 * math.pi * frequency * distance + phase)
    return values.to(torch.float32).unsqueeze(1)


def grating(
    size: int,
    orientation: float,
    cycles_per_pixel: float,
    phase: float = 0.0,
    contrast: float = 1.0,
) -> torch.Tensor:
    """One (1, size, size) grating with values in [0, 1]."""
    one = torch.ones(1, dtype=torch.float64)
    return gratings(size, one * orientation, one * cycles_per_pixel, one * phase, contrast)[0]


def _random_gratings(
    orientations: torch.Tensor, spec: GratingSpec, generator: torch.Generator
) -> torch.Tensor:
    n = orientations.shape[0]
    phases = torch.rand(n, generator=generator, dtype=torch.float64) * 2 * math.pi
    jitter = (
        torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1
    ) * spec.frequency_jitter
    degrees = torch.tensor(ORIENTATIONS, dtype=torch.float64)[orientations]
    return gratings(spec.size, degrees, spec.cycles_per_pixel * (1 + jitter), phases, spec.contrast)


def grating_image_set(
    n_per_orientation: int,
    spec: GratingSpec = GratingSpec(),
    seed: int = 0,
    split: str = "train",
    in_quadrant: bool = False,
) -> ImageSet:
    """Single gratings, ``n_per_orientation`` of each grid orientation.

    Full-field ``spec.size`` images by default; with ``in_quadrant`` each grating fills one
    random quadrant of a grey 2×2 layout (the geometry of the two-grating task images).
    Categories are the orientation names (``"0°"`` …). Use different seeds for the training
    and test splits; ``split`` is recorded so test sets can refuse training images.
    """
    if n_per_orientation < 1:
        raise ConfigError(f"n_per_orientation must be at least 1, got {n_per_orientation}")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(ORIENTATIONS)).repeat_interleave(n_per_orientation)
    if in_quadrant:
        table = torch.full((labels.shape[0], len(QUADRANTS)), -1, dtype=torch.int64)
        quadrant = torch.randint(len(QUADRANTS), (labels.shape[0],), generator=generator)
        table[torch.arange(labels.shape[0]), quadrant] = labels
        images = grating_pairs(table, spec, generator).images
    else:
        images = _random_gratings(labels, spec, generator)
    return ImageSet(images, labels, ORIENTATION_NAMES, split)


@dataclass(frozen=True)
class GratingPairs:
    """Two-grating images: a 2×2 layout of ``spec.size`` tiles with two quadrants filled.

    ``orientations`` is int64 (N, 4): the orientation index in each quadrant (order of
    :data:`~bioattn.data.composites.QUADRANTS`), −1 where the quadrant is empty (grey).
    """

    images: torch.Tensor
    orientations: torch.Tensor


def grating_pairs(
    quadrant_orientations: torch.Tensor, spec: GratingSpec, generator: torch.Generator
) -> GratingPairs:
    """Compose images from an (N, 4) table of orientation indices per quadrant (−1: empty)."""
    n = quadrant_orientations.shape[0]
    side = 2 * spec.size
    images = torch.full((n, 1, side, side), BACKGROUND)
    for quadrant in range(len(QUADRANTS)):
        filled = torch.nonzero(quadrant_orientations[:, quadrant] >= 0).flatten()
        if filled.numel() == 0:
            continue
        tiles = _random_gratings(quadrant_orientations[filled, quadrant], spec, generator)
        rows, cols = quadrant_slices(side, side, quadrant)
        images[filled, :, rows, cols] = tiles
    return GratingPairs(images, quadrant_orientations.clone())
