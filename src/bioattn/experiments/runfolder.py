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
from bioattn.analysis.sdt import layer_summary, performance_gains
from bioattn.cache import atomic_path, atomic_write_bytes
from bioattn.errors import DataError

#: Version of the ``config.json`` layout.
CONFIG_SCHEMA = 1

__all__ = ["CONFIG_SCHEMA", "environment_info", "plot_run", "write_run_config", "write_tables"]


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


def write_tables(table: pd.DataFrame, out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the performance table, per-category gains and layer summary; return the last two."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "performance.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    gains = performance_gains(table)
    summary = layer_summary(gains)
    for frame, name in ((gains, "gains.csv"), (summary, "summary.csv")):
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
    return gains, summary


def plot_run(run_dir: str | Path) -> list[Path]:
    """(Re)draw every figure of a results folder from its performance table."""
    run_dir = Path(run_dir)
    table_path = run_dir / "performance.parquet"
    if not table_path.exists():
        raise DataError(
            f"{run_dir} has no performance.parquet; give a results folder written by "
            "`bioattn sweep` or `bioattn demo`"
        )
    table = pd.read_parquet(table_path)
    summary = layer_summary(performance_gains(table))
    figures = run_dir / "figures"
    paths = plot_performance_increase(summary, figures / "performance_increase")
    paths += plot_rates_vs_beta(table, figures / "tp_fp_vs_beta")
    paths += plot_dprime_criterion_vs_beta(table, figures / "dprime_criterion_vs_beta")
    return paths
