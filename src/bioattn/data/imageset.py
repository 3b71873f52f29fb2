"""The in-memory stimulus set that every loader returns and every experiment consumes."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bioattn.errors import CategoryError, DataError


@dataclass(frozen=True)
class ImageSet:
    """Images with integer category labels.

    ``images`` are float32 of shape (N, C, H, W) with pixel values in [0, 1] (not normalised:
    each model normalises its own input). ``labels[i]`` indexes ``categories``. ``split`` records
    where the images came from ("train", "test", or a folder name) so that test sets can refuse
    training images.
    """

    images: torch.Tensor
    labels: torch.Tensor
    categories: tuple[str, ...]
    split: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor | Sequence[int]) -> ImageSet:
        """The images at ``index`` (same categories and split)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index], self.categories, self.split)

    def category_index(self, category: str | int) -> int:
        """Resolve a category name (or index) to its index; unknown names list the valid ones."""
        return resolve_category(category, self.categories)


def resolve_categories(names: Sequence[str | int], categories: Sequence[str]) -> list[str]:
    """Canonical names of several categories, in the order given; duplicates (one category
    named twice, or by name and index) are merged with a warning, and none is an error."""
    resolved = [categories[resolve_category(name, categories)] for name in names]
    if not resolved:
        raise CategoryError(f"no categories given; name at least one of: {', '.join(categories)}")
    unique = list(dict.fromkeys(resolved))
    if len(unique) < len(resolved):
        warnings.warn(
            f"categories {list(names)} name some category more than once; using {unique}",
            stacklevel=2,
        )
    return unique


def resolve_category(category: str | int, categories: Sequence[str]) -> int:
    """Index of ``category`` in ``categories``; accepts a name, an index, or a numeric string."""
    if isinstance(category, int) or (isinstance(category, str) and category.isdigit()):
        index = int(category)
        if 0 <= index < len(categories):
            return index
        raise CategoryError(
            f"category index {index} is out of range: valid indices are 0..{len(categories) - 1}"
        )
    lowered = [c.lower() for c in categories]
    if category.lower() in lowered:
        return lowered.index(category.lower())
    raise CategoryError(
        f"unknown category {category!r}; valid categories are: {', '.join(categories)}"
    )


def balanced_subset(images: ImageSet, per_category: int, seed: int = 0) -> ImageSet:
    """``per_category`` images of every category (fewer where a category has fewer), seeded."""
    if per_category < 1:
        raise DataError(f"need at least one image per category, got {per_category}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for k in range(len(images.categories)):
        index = torch.nonzero(images.labels == k).view(-1)
        order = index[torch.randperm(index.numel(), generator=generator)]
        chosen.append(order[:per_category])
    if not chosen or sum(c.numel() for c in chosen) == 0:
        raise DataError("the image set is empty; there is nothing to choose from")
    return images.subset(torch.cat(chosen))
