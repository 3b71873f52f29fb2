"""Attention as an input current on the SSN-CNN: the SSN's evaluator.

:class:`CurrentEvaluator` runs the conditions of any grid on an SSN-CNN with the attention of
each condition entering as an additive input current ``β·v·drive`` to the E and/or I cells of
every position of each feature map (:class:`CurrentAttention`), instead of a multiplicative
gain. It supports the feature rules (tuning, gradient, uniform and their shuffled /
positive-only variants) and refuses the others with one error. A condition whose SSN diverges
or does not converge is reported as failed (its row is left out), never as garbage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bioattn.attention.rules import FeatureGain, GainRule, ValueSource
from bioattn.data.tasks import TaskSet
from bioattn.errors import ConfigError
from bioattn.experiments.evaluate import ModulationEvaluator, Outputs, Probe
from bioattn.experiments.grid import Condition
from bioattn.models.detectors import Detectors
from bioattn.models.network import Network
from bioattn.ssn.builder import ssn_attention, ssn_layer
from bioattn.ssn.layer import SSNInstabilityError, SSNLayer

ATTENTION_TARGETS = ("E", "I", "both")


@dataclass(frozen=True)
class CurrentAttention:
    """How attention enters the SSN: an input current ``β·v·drive`` per feature map.

    ``target``: "E" (current to E cells only), "I" (to I cells only; a positive value then
    inhibits the map) or "both" (to E, and ``ratio_i`` times as much to I; ``None`` uses the
    feedforward ratio ``SSNParams.input_ratio_i``, so attention acts like extra feedforward drive).
    """

    target: str = "both"
    ratio_i: float | None = None

    def __post_init__(self) -> None:
        if self.target not in ATTENTION_TARGETS:
            raise ConfigError(
                f"unknown attention target {self.target!r}; valid: {', '.join(ATTENTION_TARGETS)}"
            )
        if self.ratio_i is not None and not (math.isfinite(self.ratio_i) and self.ratio_i >= 0):
            raise ConfigError(f"ratio_i must be a non-negative number, got {self.ratio_i}")

    def currents(
        self, ssn: SSNLayer, values: torch.Tensor, beta: float
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(current to E, current to I) as (C,) vectors for per-map ``values`` and strength β."""
        v = torch.nan_to_num(values.to(torch.float32), nan=0.0, posinf=0.0, neginf=0.0)
        amplitude = float(beta) * ssn.params.drive * v
        if self.target == "E":
            return amplitude, None
        if self.target == "I":
            return None, amplitude
        ratio = ssn.params.input_ratio_i if self.ratio_i is None else self.ratio_i
        return amplitude, amplitude * ratio


class CurrentEvaluator(ModulationEvaluator):
    """Conditions as input currents to an SSN-CNN's cells, one full pass per condition.

    The baseline (no current) is the network's ordinary forward pass. Every attended layer
    must be an SSN layer (checked per condition with the list of SSN layers).
    """

    def __init__(
        self,
        network: Network,
        detectors: Detectors,
        attention: CurrentAttention = CurrentAttention(),
        batch_size: int = 256,
    ) -> None:
        super().__init__(network, detectors, None, batch_size)
        self.attention = attention

    @property
    def name(self) -> str:
        """``ssn-current``."""
        return "ssn-current"

    def check(self, rule: GainRule) -> None:
        """Only feature rules: a current is already additive and has no spatial form yet."""
        if isinstance(rule, FeatureGain):
            return
        if rule.name.startswith("response-"):
            raise ConfigError(
                f"method {rule.name!r}: attention as an input current is already additive; "
                "use the method without 'response-'"
            )
        raise ConfigError(
            f"method {rule.name!r}: spatial attention as an input current is not implemented; "
            "use tuning, gradient, uniform or their shuffled / positive-only variants"
        )

    def evaluate(
        self,
        task: TaskSet,
        conditions: Sequence[Condition],
        source: ValueSource,
        probe: Probe | None = None,
    ) -> Outputs:
        """Logits (M, N); a condition whose SSN fails gets a NaN row and its reason."""
        logits = torch.full((len(conditions), len(task)), math.nan)
        failed: dict[int, str] = {}
        readings: list[dict[str, torch.Tensor]] = []
        for i, condition in enumerate(conditions):
            currents = {
                layer: self.attention.currents(
                    ssn_layer(self.network, layer), v, condition.beta * condition.setting.factor
                )
                for layer, v in condition.vectors(source, task).items()
            }
            try:
                with ssn_attention(self.network, currents):
                    logits[i], reading = self._forward(task, {}, probe)
            except SSNInstabilityError as error:
                failed[i] = str(error)
                continue
            readings.append(reading)
        stacked = {}
        if probe is not None and readings and not failed:
            stacked = {k: torch.stack([r[k] for r in readings]) for k in readings[0]}
        return Outputs(logits, stacked, failed)
