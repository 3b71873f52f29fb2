"""Category-detection test sets: positives contain the attended category, negatives never do.

A :class:`TaskSet` is what a binary detection task with attention runs on (Lindsay & Miller 2018,
defaults 75 positives + 75 negatives). Four image types:

- ``standard``: one image. Positive: an image of the target; negative: an image of a non-target
  category.
- ``merged``: two images of different categories overlaid (pixel mean). Positive: target +
  one non-target image; negative: two images of two different non-target categories.
- ``array``: 2×2 grid of four images of four distinct categories (a 2H × 2W image). Positive: the
  target in a uniformly random quadrant + three non-target images; negative: four non-target
  images.
- ``noise``: one image in Gaussian white noise at a given SNR (see
  :func:`bioattn.data.composites.embed_in_noise`). Positive/negative as for standard.

Non-target categories are drawn uniformly among the source's non-target categories that have
images (categories without images are left out), then an image of each drawn category is drawn
without replacement (an image repeats only once its category's images are used up). All
randomness comes from one ``torch.Generator`` seeded with ``seed``: the same arguments give
identical tensors.

Which images to use is the caller's decision: pass a test split for evaluation. The source's
``split`` is recorded on the task set so that downstream code can check it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from bioattn.data.composites import array_grid, embed_in_noise, merge
from bioattn.data.imageset import ImageSet, resolve_category
from bioattn.errors import ConfigError, DataError

IMAGE_TYPES: tuple[str, ...] = ("standard", "merged", "array", "noise")
"""The image types :func:`make_task_set` can build."""

# image type -> images (categories) per composite
#: Image types of task sets built elsewhere (``bioattn.experiments.orientation``): two gratings
#: in a 2×2 layout, ``contents`` holding the orientation index per quadrant (−1: empty).
BUILT_IMAGE_TYPES: tuple[str, ...] = ("gratings",)
_ITEMS: dict[str, int] = {"standard": 1, "merged": 2, "array": 4, "noise": 1, "gratings": 4}
# image type -> distinct non-target categories a negative needs
_NON_TARGETS_NEEDED: dict[str, int] = {"standard": 1, "merged": 2, "array": 4, "noise": 1}


#: Streams of :func:`task_seed`: test sets, gradient-value sets, noise gradient sets,
#: selection sets (training-split images on which β and layers are chosen), reference images of
#: recordings and per-image spatial cues each draw their own images.
TEST_STREAM = 0
GRADIENT_STREAM = 10_000
NOISE_GRADIENT_STREAM = 20_000
SELECTION_STREAM = 30_000
REFERENCE_STREAM = 500_009


def task_seed(seed: int, category_index: int, stream: int = TEST_STREAM) -> int:
    """The seed of category ``category_index``'s image set (its index among all categories)."""
    return stream + int(seed) * 7919 + int(category_index)


def cue_seed(seed: int, category_index: int) -> int:
    """The seed of the per-image spatial cues of category ``category_index``'s task set."""
    return int(seed) * 104_729 + int(category_index)


@dataclass(frozen=True, eq=False)
class TaskSet:
    """Images for one detection task, positives first then negatives.

    Attributes:
        images: float32 (N, C, H, W); (N, C, 2H, 2W) for arrays. Noise images are not clipped.
        is_target: bool (N,): True for positives (the first ``n_pos`` entries).
        contents: int64 (N, k): indices into ``categories`` of the images each stimulus is made
            of; k = 1 (standard, noise), 2 (merged; for positives column 0 is the target) or 4
            (array, in quadrant order top-left, top-right, bottom-left, bottom-right).
        target: index of the target category in ``categories``.
        categories: category names of the source.
        image_type: one of :data:`IMAGE_TYPES`.
        split: the source's split ("train", "test", or a folder name).
        snr: the SNR (linear power ratio) for noise images, else None.
        seed: the seed the set was drawn with.
        cued_quadrant: for spatial tasks, the quadrant (0–3) that spatial attention attends.
    """

    images: torch.Tensor
    is_target: torch.Tensor
    contents: torch.Tensor
    target: int
    categories: tuple[str, ...]
    image_type: str
    split: str
    snr: float | None = None
    seed: int | None = None
    cued_quadrant: int | None = None

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.is_target.shape != (n,) or self.is_target.dtype != torch.bool:
            raise ValueError(
                f"is_target must be bool of shape ({n},), got {self.is_target.dtype} "
                f"{tuple(self.is_target.shape)}"
            )
        if self.image_type not in _ITEMS:
            raise ValueError(f"unknown image type {self.image_type!r}; valid: {', '.join(_ITEMS)}")
        k = _ITEMS[self.image_type]
        if self.contents.shape != (n, k):
            raise ValueError(
                f"contents must have shape ({n}, {k}) for {self.image_type} images, "
                f"got {tuple(self.contents.shape)}"
            )
        if not 0 <= self.target < len(self.categories):
            raise ValueError(
                f"target {self.target} is not an index into {len(self.categories)} categories"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_pos(self) -> int:
        """Number of positives (images containing the target)."""
        return int(self.is_target.sum())

    @property
    def n_neg(self) -> int:
        """Number of negatives (images not containing the target)."""
        return len(self) - self.n_pos

    @property
    def target_name(self) -> str:
        """Name of the target category."""
        return self.categories[self.target]

    @property
    def target_quadrant(self) -> torch.Tensor:
        """Array images only: int64 (N,) quadrant index of the target, -1 where it is absent."""
        if self.image_type != "array":
            raise ConfigError(
                f"target_quadrant is defined for array images only, this set is {self.image_type}"
            )
        hits = self.contents == self.target
        return torch.where(hits.any(dim=1), hits.to(torch.int64).argmax(dim=1), -1)


def _check_count(name: str, value: int) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}") from None
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value


