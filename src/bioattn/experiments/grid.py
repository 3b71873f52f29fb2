"""Conditions and grids: what attention does in one evaluation, and the product a run covers.

* A :class:`LayerSetting` says where attention goes: one layer at full strength, or every layer
  at once at ``β · ALL_LAYERS_FACTOR`` (all-layers mode).
* An :class:`Arm` is one way of attending: a gain rule (or none: the unattended arm), the label
  result tables carry in their ``method`` column, which category's values it uses (the task's
  target, or another one: a wrong cue) and where a spatial cue points.
* A :class:`Condition` is one (setting, arm, β): everything an evaluator needs, besides the task
  images, to compute one row of logits.
* A :class:`Grid` is the product settings × arms × β. β = 0 leaves every rule without effect,
  so it is evaluated once per task (the baseline) and never as a condition; sharding is a
  partition of the grid by layer setting (:meth:`Grid.split`).

Test-set seeds follow one rule, :func:`bioattn.data.tasks.task_seed`: the seed of category k's
set depends on k's index among *all* categories of the data, never on which categories a run
asks for, so a run over some categories sees the same images as a run over all of them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from bioattn.attention.gains import Modulation
from bioattn.attention.rules import ALL_LAYERS_FACTOR, GainRule, ValueSource, parse_rule
from bioattn.data.tasks import (  # noqa: F401  (re-exported: the seed rule)
    GRADIENT_STREAM,
    NOISE_GRADIENT_STREAM,
    REFERENCE_STREAM,
    TEST_STREAM,
    TaskSet,
    cue_seed,
    task_seed,
)
from bioattn.errors import ConfigError
from bioattn.models.network import LayerInfo, Network

#: Name of the all-layers setting in result tables (its ``layer_number`` is 0).
ALL_LAYERS = "all"

__all__ = [
    "ALL_LAYERS",
    "Arm",
    "Condition",
    "Grid",
    "LayerSetting",
    "cue_seed",
    "layer_settings",
    "task_seed",
]


@dataclass(frozen=True)
class LayerSetting:
    """Where attention goes: ``layers`` at strength ``β · factor``; ``name`` in tables."""

    name: str
    number: int  # the layer's 1-based number, 0 for all-layers mode
    layers: tuple[LayerInfo, ...]
    factor: float = 1.0

    @classmethod
    def single(cls, layer: LayerInfo) -> LayerSetting:
        """One layer at full strength."""
        return cls(layer.alias, layer.number, (layer,), 1.0)

    @classmethod
    def every(cls, layers: Sequence[LayerInfo]) -> LayerSetting:
        """Every layer at once at ``β · ALL_LAYERS_FACTOR`` (all-layers mode)."""
        return cls(ALL_LAYERS, 0, tuple(layers), ALL_LAYERS_FACTOR)


def layer_settings(
    network: Network,
    layers: Sequence[str | int | LayerInfo] | str | None,
    all_layers: bool,
    every: Sequence[LayerInfo] | None = None,
) -> list[LayerSetting]:
    """One setting per named layer (``None``: every layer), plus all-layers mode when asked.

    ``every`` gives the layers of the all-layers setting (default: all of the network's).
    Duplicates (one layer named two ways) are merged with a warning, in the order given.
    """
    named = network.resolve_layers(layers)
    resolved = list(dict.fromkeys(named))
    if len(resolved) < len(named):
        twice = [la.alias for la in resolved if named.count(la) > 1]
        warnings.warn(
            f"layers named more than once were merged: {', '.join(twice)} (each is attended once)",
            stacklevel=2,
        )
    settings = [LayerSetting.single(layer) for layer in resolved]
    if all_layers:
        settings.append(LayerSetting.every(list(network.layers) if every is None else every))
    if not settings:
        raise ConfigError("no layers to attend: give layers or enable all-layers mode")
    return settings


#: How an arm's spatial cue is placed: on the task's cued quadrant, or per image for cueing
#: experiments (valid: positives cued at the target's quadrant; invalid: at another one).
CUE_PLACEMENTS = ("task", "valid", "invalid")


@dataclass(frozen=True)
class Arm:
    """One way of attending in a grid.

    Attributes:
        rule: the gain rule; ``None`` is the unattended arm (every β gives the baseline).
        label: the ``method`` column of result tables (default: the rule's name).
        attend: whose values the rule uses: a function from the task's target category to the
            attended one (default: the target itself; e.g. the next category for a wrong cue).
        cue: where a spatial rule's cue points, one of :data:`CUE_PLACEMENTS`.
    """

    rule: GainRule | None
    label: str = ""
    attend: Callable[[str], str] | None = field(default=None, compare=False)
    cue: str = "task"

    def __post_init__(self) -> None:
        if self.cue not in CUE_PLACEMENTS:
            raise ConfigError(f"unknown cue placement {self.cue!r}; valid: {CUE_PLACEMENTS}")
        if not self.label:
            if self.rule is None:
                raise ConfigError("an unattended arm needs a label")
            object.__setattr__(self, "label", self.rule.name)

    @classmethod
    def of(cls, rule: str | GainRule) -> Arm:
        """The arm of one rule (by object or name), labelled by the rule's name."""
        return cls(parse_rule(rule))

    def category(self, target: str) -> str:
        """The category whose values the arm uses on a task whose target is ``target``."""
        return target if self.attend is None else self.attend(target)


@dataclass(frozen=True, eq=False)
class Condition:
    """One evaluation besides the baseline: ``arm`` at ``beta`` in layer ``setting``."""

    setting: LayerSetting
    arm: Arm
    beta: float
    #: per-image cued quadrants (int64 (N,)) for cueing arms; None: the task's cued quadrant
    quadrants: torch.Tensor | None = None

    @property
    def rule(self) -> GainRule | None:
        """The arm's gain rule (None: unattended)."""
        return self.arm.rule

    @property
    def attended(self) -> bool:
        """Whether the condition changes the network at all."""
        return self.arm.rule is not None and self.beta != 0.0

    def modulations(
        self, source: ValueSource, task: TaskSet, quadrant: int | None = None
    ) -> dict[LayerInfo, Modulation]:
        """Per-layer modulations on ``task`` (``quadrant`` overrides the task's cue)."""
        if not self.attended:
            return {}
        assert self.rule is not None
        category = self.arm.category(task.target_name)
        cued = task.cued_quadrant if quadrant is None else quadrant
        return {
            layer: self.rule.modulation(
                source, task.image_type, category, layer, self.beta * self.setting.factor, cued
            )
            for layer in self.setting.layers
        }

    def vectors(self, source: ValueSource, task: TaskSet) -> dict[LayerInfo, torch.Tensor]:
        """Per-layer (C,) values of the rule (for evaluators that use values, not gains)."""
        assert self.rule is not None
        category = self.arm.category(task.target_name)
        return {
            layer: self.rule.vector(source, task.image_type, category, layer)
            for layer in self.setting.layers
        }


def _betas(betas: Sequence[float]) -> tuple[float, ...]:
    try:
        values = tuple(sorted({float(b) for b in betas}))
    except (TypeError, ValueError):
        raise ConfigError(f"β values must be numbers, got {betas!r}") from None
    if not values:
        raise ConfigError("the β grid is empty; give at least one β, e.g. 0,0.5,1,2")
    if any(not math.isfinite(b) for b in values):
        raise ConfigError(f"β values must be finite numbers, got {list(betas)}")
    return values


@dataclass(frozen=True)
class Grid:
    """Layer settings × arms × β (sorted, duplicates merged; β = 0 is always the baseline)."""

    settings: tuple[LayerSetting, ...]
    arms: tuple[Arm, ...]
    betas: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", _betas(self.betas))
        if not self.settings:
            raise ConfigError("no layers to attend: give layers or enable all-layers mode")
        if not self.arms:
            raise ConfigError("no methods given; e.g. tuning,gradient")
        labels = [arm.label for arm in self.arms]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"methods must be distinct, got {labels}")
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise ConfigError(f"layer settings must be distinct, got {names}")

    @classmethod
    def of(
        cls,
        settings: Sequence[LayerSetting],
        rules: Sequence[str | GainRule],
        betas: Sequence[float],
    ) -> Grid:
        """The grid of ``rules`` (by object or name), one arm each."""
        return cls(tuple(settings), tuple(dict.fromkeys(Arm.of(r) for r in rules)), tuple(betas))

    @property
    def nonzero_betas(self) -> tuple[float, ...]:
        """The β values evaluated as conditions."""
        return tuple(b for b in self.betas if b != 0.0)

    @property
    def rules(self) -> list[GainRule]:
        """The distinct gain rules of the arms."""
        return list(dict.fromkeys(a.rule for a in self.arms if a.rule is not None))

    def conditions(self, setting: LayerSetting) -> list[Condition]:
        """Every (arm, β ≠ 0) of one setting, arm-major."""
        return [Condition(setting, arm, beta) for arm in self.arms for beta in self.nonzero_betas]

    def split(self) -> list[Grid]:
        """One grid per layer setting: a partition for shards."""
        return [replace(self, settings=(setting,)) for setting in self.settings]

    def __len__(self) -> int:
        """Conditions per task (the baseline excluded)."""
        return len(self.settings) * len(self.arms) * len(self.nonzero_betas)
