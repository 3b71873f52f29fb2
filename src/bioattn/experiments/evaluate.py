"""Evaluators: how a task's images are run under a list of conditions.

Every experiment family hands its conditions (:class:`~bioattn.experiments.grid.Condition`) to
an :class:`Evaluator`, which returns the target detector's logits for each condition and image
and, when a :class:`Probe` asks for them, readings of chosen layers' activity:

* :class:`ModulationEvaluator` applies the conditions' gain rules as
  :class:`~bioattn.attention.gains.Modulation` hooks after the attended layers' activations.
  With ``engine=None`` it runs the whole network once per condition (the reference
  computation); with a :class:`~bioattn.experiments.engine.SweepEngine` the network before the
  attended layer runs once and conditions go batched through the rest (same logits to float32
  rounding, several times faster). :func:`make_evaluator` builds either by name.
* :class:`bioattn.ssn.evaluate.CurrentEvaluator` puts attention into an SSN-CNN as an input
  current to its E/I cells.

An evaluator declares the rules it supports (:meth:`Evaluator.check` raises one clear error
for the others), so every experiment refuses unsupported methods the same way, before any work.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from bioattn.attention.gains import Modulation, modulate
from bioattn.attention.rules import GainRule, ValueSource
from bioattn.data.composites import QUADRANTS, quadrant_slices
from bioattn.data.tasks import TaskSet
from bioattn.errors import ConfigError
from bioattn.experiments.engine import SweepEngine
from bioattn.experiments.grid import Condition
from bioattn.models.detectors import Detectors
from bioattn.models.hooks import capture_activity
from bioattn.models.network import LayerInfo, Network

#: Names :func:`make_evaluator` accepts.
EVALUATORS = ("batched", "naive")

__all__ = [
    "EVALUATORS",
    "Evaluator",
    "ModulationEvaluator",
    "Outputs",
    "Probe",
    "make_evaluator",
]


@dataclass(frozen=True)
class Probe:
    """Readings of layer activity an evaluator returns beside the logits.

    ``layers``: maps averaged over space (``mean``: (M, N, units), units in the order of
    ``layers``); with ``quadrants`` also over each quadrant of the map (``quadrant``: (M, N,
    units, 4)); ``full_maps``: whole maps (``maps_<alias>``: (M, N, C, H, W)). What is read is
    the activity the network goes on to use: modulated where attention acts.
    """

    layers: tuple[LayerInfo, ...]
    quadrants: bool = False
    full_maps: tuple[LayerInfo, ...] = ()

    @property
    def hooked(self) -> list[LayerInfo]:
        """Every layer read, once each."""
        return list(dict.fromkeys([*self.layers, *self.full_maps]))

    def reduce(self, activity: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Readings of one batch from per-layer activity (R, C, H, W) keyed by alias."""
        out: dict[str, torch.Tensor] = {}
        outs = {la.alias: activity[la.alias].detach().float() for la in self.hooked}
        out["mean"] = torch.cat([outs[la.alias].mean(dim=(2, 3)) for la in self.layers], dim=1)
        if self.quadrants:
            parts = []
            for layer in self.layers:
                x = outs[layer.alias]
                h, w = x.shape[2:]
                per_quadrant = []
                for q in range(len(QUADRANTS)):
                    rows, cols = quadrant_slices(h, w, q)
                    per_quadrant.append(x[:, :, rows, cols].mean(dim=(2, 3)))
                parts.append(torch.stack(per_quadrant, dim=-1))
            out["quadrant"] = torch.cat(parts, dim=1)
        for layer in self.full_maps:
            out[f"maps_{layer.alias}"] = outs[layer.alias].clone()
        return {k: v.cpu() for k, v in out.items()}


@dataclass
class Outputs:
    """What an evaluator returns for M conditions on one task's N images.

    ``logits``: (M, N) target-detector logits (NaN rows for failed conditions); ``readings``:
    the probe's tensors, each (M, N, …), or empty without a probe; ``failed``: condition index
    → why it could not be evaluated (e.g. an SSN that diverged).
    """

    logits: torch.Tensor
    readings: dict[str, torch.Tensor] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)

    def row(self, i: int) -> dict[str, torch.Tensor]:
        """The readings of condition ``i``, each (N, …)."""
        return {name: value[i] for name, value in self.readings.items()}


@runtime_checkable
class Evaluator(Protocol):
    """Runs a task's images under conditions (see the module docstring)."""

    network: Network
    detectors: Detectors

    def check(self, rule: GainRule) -> None:
        """Raise :class:`ConfigError` when the evaluator cannot apply ``rule``."""

    def baseline(self, task: TaskSet, probe: Probe | None = None) -> Outputs:
        """The unattended network on ``task`` (one row)."""

    def evaluate(
        self,
        task: TaskSet,
        conditions: Sequence[Condition],
        source: ValueSource,
        probe: Probe | None = None,
    ) -> Outputs:
        """Every condition on ``task`` (one row each, in order)."""


def _subset(task: TaskSet, members: torch.Tensor) -> TaskSet:
    return TaskSet(
        task.images[members],
        task.is_target[members],
        task.contents[members],
        task.target,
        task.categories,
        task.image_type,
        task.split,
    )


