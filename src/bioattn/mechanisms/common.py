"""What every attention mechanism shares: category-cued image sets, the cued detector logit
with gradients, and evaluation on the sweep's test sets.

A *cued* detection task asks "is category c in this image?" for a category given with each
image. The mechanisms here are trained on a pool of such questions for every category (drawn
from the training split, positives and negatives balanced per category) and evaluated, like
FSGM, on :func:`bioattn.experiments.sweep.build_test_sets` test sets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from bioattn.analysis.figures import save_figure
from bioattn.analysis.sdt import detection_metrics
from bioattn.attention.gains import Modulation, modulate
from bioattn.data.imageset import ImageSet, resolve_category
from bioattn.data.tasks import TaskSet, make_task_set
from bioattn.errors import ConfigError, DataError
from bioattn.mechanisms.training import (
    Budget,
    RunOptions,
    TrainingLog,
    step_generator,
    train_loop,
)
from bioattn.models.detectors import Detectors
from bioattn.models.network import LayerInfo, Network

#: Offset of the seeds of training pools (test sets use ``seed * 7919 + k``, gradient values
#: ``10_000 + …``), so pools never coincide with other sets even on the same split.
POOL_SEED = 50_000
#: Base seed of :class:`FreshTasks` streams (apart from pools and test sets).
FRESH_SEED = 70_000_000

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class CuedSet:
    """Images, each with a cued category (index into ``categories``) and whether it is present."""

    images: torch.Tensor
    category: torch.Tensor
    is_target: torch.Tensor
    categories: tuple[str, ...]
    image_type: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor) -> CuedSet:
        """The entries at ``index``."""
        return CuedSet(
            self.images[index],
            self.category[index],
            self.is_target[index],
            self.categories,
            self.image_type,
        )

    def sample(self, batch_size: int, generator: torch.Generator) -> CuedSet:
        """A minibatch drawn uniformly without replacement (the whole set if smaller)."""
        order = torch.randperm(len(self), generator=generator)[:batch_size]
        return self.subset(order)


def cued_set(tasks: Sequence[TaskSet], categories: Sequence[str]) -> CuedSet:
    """Concatenate task sets (each cued with its target) into one :class:`CuedSet`.

    ``categories`` are the detectors' categories; the cue indexes them.
    """
    if not tasks:
        raise DataError("a cued set needs at least one task set")
    types = {task.image_type for task in tasks}
    if len(types) != 1:
        raise DataError(f"task sets of one cued set must share an image type, got {sorted(types)}")
    cues = [
        torch.full((len(t),), resolve_category(t.target_name, categories), dtype=torch.int64)
        for t in tasks
    ]
    return CuedSet(
        torch.cat([t.images for t in tasks]),
        torch.cat(cues),
        torch.cat([t.is_target for t in tasks]),
        tuple(categories),
        types.pop(),
    )


@dataclass(frozen=True)
class FreshTasks:
    """A stream of new cued task sets from training images: step ``t`` draws ``per_class``
    positives and as many negatives for category ``categories[t % K]`` (seeded by the run's
    seed and ``t``), so a model never sees the same training stimulus twice.

    For models that learn from pixels (RAM), a fixed pool of a few hundred composites per
    category is memorised rather than generalised from; a stream removes that.
    """

    images: ImageSet
    categories: tuple[str, ...]
    image_type: str
    detector_categories: tuple[str, ...]
    per_class: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.images.split != "train":
            raise DataError(
                f"fresh training tasks come from training images only, got split "
                f"{self.images.split!r}"
            )
        if self.per_class < 1 or not self.categories:
            raise ConfigError(
                f"fresh tasks need categories and per_class >= 1, got {self.per_class}"
            )

    def batch(self, step: int) -> CuedSet:
        """The cued set of training step ``step``."""
        category = self.categories[step % len(self.categories)]
        task = make_task_set(
            self.images,
            category,
            self.image_type,
            n_pos=self.per_class,
            n_neg=self.per_class,
            seed=FRESH_SEED + 1_000_003 * int(self.seed) + int(step),
        )
        return cued_set([task], self.detector_categories)

    def describe(self) -> dict[str, object]:
        """Settings that define the stream (for checkpoint keys)."""
        return {
            "fresh": True,
            "categories": list(self.categories),
            "image_type": self.image_type,
            "per_class": self.per_class,
            "seed": self.seed,
        }


def holdout_split(images: ImageSet, fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Split ``images`` into two disjoint parts, ``(fit, held_out)``, with ``fraction`` of each
    category's images (at least one) held out, chosen by a permutation seeded with ``seed``.

    Task sets drawn from the two parts share no image (not even as a merged image's second
    object or an array's distractor), which pools drawn from the whole split do not promise.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"a held-out fraction must lie strictly between 0 and 1, got {fraction}")
    generator = torch.Generator().manual_seed(POOL_SEED + 104_729 * int(seed))
    order = torch.randperm(len(images), generator=generator)
    held = torch.zeros(len(images), dtype=torch.bool)
    for k in range(len(images.categories)):
        members = order[images.labels[order] == k]
        if len(members) < 2:
            raise DataError(
                f"category {images.categories[k]!r} has {len(members)} image(s); a held-out split "
                "needs at least 2 per category"
            )
        count = min(max(1, round(fraction * len(members))), len(members) - 1)
        held[members[:count]] = True
    fit = torch.nonzero(~held).squeeze(1)
    return images.subset(fit), images.subset(torch.nonzero(held).squeeze(1))


def training_pool(
    train: ImageSet,
    categories: Sequence[str],
    image_type: str,
    per_class: int,
    seed: int = 0,
) -> dict[str, TaskSet]:
    """Per-category task sets (``per_class`` positives and negatives) from training images.

    The seed of category k is ``POOL_SEED + seed · 7919 + k`` (k its index in the source), so
    a pool for some categories holds the same images as a pool for all of them.
    """
    if train.split != "train":
        raise DataError(
            f"mechanisms are trained on training images only, got split {train.split!r}"
        )
    if per_class < 1:
        raise ConfigError(f"a training pool needs per_class >= 1, got {per_class}")
    return {
        name: make_task_set(
            train,
            name,
            image_type,
            n_pos=per_class,
            n_neg=per_class,
            seed=POOL_SEED + seed * 7919 + train.category_index(name),
        )
        for name in categories
    }


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Context in which ``module``'s parameters do not require gradients (restored on exit)."""
    flags = [p.requires_grad for p in module.parameters()]
    try:
        for p in module.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def network_features(
    network: Network,
    images: torch.Tensor,
    modulations: Mapping[LayerInfo | str | int, Modulation] | None = None,
) -> torch.Tensor:
    """Readout features of [0, 1] ``images`` under ``modulations``, keeping the autograd graph."""
    with modulate(network, modulations or {}), network.capture_readout() as store:
        network(network.preprocess(images))
        return store.pop()


