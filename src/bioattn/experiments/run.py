"""The one run loop: tasks × grid through an evaluator into a sink.

:func:`run` is what every experiment family (sweeps, SSN sweeps, cueing, detection in noise,
recordings, the mechanisms comparison's FSGM selection) does: for each task, the unattended
baseline once, then per layer setting every (arm, β ≠ 0) of the grid in one evaluator call.
What happens to the outputs is the sink's business:

* :class:`PerformanceSink` turns logits into rows of the long-form performance table
  (:data:`PERFORMANCE_COLUMNS`), a β = 0 row (the baseline) for every (setting, arm) followed by
  the arm's β ≠ 0 rows;
* :class:`bioattn.experiments.recording.RecordingSink` writes readings of layer activity to a
  netCDF recording.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Protocol

import pandas as pd
import torch

from bioattn.analysis.sdt import detection_metrics_batch
from bioattn.attention.rules import ValueSource
from bioattn.data.tasks import TaskSet
from bioattn.errors import ConfigError
from bioattn.experiments.evaluate import Evaluator, Outputs, Probe
from bioattn.experiments.grid import Condition, Grid, LayerSetting
from bioattn.logs import progress_bar

PERFORMANCE_COLUMNS = [
    "task",
    "image_type",
    "category",
    "layer",
    "layer_number",
    "method",
    "beta",
    "tp",
    "tn",
    "fp",
    "performance",
    "dprime",
    "criterion",
    "n_pos",
    "n_neg",
]

__all__ = ["PERFORMANCE_COLUMNS", "LazyTasks", "PerformanceSink", "Sink", "run"]


class LazyTasks(Mapping[Hashable, TaskSet]):
    """Task sets built when first needed (one at a time: memory holds one set's images)."""

    def __init__(self, keys: Sequence[Hashable], build: Callable[[Any], TaskSet]) -> None:
        self._keys = list(keys)
        self._build = build

    def __getitem__(self, key: Hashable) -> TaskSet:
        if key not in self._keys:
            raise KeyError(key)
        return self._build(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class Sink(Protocol):
    """Receives a run's outputs task by task."""

    def baseline(self, key: Hashable, task: TaskSet, outputs: Outputs) -> None:
        """The unattended outputs of one task (called first for each task)."""

    def conditions(
        self,
        key: Hashable,
        task: TaskSet,
        setting: LayerSetting,
        conditions: Sequence[Condition],
        outputs: Outputs,
    ) -> None:
        """The outputs of one layer setting's conditions on one task."""


def _metrics(outputs: Outputs, task: TaskSet) -> list[dict[str, float]]:
    metrics = detection_metrics_batch(outputs.logits, task.is_target)
    return [
        {name: column[i].item() for name, column in metrics.items()}
        for i in range(outputs.logits.shape[0])
    ]


class PerformanceSink:
    """Rows of the performance table (:data:`PERFORMANCE_COLUMNS` plus ``extra`` columns).

    ``task_name`` fills the ``task`` column; ``columns`` maps a task key to extra columns of its
    rows (e.g. its SNR). Failed conditions leave their row out and are listed in
    :attr:`failures` with the reason.
    """

    def __init__(
        self,
        task_name: str,
        columns: Mapping[Hashable, Mapping[str, Any]] | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.task_name = task_name
        self.columns = columns or {}
        self.extra = list(extra)
        self.rows: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self._baseline: dict[str, float] = {}

    def _base(self, key: Hashable, task: TaskSet) -> dict[str, Any]:
        return {
            "task": self.task_name,
            "image_type": task.image_type,
            "category": task.target_name,
            **self.columns.get(key, {}),
        }

    def baseline(self, key: Hashable, task: TaskSet, outputs: Outputs) -> None:
        self._baseline = _metrics(outputs, task)[0]

    def conditions(self, key, task, setting, conditions, outputs) -> None:
        _check_finite(key, conditions, outputs)
        base = self._base(key, task)
        metrics = _metrics(outputs, task) if conditions else []
        by_arm: dict[str, list[int]] = {}
        for i, condition in enumerate(conditions):
            by_arm.setdefault(condition.arm.label, []).append(i)
        for label, indices in by_arm.items():
            common = {**base, "layer": setting.name, "layer_number": setting.number}
            common["method"] = label
            self.rows.append({**common, "beta": 0.0, **self._baseline})
            for i in indices:
                beta = conditions[i].beta
                if beta == 0.0:  # a chosen β of 0: the baseline row above is its row
                    continue
                if i in outputs.failed:
                    self.failures.append({**common, "beta": beta, "error": outputs.failed[i]})
                    continue
                self.rows.append({**common, "beta": beta, **metrics[i]})

    def table(self) -> pd.DataFrame:
        """The rows so far as a DataFrame (failures in ``attrs["failures"]``)."""
        table = pd.DataFrame(self.rows, columns=[*PERFORMANCE_COLUMNS, *self.extra])
        table.attrs["failures"] = list(self.failures)
        return table


def check_grid(grid: Grid, evaluator: Evaluator, tasks: Mapping[Hashable, TaskSet]) -> None:
    """Refuse, before any work, rules the evaluator cannot apply and spatial rules on tasks
    without a cued quadrant."""
    for rule in grid.rules:
        evaluator.check(rule)
    for arm in grid.arms:
        if arm.rule is None or not arm.rule.spatial or arm.cue != "task":
            continue
        uncued = [key for key, task in tasks.items() if task.cued_quadrant is None]
        if uncued:
            raise ConfigError(
                f"spatial methods need a cued quadrant, but the task sets {uncued[:4]} have "
                f"none (method {arm.label!r}; spatial attention needs a spatial task, e.g. "
                "`bioattn orientation`)"
            )


def run(
    tasks: Mapping[Hashable, TaskSet],
    grid: Grid,
    evaluator: Evaluator,
    sink: Sink,
    source: ValueSource,
    *,
    probe: Probe | None = None,
    progress: bool = True,
    desc: str = "conditions",
    conditions_for: Callable[[Hashable, TaskSet, LayerSetting], list[Condition]] | None = None,
) -> Sink:
    """Evaluate every task under the grid's conditions and hand the outputs to ``sink``.

    Conditions of unattended arms get the baseline's outputs without another pass.
    ``conditions_for(key, task, setting)`` may replace the grid's conditions of one setting on
    one task (e.g. cueing experiments draw per-image cues per task). Returns the sink.
    """
    check_grid(grid, evaluator, tasks)
    total = len(tasks) * (1 + len(grid))
    bar = progress_bar(total=total, desc=desc, disable=not progress)
    try:
        with evaluator.network.autocast():  # half precision when the network asks for it
            for key, task in tasks.items():
                baseline = evaluator.baseline(task, probe)
                sink.baseline(key, task, baseline)
                bar.update(1)
                for setting in grid.settings:
                    conditions = (
                        grid.conditions(setting)
                        if conditions_for is None
                        else conditions_for(key, task, setting)
                    )
                    outputs = _evaluate(evaluator, task, conditions, source, probe, baseline)
                    sink.conditions(key, task, setting, conditions, outputs)
                    bar.update(len(conditions))
    finally:
        bar.close()
    return sink


def _check_finite(key: object, conditions: Sequence[Condition], outputs: Outputs) -> None:
    """Refuse non-finite logits that no evaluator reported as a failure (a β so large that the
    activity overflows), naming the first such condition, before a performance row is made."""
    finite = torch.isfinite(outputs.logits).all(dim=1)
    for i, condition in enumerate(conditions):
        if not bool(finite[i]) and i not in outputs.failed:
            raise ConfigError(
                f"attention made the detector logits non-finite (overflow) for task {key}: "
                f"layer {condition.setting.name}, {condition.arm.label}, β = {condition.beta:g}; "
                "use smaller β values"
            )


def _evaluate(
    evaluator: Evaluator,
    task: TaskSet,
    conditions: Sequence[Condition],
    source: ValueSource,
    probe: Probe | None,
    baseline: Outputs,
) -> Outputs:
    """The evaluator's outputs for the attended conditions, the baseline's for the others."""
    attended = [i for i, c in enumerate(conditions) if c.attended]
    if len(attended) == len(conditions):
        return (
            evaluator.evaluate(task, conditions, source, probe)
            if conditions
            else Outputs(torch.empty(0, len(task)))
        )
    index = torch.zeros(len(conditions), dtype=torch.long)  # row 0 of the baseline
    outputs = Outputs(
        baseline.logits[index].clone(), {k: v[index] for k, v in baseline.readings.items()}
    )
    if attended:
        part = evaluator.evaluate(task, [conditions[i] for i in attended], source, probe)
        outputs.logits[attended] = part.logits
        for name, value in part.readings.items():
            outputs.readings[name][attended] = value
        outputs.failed = {attended[i]: why for i, why in part.failed.items()}
    return outputs
