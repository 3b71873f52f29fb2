"""Hard spatial attention: the recurrent attention model (RAM, Mnih et al. 2014).

A recurrent core looks at an image through a few multi-resolution glimpses
(:func:`~bioattn.mechanisms.glimpse.glimpse_sensor`). At each step the *location network*
proposes the next glimpse centre ``μ = tanh(W h)`` from the core state and samples
``l ~ N(μ, σ²)`` (σ fixed); the *glimpse network* encodes what the sensor sees there together
with where (``g = relu(W [relu(W_ρ ρ), relu(W_l l)])``); a GRU core integrates it. After the last
glimpse the action network classifies (10-way on cluttered images) or, cued with a category,
says whether that category is present (a logit, as the FSGM detectors do). The cue also sets the
initial core state, so where to look can depend on what is looked for.

Training (hybrid loss of the paper): the task loss (cross-entropy) trains the glimpse network,
core and action network by backprop; the location network is trained by REINFORCE with reward
1 for a correct answer and 0 otherwise, using a learned baseline ``b_t`` (regressed on the
reward) to reduce variance: ``−Σ_t log π(l_t) · (R − b_t)``. The location and baseline networks
read a detached core state, so REINFORCE noise never reaches the core. Evaluation uses the mean
locations (no sampling).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle
from torch import nn

from bioattn.data.imageset import ImageSet
from bioattn.errors import ConfigError
from bioattn.mechanisms.common import (
    CuedSet,
    FreshTasks,
    batched,
    detection_loss,
    plot_image_row,
)
from bioattn.mechanisms.glimpse import glimpse_sensor, location_to_pixels, patch_sizes
from bioattn.mechanisms.training import (
    Budget,
    RunOptions,
    TrainingLog,
    step_generator,
    train_loop,
)


@dataclass(frozen=True)
class RAMConfig:
    """Architecture of a recurrent attention model (defaults: the paper's 60×60 settings)."""

    patch: int = 8
    n_scales: int = 3
    n_glimpses: int = 6
    glimpse_hidden: int = 128
    hidden: int = 256
    location_std: float = 0.15

    def __post_init__(self) -> None:
        patch_sizes(self.patch, self.n_scales)
        if min(self.n_glimpses, self.glimpse_hidden, self.hidden) < 1:
            raise ConfigError(f"RAM sizes must be >= 1, got {self}")
        if not self.location_std > 0:
            raise ConfigError(f"location_std must be > 0, got {self.location_std}")


@dataclass
class RAMOutput:
    """One pass: logits (N, n_outputs), locations (N, T, 2), log π(l_t) and baselines (N, T)."""

    logits: torch.Tensor
    locations: torch.Tensor
    log_probs: torch.Tensor
    baselines: torch.Tensor


class RecurrentAttentionModel(nn.Module):
    """RAM with glimpse, location, baseline, core and action networks; optionally category-cued."""

    def __init__(
        self, in_channels: int, n_outputs: int, n_cues: int = 0, config: RAMConfig = RAMConfig()
    ) -> None:
        super().__init__()
        self.config = config
        c = config
        self.what = nn.Linear(in_channels * c.n_scales * c.patch * c.patch, c.glimpse_hidden)
        self.where = nn.Linear(2, c.glimpse_hidden)
        self.glimpse = nn.Linear(2 * c.glimpse_hidden, c.hidden)
        self.core = nn.GRUCell(c.hidden, c.hidden)
        self.locator = nn.Linear(c.hidden, 2)
        self.baseline = nn.Linear(c.hidden, 1)
        self.action = nn.Linear(c.hidden, n_outputs)
        self.cue = nn.Embedding(n_cues, c.hidden) if n_cues else None

    def forward(
        self,
        images: torch.Tensor,
        cue: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> RAMOutput:
        """Run the glimpses; with a ``generator`` locations are sampled, else the means are used."""
        c = self.config
        n = images.shape[0]
        if (self.cue is None) != (cue is None):
            raise ConfigError("a cued RAM needs a cue per image; an uncued one takes none")
        h = images.new_zeros(n, c.hidden) if self.cue is None else torch.tanh(self.cue(cue))
        locations, log_probs, baselines = [], [], []
        for _ in range(c.n_glimpses):
            mean = torch.tanh(self.locator(h.detach()))
            if generator is None:
                location = mean.detach()
            else:
                noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
                noise = noise.to(mean.device)  # the generator lives on the CPU
                location = (mean + c.location_std * noise).clamp(-1.0, 1.0).detach()
            log_probs.append(location_log_prob(mean, location, c.location_std))
            baselines.append(self.baseline(h.detach()).squeeze(1))
            seen = glimpse_sensor(images, location, c.patch, c.n_scales).flatten(1)
            g = F.relu(
                self.glimpse(
                    torch.cat([F.relu(self.what(seen)), F.relu(self.where(location))], dim=1)
                )
            )
            h = self.core(g, h)
            locations.append(location)
        return RAMOutput(
            self.action(h),
            torch.stack(locations, 1),
            torch.stack(log_probs, 1),
            torch.stack(baselines, 1),
        )


def location_log_prob(mean: torch.Tensor, location: torch.Tensor, std: float) -> torch.Tensor:
    """log N(location; mean, std²) summed over (row, col): (N,), differentiable in ``mean``.

    Sampled locations are clamped to the image ([−1, 1]) but scored with the unclamped density,
    as in Mnih et al.'s implementation; near the border this slightly biases the gradient.
    """
    return torch.distributions.Normal(mean, std).log_prob(location).sum(-1)


def reinforce_loss(
    log_probs: torch.Tensor, rewards: torch.Tensor, baselines: torch.Tensor
) -> torch.Tensor:
    """REINFORCE with a baseline: ``−mean_n Σ_t log π(l_t) · (R − b_t)`` (advantage detached).

    Descending it raises the probability of actions that earned more reward than expected.
    """
    advantage = (rewards.view(-1, 1) - baselines).detach()
    return -(log_probs * advantage).sum(1).mean()


def ram_loss(
    output: RAMOutput, task_loss: torch.Tensor, rewards: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Hybrid loss: task loss + REINFORCE (with baseline) + baseline regression on the reward."""
    reinforce = reinforce_loss(output.log_probs, rewards, output.baselines)
    baseline = F.mse_loss(output.baselines, rewards.view(-1, 1).expand_as(output.baselines))
    total = task_loss + reinforce + baseline
    return total, {"loss": task_loss.item(), "reward": rewards.mean().item()}


def _cued_pass(
    model: RecurrentAttentionModel, batch: CuedSet, generator: torch.Generator | None
) -> tuple[RAMOutput, torch.Tensor]:
    out = model(batch.images, batch.category, generator)
    return out, out.logits.gather(1, batch.category.view(-1, 1)).squeeze(1)


def train_ram(
    model: RecurrentAttentionModel,
    data: CuedSet | FreshTasks | ImageSet,
    budget: Budget,
    seed: int = 0,
    options: RunOptions = RunOptions(),
) -> TrainingLog:
    """Train ``model`` on cued detection (a fixed :class:`CuedSet`, or a :class:`FreshTasks`
    stream: new stimuli every step, ``budget.batch_size`` ignored) or classification (an
    ImageSet)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=budget.learning_rate)
    fresh = isinstance(data, FreshTasks)
    cued = fresh or isinstance(data, CuedSet)

    def step(index: int) -> dict[str, float]:
        generator = step_generator(seed, index)
        if cued:
            if fresh:
                batch = data.batch(index)
            else:
                batch = data.subset(
                    torch.randperm(len(data), generator=generator)[: budget.batch_size]
                )
            out, logit = _cued_pass(model, batch, generator)
            task_loss = detection_loss(logit, batch.is_target)
            rewards = ((logit > 0) == batch.is_target).to(logit.dtype)
        else:
            order = torch.randperm(len(data), generator=generator)[: budget.batch_size]
            labels = data.labels[order]
            out = model(data.images[order], None, generator)
            task_loss = F.cross_entropy(out.logits, labels)
            rewards = (out.logits.argmax(1) == labels).to(out.logits.dtype)
        loss, metrics = ram_loss(out, task_loss, rewards)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        return metrics

    settings = {
        "mechanism": "ram",
        "task": "detect" if cued else "classify",
        "config": asdict(model.config),
        "budget": {"batch_size": budget.batch_size, "learning_rate": budget.learning_rate},
        "n": data.describe() if fresh else len(data),
        "seed": seed,
    }
    if fresh:
        tensors: tuple[torch.Tensor, ...] = (data.images.images, data.images.labels)
    elif cued:
        tensors = (data.images, data.category, data.is_target)
    else:
        tensors = (data.images, data.labels)
    model.train()
    log = train_loop(
        {"model": model},
        optimizer,
        step,
        budget.steps,
        settings,
        "RAM " + ("detection" if cued else "classification"),
        options,
        data=tensors,
    )
    model.eval()
    return log


def ram_outputs(
    model: RecurrentAttentionModel,
    images: torch.Tensor,
    cue: torch.Tensor | None = None,
    batch_size: int = 256,
) -> RAMOutput:
    """Deterministic evaluation (mean locations), in batches, without gradients."""
    outs = []
    with torch.no_grad():
        for part in batched(images.shape[0], batch_size):
            outs.append(model(images[part], None if cue is None else cue[part]))
    return RAMOutput(*(torch.cat([getattr(o, f.name) for o in outs]) for f in fields(RAMOutput)))


def ram_detection_logits(
    model: RecurrentAttentionModel, images: torch.Tensor, cue: torch.Tensor
) -> torch.Tensor:
    """The cued "present" logit (N,) of a detection RAM, with mean locations."""
    out = ram_outputs(model, images, cue)
    return out.logits.gather(1, cue.view(-1, 1)).squeeze(1)


def plot_glimpses(
    images: torch.Tensor,
    locations: torch.Tensor,
    config: RAMConfig,
    stem: str | Path,
    titles: list[str] | None = None,
) -> list[Path]:
    """Images with their glimpse trajectories: the path of centres (numbered), and the smallest
    and largest patch of the first and last glimpse. Saved as PNG and SVG."""
    sizes = patch_sizes(config.patch, config.n_scales)
    h, w = images.shape[-2:]

    def draw(ax: Any, i: int) -> None:
        centres = location_to_pixels(locations[i], h, w).numpy()
        ax.plot(centres[:, 1], centres[:, 0], "-", color="#ff7f0e", lw=1.2)
        for t, (r, c) in enumerate(centres):
            ax.text(c, r, str(t + 1), color="#ffdd57", fontsize=7, ha="center", va="center")
        for t, color in ((0, "#2ca02c"), (len(centres) - 1, "#d62728")):
            r, c = centres[t]
            for size in (sizes[0], sizes[-1]):
                top, left = r - size // 2 - 0.5, c - size // 2 - 0.5
                ax.add_patch(Rectangle((left, top), size, size, fill=False, ec=color, lw=0.8))
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)

    title = "RAM glimpses (green: first, red: last; small and large patch)"
    return plot_image_row(images, stem, title, titles, draw)