@dataclass(frozen=True)
class _Plan:
    target: int
    pool: torch.Tensor  # non-target categories that have images, int64


def _plan(
    source: ImageSet,
    target: str | int,
    image_type: str,
    n_pos: int,
    n_neg: int,
    snr: float | None,
) -> _Plan:
    """Validate every argument before any sampling; returns what sampling needs."""
    if image_type not in IMAGE_TYPES:
        raise ConfigError(
            f"unknown image type {image_type!r}; valid image types are {', '.join(IMAGE_TYPES)}"
        )
    _check_count("n_pos", n_pos)
    _check_count("n_neg", n_neg)
    if image_type == "noise":
        if snr is None:
            raise ConfigError(
                "noise images need snr= (a linear power ratio var(image) / var(noise), "
                "e.g. 1.0; see snr_db_to_ratio for decibels)"
            )
        try:
            value = float(snr)
        except (TypeError, ValueError):
            raise ConfigError(f"snr must be a positive number, got {snr!r}") from None
        if math.isnan(value) or value <= 0:
            raise ConfigError(f"snr must be a positive power ratio, got {snr}")
    if not isinstance(target, str):
        try:
            target = operator.index(target)
        except TypeError:
            raise ConfigError(f"target must be a category name or index, got {target!r}") from None
    target_index = resolve_category(target, source.categories)

    n_categories = len(source.categories)
    labels = source.labels
    if len(source) and (int(labels.min()) < 0 or int(labels.max()) >= n_categories):
        raise DataError(
            f"source set ({source.split}) has labels outside 0..{n_categories - 1}, "
            f"its {n_categories} categories"
        )
    counts = torch.bincount(labels.to(torch.int64), minlength=n_categories)
    where = f"the source set (split {source.split!r})"
    if counts[target_index] == 0:
        raise DataError(
            f"target category {source.categories[target_index]!r} has no images in {where}; "
            "choose a category that has images or load a set that includes it"
        )
    pool = torch.tensor(
        [c for c in range(n_categories) if c != target_index and counts[c] > 0], dtype=torch.int64
    )
    needed = _NON_TARGETS_NEEDED[image_type]
    if len(pool) < needed:
        have = ", ".join(source.categories[c] for c in pool.tolist()) or "none"
        raise DataError(
            f"{image_type} negatives need {needed} distinct non-target categories with images "
            f"(so at least {needed + 1} categories in all), but {where} has {len(pool)} besides "
            f"{source.categories[target_index]!r} ({have})"
        )
    return _Plan(target=target_index, pool=pool)


def _distinct_rows(
    pool: torch.Tensor, rows: int, k: int, generator: torch.Generator
) -> torch.Tensor:
    """(rows, k) categories from ``pool``, distinct within each row, uniformly at random."""
    order = torch.rand(rows, len(pool), generator=generator).argsort(dim=1)[:, :k]
    return pool[order]


def _draw_contents(
    plan: _Plan, image_type: str, n_pos: int, n_neg: int, generator: torch.Generator
) -> torch.Tensor:
    target, pool = plan.target, plan.pool
    if image_type in ("standard", "noise"):
        pos = torch.full((n_pos, 1), target, dtype=torch.int64)
        neg = _distinct_rows(pool, n_neg, 1, generator)
    elif image_type == "merged":
        pos = torch.cat(
            [
                torch.full((n_pos, 1), target, dtype=torch.int64),
                _distinct_rows(pool, n_pos, 1, generator),
            ],
            dim=1,
        )
        neg = _distinct_rows(pool, n_neg, 2, generator)
    else:  # array
        quadrant = torch.randint(4, (n_pos,), generator=generator)
        is_target = torch.arange(4)[None, :] == quadrant[:, None]
        pos = torch.empty((n_pos, 4), dtype=torch.int64)
        pos[is_target] = target
        pos[~is_target] = _distinct_rows(pool, n_pos, 3, generator).reshape(-1)
        neg = _distinct_rows(pool, n_neg, 4, generator)
    return torch.cat([pos, neg], dim=0)


