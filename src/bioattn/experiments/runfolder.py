"""Results folders: one writer for what every command leaves behind.

A results folder holds ``config.json`` (one schema for every command, see
:func:`write_run_config`), the long-form tables (``performance.parquet``, ``gains.csv``,
``summary.csv``; :func:`write_tables`) and ``figures/`` (PNG + SVG; :func:`plot_run`).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bioattn import __version__
from bioattn.analysis.figures import (
    plot_dprime_criterion_vs_beta,
    plot_performance_increase,
    plot_rates_vs_beta,
)
from bioattn.analysis.sdt import held_out_gains, layer_summary, performance_gains
from bioattn.cache import atomic_path, atomic_write_bytes
from bioattn.errors import DataError

#: Version of the ``config.json`` layout.
CONFIG_SCHEMA = 1

__all__ = [
    "CONFIG_SCHEMA",
    "environment_info",
    "gains_of",
    "plot_run",
    "write_csv",
    "write_run_config",
    "write_tables",
]


def environment_info() -> dict[str, str]:
    """Software versions and machine, recorded with every run."""
    return {
        "bioattn": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": str(torch.get_num_threads()),
    }


def write_run_config(
    run_dir: str | Path,
    kind: str,
    settings: Mapping[str, Any],
    *,
    model: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
) -> Path:
    """Write ``run_dir/config.json`` atomically, in the one layout every command uses.

    Keys: ``schema`` (:data:`CONFIG_SCHEMA`), ``kind`` (which command or experiment wrote it),
    ``settings`` (everything that defines the run), ``model`` (name, weights, metrics, cache),
    ``results`` (small results worth keeping beside the tables: failures, checks, counts),
    ``environment`` (:func:`environment_info`) and ``timings_seconds``.
    """
    path = Path(run_dir) / "config.json"
    document = {
        "schema": CONFIG_SCHEMA,
        "kind": kind,
        "settings": dict(settings),
        "model": dict(model or {}),
        "results": dict(results or {}),
        "environment": environment_info(),
        "timings_seconds": {k: round(float(v), 1) for k, v in (timings or {}).items()},
    }
    atomic_write_bytes(path, json.dumps(document, indent=2, default=str).encode())
    return path


def write_tables(
    table: pd.DataFrame, out_dir: Path, selection: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the performance table, per-category gains and layer summary; return the last two.

    With ``selection`` (a sweep of the same conditions on selection images, written as
    ``selection.parquet``) the gains are held out: β chosen on the selection images, Δ
    measured on ``table``'s test images (:func:`~bioattn.analysis.sdt.held_out_gains`); without
    it, the best β over ``table`` itself (:func:`~bioattn.analysis.sdt.performance_gains`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "performance.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    if selection is not None:
        with atomic_path(out_dir / "selection.parquet") as tmp:
            selection.to_parquet(tmp, index=False)
    gains = gains_of(table, selection)
    summary = layer_summary(gains)
    write_csv(gains, out_dir / "gains.csv")
    write_csv(summary, out_dir / "summary.csv")
    return gains, summary


def gains_of(table: pd.DataFrame, selection: pd.DataFrame | None) -> pd.DataFrame:
    """Held-out gains when there is a selection table, else the best β over ``table``."""
    if selection is None:
        return performance_gains(table)
    return held_out_gains(selection, table)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write one table as CSV atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def plot_run(run_dir: str | Path) -> list[Path]:
    """(Re)draw every figure of a results folder from its performance table.

    A folder with ``selection.parquet`` (a replication) shows held-out gains with their
    intervals (``effects.csv`` when present) and draws the β curves from the selection images,
    where every β was evaluated; a folder of several networks (``effects.csv`` only) gets the
    performance increase with intervals over networks.
    """
    run_dir = Path(run_dir)
    table_path = run_dir / "performance.parquet"
    effects_path = run_dir / "effects.csv"
    figures = run_dir / "figures"
    if not table_path.exists() and effects_path.exists():  # several networks, pooled
        return plot_performance_increase(
            pd.read_csv(effects_path), figures / "performance_increase"
        )
    if not table_path.exists():
        raise DataError(
            f"{run_dir} has no performance.parquet; give a results folder written by "
            "`bioattn sweep` or `bioattn demo`"
        )
    table = pd.read_parquet(table_path)
    selection_path = run_dir / "selection.parquet"
    selection = pd.read_parquet(selection_path) if selection_path.exists() else None
    if effects_path.exists():
        summary = pd.read_csv(effects_path)
    else:
        summary = layer_summary(gains_of(table, selection))
    curves = table if selection is None else selection
    paths = plot_performance_increase(summary, figures / "performance_increase")
    paths += plot_rates_vs_beta(curves, figures / "tp_fp_vs_beta")
    paths += plot_dprime_criterion_vs_beta(curves, figures / "dprime_criterion_vs_beta")
    return paths
