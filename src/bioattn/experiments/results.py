"""``sweep(experiment, ...) -> SweepResult``: a sweep and everything one looks at afterwards.

:func:`~bioattn.experiments.sweep.run_sweep` returns the long-form performance table and
leaves the rest to the caller. :func:`sweep` runs it on a prepared
:class:`~bioattn.experiments.prepare.Experiment` and wraps the table in a :class:`SweepResult`,
which adds the performance increase per layer and method with its 95 % interval
(:attr:`SweepResult.summary`), the attention values the sweep used, a figure, an HTML table
for notebooks, and :meth:`SweepResult.save` / :func:`load_results` to keep it::

    import bioattn

    exp = bioattn.prepare()
    result = bioattn.sweep(exp, layers=["conv3_1"], betas=[0, 0.5, 1])
    result.table; result.plot()

A saved result is an ordinary results folder (``performance.parquet``, ``gains.csv``,
``summary.csv``, ``config.json``) plus the values (``values.nc``), so ``bioattn plot`` and
``bioattn report`` read it like a folder written by ``bioattn sweep``.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import xarray as xr

from bioattn.analysis.findings import effects
from bioattn.analysis.sdt import performance_gains
from bioattn.errors import ConfigError, DataError
from bioattn.experiments.sweep import SweepConfig, run_sweep

if TYPE_CHECKING:  # matplotlib and the experiment's torch objects only where they are used
    from matplotlib.figure import Figure

    from bioattn.experiments.evaluate import Evaluator
    from bioattn.experiments.prepare import Experiment

__all__ = ["RESULT_FILES", "SweepResult", "load_results", "sweep"]

#: The files :meth:`SweepResult.save` writes (the first three as ``bioattn sweep`` does).
RESULT_FILES = ("performance.parquet", "gains.csv", "summary.csv", "config.json", "values.nc")
#: ``config.json``'s ``kind`` for a saved :class:`SweepResult` (that of ``bioattn sweep``).
RESULT_KIND = "sweep"
#: Bootstrap replicates of :attr:`SweepResult.summary`'s intervals: fewer than the findings'
#: default, since a summary is looked at interactively; ample for a 95 % interval.
SUMMARY_BOOTSTRAP = 5_000
_SWEEP_FIELDS = tuple(f.name for f in dataclasses.fields(SweepConfig))
#: The SweepConfig fields that hold tuples (layers, betas, methods, ...).
_TUPLE_FIELDS = frozenset(f.name for f in dataclasses.fields(SweepConfig) if "tuple" in str(f.type))
#: Summary columns shown by :meth:`SweepResult._repr_html_` and ``repr``.
_SHOWN = ("image_type", "layer", "method", "mean_delta_pp", "ci_low_pp", "ci_high_pp")


class SweepResult:
    """The outcome of one sweep: its performance table, the values it used and its settings.

    ``table`` is :func:`~bioattn.experiments.sweep.run_sweep`'s long-form table (one row per
    image type × category × layer × method × β); ``values`` the tuning and gradient values
    the gain rules read; ``config`` the resolved :class:`SweepConfig` (β = 0 included);
    ``model`` describes the network (:attr:`Experiment.model_info
    <bioattn.experiments.prepare.Experiment.model_info>`).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        values: xr.Dataset | None,
        config: SweepConfig,
        model: dict[str, Any] | None = None,
    ) -> None:
        self.table = table
        self.values = values
        self.config = config
        self.model = dict(model or {})

    @cached_property
    def gains(self) -> pd.DataFrame:
        """Best β and performance increase per (image type, category, layer, method)
        (:func:`~bioattn.analysis.sdt.performance_gains`)."""
        return performance_gains(self.table)

    @cached_property
    def summary(self) -> pd.DataFrame:
        """Performance increase (pp) per image type, layer and method: the mean over
        categories with its 95 % bootstrap interval (``ci_low_pp``, ``ci_high_pp``), and the
        same for Δd′ and Δc (:func:`~bioattn.analysis.findings.effects`).

        The best β is chosen on the sweep's own test images, so the increase is optimistic (as
        in Lindsay & Miller's figures); ``bioattn replicate`` chooses β on other images.
        """
        return effects(self.gains, n_boot=SUMMARY_BOOTSTRAP)

    def plot(self) -> Figure:
        """The performance increase by attended layer, one line per method (mean over
        categories with its 95 % interval), one panel per image type
        (:func:`~bioattn.analysis.figures.performance_increase_figure`)."""
        from bioattn.analysis.figures import performance_increase_figure

        return performance_increase_figure(self.summary)

    def _shown(self) -> pd.DataFrame:
        """The summary's main columns, rounded, for ``repr`` and notebooks."""
        return self.summary[[c for c in _SHOWN if c in self.summary]].round(2)

    def _heading(self) -> str:
        c = self.config
        n_categories = self.table["category"].nunique() if "category" in self.table else 0
        return (
            f"SweepResult of {self.model.get('name', 'a network')}: {len(self.table)} rows, "
            f"{n_categories} categories, β ∈ {{{', '.join(f'{b:g}' for b in c.betas)}}}"
        )

    def __repr__(self) -> str:
        return f"{self._heading()}\n{self._shown().to_string(index=False)}"

    def _repr_html_(self) -> str:
        """A compact table for notebooks: the performance increase with its interval."""
        return (
            f"<p><b>{html.escape(self._heading())}</b> (performance increase, pp, mean and 95 % "
            "interval over categories)</p>"
            + self._shown().to_html(index=False, border=0, classes="bioattn-sweep")
        )

    def save(self, folder: str | Path) -> Path:
        """Write the result to ``folder`` (created) and return it: the tables as ``bioattn
        sweep`` writes them (:func:`~bioattn.experiments.runfolder.write_tables`), the
        settings in ``config.json`` and the values in ``values.nc``."""
        from bioattn.attention.values import save_values
        from bioattn.experiments.runfolder import write_run_config, write_tables

        folder = Path(folder)
        write_tables(self.table, folder)
        write_run_config(folder, RESULT_KIND, {"sweep": self.config.to_dict()}, model=self.model)
        if self.values is not None:
            save_values(self.values, folder / "values.nc")
        return folder