def _draw_images(
    labels: torch.Tensor, contents: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Source indices for every slot in ``contents``, without replacement within each category."""
    flat = contents.reshape(-1)
    indices = torch.empty_like(flat)
    labels = labels.to(torch.int64).cpu()
    for category in torch.unique(flat).tolist():
        slots = (flat == category).nonzero().squeeze(1)
        members = (labels == category).nonzero().squeeze(1)
        rounds = -(-len(slots) // len(members))
        order = torch.cat(
            [torch.randperm(len(members), generator=generator) for _ in range(rounds)]
        )
        indices[slots] = members[order[: len(slots)]]
    return indices.reshape(contents.shape)


def make_task_set(
    source: ImageSet,
    target: str | int,
    image_type: str = "merged",
    n_pos: int = 75,
    n_neg: int = 75,
    seed: int = 0,
    snr: float | None = None,
) -> TaskSet:
    """Draw a detection test set for ``target`` from ``source``.

    Args:
        source: the images to draw from; use a test split for evaluation (its ``split`` is
            recorded on the result).
        target: the attended category, by name (case-insensitive) or index.
        image_type: "standard", "merged", "array" or "noise" (see the module docstring).
        n_pos: number of positives (contain the target); they come first.
        n_neg: number of negatives (never contain the target anywhere); they come last.
        seed: seed of the ``torch.Generator`` used for every random choice.
        snr: linear power ratio var(image) / var(noise); required for "noise" and ignored (not
            recorded) for the other image types, so one sweep setting can serve every type.

    Raises :class:`CategoryError` for an unknown target, :class:`ConfigError` for an unknown
    image type, counts below 1, or a missing or non-positive ``snr`` for noise, and
    :class:`DataError` when the source lacks images of the target or enough non-target categories
    (merged needs 2, array 4 distinct non-target categories with images). All checks run before
    any sampling.
    """
    plan = _plan(source, target, image_type, n_pos, n_neg, snr)
    return _build(source, plan, image_type, int(n_pos), int(n_neg), seed, snr)


def _build(
    source: ImageSet,
    plan: _Plan,
    image_type: str,
    n_pos: int,
    n_neg: int,
    seed: int,
    snr: float | None,
) -> TaskSet:
    generator = torch.Generator().manual_seed(int(seed))
    contents = _draw_contents(plan, image_type, n_pos, n_neg, generator)
    indices = _draw_images(source.labels, contents, generator)
    n, k = contents.shape
    tiles = source.images[indices.reshape(-1).to(source.images.device)]
    tiles = tiles.reshape(n, k, *source.images.shape[1:])
    if image_type == "standard":
        images = tiles[:, 0].clone()
    elif image_type == "noise":
        images = embed_in_noise(tiles[:, 0], float(snr), generator)  # type: ignore[arg-type]
    elif image_type == "merged":
        images = merge(tiles[:, 0], tiles[:, 1])
    else:
        images = array_grid(tiles)
    is_target = torch.zeros(n, dtype=torch.bool)
    is_target[:n_pos] = True
    return TaskSet(
        images=images,
        is_target=is_target,
        contents=contents,
        target=plan.target,
        categories=tuple(source.categories),
        image_type=image_type,
        split=source.split,
        snr=float(snr) if image_type == "noise" else None,  # type: ignore[arg-type]
        seed=int(seed),
    )


def make_task_sets(
    source: ImageSet,
    targets: Iterable[str | int] | None = None,
    image_type: str = "merged",
    n_pos: int = 75,
    n_neg: int = 75,
    seed: int = 0,
    snr: float | None = None,
) -> dict[str, TaskSet]:
    """Task sets for several targets (default: every category), keyed by category name.

    Each entry equals ``make_task_set(source, target, image_type, n_pos, n_neg, seed, snr)``
    (same seed for every target). Every target is validated before any set is drawn.
    """
    targets = list(source.categories) if targets is None else list(targets)
    if not targets:
        raise ConfigError("targets is empty; give at least one category (or None for all)")
    plans = [_plan(source, t, image_type, n_pos, n_neg, snr) for t in targets]
    result: dict[str, TaskSet] = {}
    for plan in plans:
        name = source.categories[plan.target]
        if name not in result:
            result[name] = _build(source, plan, image_type, int(n_pos), int(n_neg), seed, snr)
    return result