def cued_logits(
    network: Network,
    detectors: Detectors,
    images: torch.Tensor,
    category: torch.Tensor,
    modulations: Mapping[LayerInfo | str | int, Modulation] | None = None,
) -> torch.Tensor:
    """Logit (N,) of each image's cued detector, differentiable (wrap in no_grad to evaluate)."""
    logits = detectors.logits(network_features(network, images, modulations))
    return logits.gather(1, category.view(-1, 1)).squeeze(1)


def detection_loss(logits: torch.Tensor, is_target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of "present" logits against the truth (mean over the batch)."""
    return F.binary_cross_entropy_with_logits(logits, is_target.to(logits.dtype))


def per_category_performance(
    logits: torch.Tensor, is_target: torch.Tensor, category: torch.Tensor, n_categories: int
) -> torch.Tensor:
    """Performance (TP + TN) / 2 per cued category (K,); NaN for a category without both kinds."""
    present = (logits > 0).to(torch.float64)
    pos = is_target.to(torch.float64)
    cat = category.to(torch.int64)

    def per(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_categories, dtype=torch.float64).index_add_(0, cat, values)

    n_pos, n_neg = per(pos), per(1.0 - pos)
    tp = per(present * pos) / n_pos
    tn = per((1.0 - present) * (1.0 - pos)) / n_neg
    return (tp + tn) / 2.0


def metric_rows(
    logits_by_category: Mapping[str, torch.Tensor],
    tasks: Mapping[str, TaskSet],
    **columns: object,
) -> list[dict[str, object]]:
    """One table row per category: ``columns`` plus :func:`detection_metrics` of its logits."""
    return [
        {**columns, "category": name, **detection_metrics(logits, tasks[name].is_target)}
        for name, logits in logits_by_category.items()
    ]


def batched(n: int, batch_size: int) -> Iterator[slice]:
    """Slices covering ``range(n)`` in blocks of ``batch_size``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def evaluate_in_batches(
    fn: Callable[[torch.Tensor, torch.Tensor], T],
    images: torch.Tensor,
    category: torch.Tensor,
    batch_size: int = 256,
) -> list[T]:
    """``fn(images, category)`` on consecutive batches, without gradients; the results in order."""
    with torch.no_grad():
        return [fn(images[part], category[part]) for part in batched(len(images), batch_size)]


def train_with_frozen_network(
    network: Network,
    modules: Mapping[str, nn.Module],
    logits_fn: Callable[[CuedSet], torch.Tensor],
    budget: Budget,
    data: CuedSet,
    seed: int,
    settings: Mapping[str, object],
    options: RunOptions,
) -> TrainingLog:
    """Train ``modules`` by backprop (Adam) on the cued detection cross-entropy of
    ``logits_fn(minibatch)`` over ``data``, on top of a fixed ``network`` (its parameters get no
    gradients meanwhile), resumably through :func:`~bioattn.mechanisms.training.train_loop`."""
    parameters = [p for module in modules.values() for p in module.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=budget.learning_rate)

    def step(index: int) -> dict[str, float]:
        batch = data.sample(budget.batch_size, step_generator(seed, index))
        loss = detection_loss(logits_fn(batch), batch.is_target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item()}

    full = {
        **settings,
        "model": network.name,
        "image_type": data.image_type,
        "n": len(data),
        "budget": {"batch_size": budget.batch_size, "learning_rate": budget.learning_rate},
        "seed": seed,
    }
    desc = f"{settings['mechanism']} ({data.image_type})"
    with frozen(network.module):
        return train_loop(
            modules,
            optimizer,
            step,
            budget.steps,
            full,
            desc,
            options,
            data=(data.images, data.category, data.is_target),
        )


def plot_image_row(
    images: torch.Tensor,
    stem: str | Path,
    title: str,
    titles: Sequence[str] | None = None,
    draw: Callable[[Any, int], None] | None = None,
) -> list[Path]:
    """One row of grey images, each decorated by ``draw(axes, index)``; saved as PNG and SVG."""
    n = images.shape[0]
    fig = Figure(figsize=(2.4 * n, 2.6))
    for i in range(n):
        ax = fig.add_subplot(1, n, i + 1)
        ax.imshow(images[i].mean(0).numpy(), cmap="gray", vmin=0, vmax=1)
        if draw is not None:
            draw(ax, i)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles:
            ax.set_title(titles[i], fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, stem)