class ModulationEvaluator:
    """Conditions as gain hooks after the activations: naive (``engine=None``) or batched.

    Parameters
    ----------
    network, detectors:
        The model and its binary detectors (``None``: no logits, e.g. for recordings without
        detectors; then the logits are NaN).
    engine:
        A :class:`SweepEngine` for the network (prefix sharing and batched conditions), or
        ``None`` for one full forward pass per condition.
    batch_size:
        Images per forward pass of the full passes.
    """

    def __init__(
        self,
        network: Network,
        detectors: Detectors | None,
        engine: SweepEngine | None = None,
        batch_size: int = 256,
    ) -> None:
        if engine is not None and (
            engine.network is not network or engine.detectors is not detectors
        ):
            raise ConfigError("the SweepEngine given to the evaluator was built for another model")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.network = network
        self.detectors = detectors
        self.engine = engine
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        """``batched`` or ``naive``."""
        return "naive" if self.engine is None else "batched"

    def check(self, rule: GainRule) -> None:
        """Every gain rule is a modulation: all are supported."""

    # --- full forward passes ---------------------------------------------------------------
    def _forward(
        self,
        task: TaskSet,
        modulations: dict[LayerInfo, Modulation],
        probe: Probe | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Target logits (N,) and readings (N, …) of one full hooked pass per batch."""
        features, readings = [], []
        images = task.images
        with ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(modulate(self.network, modulations))
            store = stack.enter_context(
                capture_activity(self.network, probe.hooked if probe else [])
            )
            readout = stack.enter_context(self.network.capture_readout())
            for start in range(0, images.shape[0], self.batch_size):
                self.network(self.network.preprocess(images[start : start + self.batch_size]))
                features.append(readout.pop())
                if probe is not None:
                    readings.append(probe.reduce(store))
            if self.detectors is None:  # recordings without detectors: no logits
                logits = torch.full((images.shape[0],), float("nan"))
            elif features:
                target = self.detectors.index(task.target_name)
                logits = self.detectors.logits(torch.cat(features))[:, target]
            else:
                logits = torch.empty(0)
        merged = {k: torch.cat([r[k] for r in readings]) for k in readings[0]} if readings else {}
        return logits, merged

    def baseline(self, task: TaskSet, probe: Probe | None = None) -> Outputs:
        """The unattended pass (the engine also keeps the activity for the conditions next)."""
        if self.engine is not None:
            if probe is None:
                return Outputs(self.engine.baseline_logits(task).unsqueeze(0))
            # the engine keeps this unattended pass for the conditions that follow
            return Outputs(*self.engine.condition_readings(task, [{}], probe))
        logits, readings = self._forward(task, {}, probe)
        return Outputs(logits.unsqueeze(0), {k: v.unsqueeze(0) for k, v in readings.items()})

    # --- conditions ------------------------------------------------------------------------
    def evaluate(
        self,
        task: TaskSet,
        conditions: Sequence[Condition],
        source: ValueSource,
        probe: Probe | None = None,
    ) -> Outputs:
        """Logits (M, N) and readings of every condition (per-image cues split by quadrant)."""
        n = len(task)
        logits = torch.empty(len(conditions), n)
        readings: list[dict[str, torch.Tensor] | None] = [None] * len(conditions)
        shared = [i for i, c in enumerate(conditions) if c.quadrants is None]
        stacked: dict[str, torch.Tensor] = {}
        if self.engine is not None and shared:
            mods = [conditions[i].modulations(source, task) for i in shared]
            if probe is None:
                logits[shared] = self.engine.condition_logits(task, mods)
            else:
                logits[shared], part = self.engine.condition_readings(task, mods, probe)
                for j, i in enumerate(shared):
                    readings[i] = {k: v[j] for k, v in part.items()}
        else:
            for i in shared:
                logits[i], readings[i] = self._forward(
                    task, conditions[i].modulations(source, task), probe
                )
        for i, condition in enumerate(conditions):
            if condition.quadrants is not None:
                logits[i], readings[i] = self._per_image_cues(task, condition, source, probe)
        if probe is not None and conditions:
            stacked = {k: torch.stack([r[k] for r in readings]) for k in readings[0]}  # type: ignore[index]
        return Outputs(logits, stacked)

    def _per_image_cues(
        self,
        task: TaskSet,
        condition: Condition,
        source: ValueSource,
        probe: Probe | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One condition whose spatial cue differs per image: a full pass per cued quadrant."""
        assert condition.quadrants is not None
        quadrants = condition.quadrants
        logits = torch.empty(len(task))
        parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for quadrant in quadrants.unique().tolist():
            members = torch.nonzero(quadrants == quadrant).flatten()
            subset = _subset(task, members)
            mods = condition.modulations(source, subset, quadrant=int(quadrant))
            # full passes: a subset of a task has no shared prefix worth batching
            logits[members], part = self._forward(subset, mods, probe)
            for key, value in part.items():
                parts.setdefault(key, []).append((members, value))
        readings = {}
        for key, pieces in parts.items():
            first = pieces[0][1]
            full = torch.empty((len(task), *first.shape[1:]), dtype=first.dtype)
            for members, value in pieces:
                full[members] = value
            readings[key] = full
        return logits, readings


def make_evaluator(
    network: Network,
    detectors: Detectors,
    kind: str | SweepEngine = "batched",
    batch_size: int = 256,
) -> ModulationEvaluator:
    """``"batched"`` (a :class:`SweepEngine`), ``"naive"``, or a configured engine."""
    if isinstance(kind, SweepEngine):
        return ModulationEvaluator(network, detectors, kind, batch_size)
    if kind not in EVALUATORS:
        raise ConfigError(f"unknown sweep engine {kind!r}; valid: {', '.join(EVALUATORS)}")
    engine = SweepEngine(network, detectors, batch_size=batch_size) if kind == "batched" else None
    return ModulationEvaluator(network, detectors, engine, batch_size)