def load_results(folder: str | Path) -> SweepResult:
    """Read a result written by :meth:`SweepResult.save` (or a ``bioattn sweep`` folder, whose
    values then come from its ``values.nc`` when it has one)."""
    from bioattn.attention.values import load_values
    from bioattn.report.folders import read_json, read_parquet

    folder = Path(folder)
    table_path = folder / "performance.parquet"
    if not table_path.exists():
        raise DataError(
            f"{folder} has no performance.parquet; give a folder written by SweepResult.save "
            "or `bioattn sweep`"
        )
    table = read_parquet(table_path)
    document = read_json(folder / "config.json") if (folder / "config.json").exists() else {}
    settings = document.get("settings", {})
    # SweepResult.save keeps the sweep under "sweep", `bioattn sweep` the whole experiment
    stored = settings.get("sweep") or settings.get("experiment", {}).get("sweep") or {}
    config = _sweep_config({k: v for k, v in stored.items() if k in _SWEEP_FIELDS})
    values_path = folder / "values.nc"
    values = load_values(values_path) if values_path.exists() else None
    return SweepResult(table, values, config, document.get("model", {}))


def _as_field(key: str, value: Any) -> Any:
    """A keyword's value as SweepConfig holds it: one name (``layers="conv3_1"``) or any
    sequence (a list, a range, a numpy array of β) as a tuple."""
    if key not in _TUPLE_FIELDS:
        return value
    if isinstance(value, str):
        return (value,)
    return tuple(value.tolist() if hasattr(value, "tolist") else value)


def _sweep_config(fields: dict[str, Any]) -> SweepConfig:
    """A SweepConfig from JSON (lists back to the tuples SweepConfig holds)."""
    return SweepConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def sweep(
    experiment: Experiment,
    layers: Sequence[str] | None = None,
    betas: Sequence[float] | None = None,
    *,
    progress: bool = True,
    engine: str | Evaluator = "batched",
    **config: Any,
) -> SweepResult:
    """Sweep attention over ``layers`` × ``betas`` on a prepared experiment.

    The sweep settings are the experiment's (``[sweep]`` of its config, see
    :class:`SweepConfig`) with ``layers``, ``betas`` and any other :class:`SweepConfig` field
    given as a keyword replaced, e.g. ``categories=["Bag"]``, ``methods=["gradient"]``,
    ``image_types=["merged"]``, ``all_layers=False``, ``n_pos=20``. ``None`` keeps the
    experiment's setting (all layers; :data:`~bioattn.experiments.sweep.DEFAULT_BETAS`).
    ``engine`` is :func:`~bioattn.experiments.sweep.run_sweep`'s.
    """
    if experiment.values is None:
        raise ConfigError(
            "the experiment has no attention values; prepare it with values=True (the default)"
        )
    unknown = sorted(set(config) - set(_SWEEP_FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown sweep settings {unknown}; valid: layers, betas, {', '.join(_SWEEP_FIELDS)}"
        )
    given = {"layers": layers, "betas": betas, **config}
    changes = {key: _as_field(key, value) for key, value in given.items() if value is not None}
    sweep_config = dataclasses.replace(experiment.config.sweep, **changes)
    table = run_sweep(
        experiment.network,
        experiment.detectors,
        experiment.values,
        experiment.test_images,
        sweep_config,
        progress=progress,
        engine=engine,
    )
    if 0.0 not in {float(b) for b in sweep_config.betas}:  # run_sweep added the baseline
        sweep_config = dataclasses.replace(sweep_config, betas=(0.0, *sweep_config.betas))
    return SweepResult(table, experiment.values, sweep_config, experiment.model_info)
