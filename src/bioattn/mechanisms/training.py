"""Resumable training loops for the attention mechanisms.

Every mechanism trains through :func:`train_loop`: a fixed number of steps, each drawing its
randomness from :func:`step_generator` (seeded by the run's seed and the step number, so a step
does the same thing whether the run was interrupted before it or not). Every
``checkpoint_every`` steps, and at the end, the modules' and optimizer's state, the step count,
the loss history and the accumulated wall time are written with ``torch.save`` to one file that
is read back with ``torch.load(weights_only=True)`` (no arbitrary unpickling). Starting again
with the same checkpoint path continues where the last run stopped, and gives the same result as
an uninterrupted run. A checkpoint written for other settings is refused, not silently reused.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bioattn.cache import atomic_write_bytes, settings_key, update_with_tensor
from bioattn.errors import ConfigError
from bioattn.logs import progress_bar


@dataclass(frozen=True)
class Budget:
    """How long a mechanism trains: optimizer steps, minibatch size and Adam learning rate."""

    steps: int
    batch_size: int = 64
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        check_budget(self)


def check_budget(budget: Budget) -> None:
    """Raise :class:`ConfigError` unless steps ≥ 1, batch size ≥ 1 and learning rate > 0."""
    if not isinstance(budget.steps, int) or budget.steps < 1:
        raise ConfigError(
            f"a training budget needs steps >= 1 (a whole number), got {budget.steps}"
        )
    if not isinstance(budget.batch_size, int) or budget.batch_size < 1:
        raise ConfigError(f"a training budget needs batch_size >= 1, got {budget.batch_size}")
    if not budget.learning_rate > 0:
        raise ConfigError(f"a training budget needs learning_rate > 0, got {budget.learning_rate}")


@dataclass(frozen=True)
class RunOptions:
    """Where a training run checkpoints, how often, whether it shows progress, and (to split
    training into sessions) after how many steps of this call it stops."""

    checkpoint: str | Path | None = None
    checkpoint_every: int = 50
    progress: bool = True
    stop_after: int | None = None


@dataclass
class TrainingLog:
    """What a training run did: steps done, wall seconds (all sessions), per-step metrics."""

    steps: int
    seconds: float
    history: dict[str, list[float]] = field(default_factory=dict)
    resumed_from: int = 0
    finished: bool = True
    stopped_early: bool = False


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random generator of one training step: a function of the run's seed and the step."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step) + 1)


def data_digest(tensors: Sequence[torch.Tensor]) -> str:
    """A short hash of tensors' shapes, dtypes and contents."""
    digest = hashlib.sha256()
    for tensor in tensors:
        update_with_tensor(digest, tensor)
    return digest.hexdigest()[:16]


def _save(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`train_loop` (tensors and plain containers only)."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # any failure means the file is unusable
        raise ConfigError(
            f"cannot read checkpoint {path}: {error}; delete it to start this training again"
        ) from error


def train_loop(
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer | None,
    step_fn: Callable[[int], Mapping[str, float]],
    steps: int,
    settings: Mapping[str, Any],
    desc: str = "training",
    options: RunOptions = RunOptions(),
    data: Sequence[torch.Tensor] = (),
    stop_when: Callable[[], bool] | None = None,
) -> TrainingLog:
    """Run ``step_fn(step)`` for steps ``0 … steps − 1``, resuming from ``options.checkpoint``.

    Args:
        modules: everything with state that training changes, by name (saved and restored).
        optimizer: the optimizer (its state is saved and restored too); ``None`` for training
            that keeps all its state in ``modules`` (e.g. an evolution strategy's buffers).
        step_fn: does one step (forward, backward, ``optimizer.step()``) and returns metrics.
        steps: total number of steps; a checkpoint that already has them returns at once.
        settings: JSON-serialisable settings that determine the run except ``steps``; a
            checkpoint written with other settings raises :class:`ConfigError`.
        data: the training tensors (images, cues, labels); their contents are part of the
            checkpoint's key, so a checkpoint trained on other data is refused too.
        desc: label of the progress bar.
        options: ``checkpoint`` (file to resume from and write to; ``None``: no checkpoints),
            ``checkpoint_every`` (steps between checkpoints), ``progress`` (show a tqdm bar),
            ``stop_after`` (do at most this many steps in this call, then checkpoint and return
            with ``finished=False``).
        stop_when: early stopping: checked before every step, and when it returns True the
            run ends there (``finished`` and ``stopped_early``). It must read state kept in
            ``modules`` (e.g. a buffer counting steps without improvement), so that a resumed
            run stops where an uninterrupted one would.
    """
    checkpoint, checkpoint_every = options.checkpoint, options.checkpoint_every
    progress, stop_after = options.progress, options.stop_after
    if checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    key = settings_key({**dict(settings), "data": data_digest(data)})
    path = None if checkpoint is None else Path(checkpoint)
    start, seconds, history = 0, 0.0, {}
    if path is not None and path.exists():
        state = load_checkpoint(path)
        if state.get("key") != key:
            raise ConfigError(
                f"checkpoint {path} was written for other settings ({state.get('settings')}); "
                "delete it or choose another output folder"
            )
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        start, seconds, history = int(state["step"]), float(state["seconds"]), state["history"]
        if start > steps:
            raise ConfigError(
                f"checkpoint {path} has trained {start} steps, more than the {steps} asked for; "
                f"ask for at least {start} steps, or delete it to train {steps} from scratch"
            )
    resumed_from = start

    def write(step: int, elapsed: float) -> None:
        if path is None:
            return
        _save(
            path,
            {
                "key": key,
                "settings": repr(dict(settings)),
                "step": step,
                "seconds": elapsed,
                "history": history,
                "modules": {name: module.state_dict() for name, module in modules.items()},
                "optimizer": None if optimizer is None else optimizer.state_dict(),
            },
        )

    end = steps if stop_after is None else min(steps, start + max(0, int(stop_after)))
    began = time.perf_counter()
    bar = progress_bar(total=steps, initial=min(start, steps), desc=desc, disable=not progress)
    stopped = False
    for step in range(start, end):
        if stop_when is not None and stop_when():
            stopped, end = True, step
            break
        metrics = step_fn(step)
        for name, value in metrics.items():
            history.setdefault(name, []).append(float(value))
        bar.update(1)
        if metrics:
            bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()}, refresh=False)
        if (step + 1) % checkpoint_every == 0 and step + 1 < end:
            write(step + 1, seconds + time.perf_counter() - began)
    bar.close()
    if not stopped and end < steps and stop_when is not None and stop_when():
        stopped = True  # the last step of this call met the condition
    done = max(start, end)
    total_seconds = seconds + time.perf_counter() - began
    if done > resumed_from or (path is not None and not path.exists()):
        write(done, total_seconds)
    return TrainingLog(
        steps=done,
        seconds=total_seconds,
        history=history,
        resumed_from=resumed_from,
        finished=stopped or done >= steps,
        stopped_early=stopped,
    )
