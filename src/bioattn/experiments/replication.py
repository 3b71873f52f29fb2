"""The Lindsay & Miller (2018) object-category experiment end to end, on one trained network
(:func:`run_replication`, ``bioattn demo``) or on several (:func:`run_replicate`,
``bioattn replicate``).

β is chosen on **selection images** (task sets drawn from the training split, their own seed
stream) and the performance increase Δ is measured on the **test images** at that β, so no
test image takes part in a choice and Δ is unbiased (it can be negative). The β curves are on
the selection images, where every β is evaluated; the test images are evaluated at β = 0 and
at the chosen β only.

A results folder of one network holds:

* ``config.json``: the run's full configuration (sweep, training settings, versions);
* ``values.nc``: tuning and gradient values (netCDF);
* ``selection.parquet``: performance on the selection images, every condition and β;
* ``performance.parquet``: performance on the test images at β = 0 and at the chosen β;
* ``gains.csv``: per (image type, category, layer, method) the chosen β, the held-out Δ (pp),
  Δd′, Δc, and the selection images' own (biased) Δ;
* ``summary.csv``: mean ± SEM of Δ across categories per layer and method;
* ``effects.csv``, ``comparisons.csv``, ``method_tests.csv``, ``findings.csv``: Δ with 95 %
  intervals, every comparison of the findings, gradient vs tuning per layer, and the verdicts
  (:mod:`bioattn.analysis.findings`);
* ``figures/``: PNG and SVG figures.

A folder of several networks holds one such folder per network (``network-<seed>/``) and the
pooled ``gains.csv`` (with a ``network`` column), ``effects.csv``, ``comparisons.csv``,
``method_tests.csv``, ``findings.csv`` and figures, with intervals over networks and categories.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd

from bioattn.analysis.findings import (
    comparisons,
    effects,
    method_tests,
    verdicts,
    with_reproduction,
)
from bioattn.analysis.sdt import choose_betas
from bioattn.attention.values import compute_values, save_values
from bioattn.data.fashion_mnist import load_fashion_mnist
from bioattn.data.imageset import resolve_categories
from bioattn.errors import ConfigError, DataError
from bioattn.experiments.runfolder import plot_run, write_csv, write_run_config, write_tables
from bioattn.experiments.sweep import SweepConfig, build_selection_sets, run_sweep
from bioattn.models.train import TrainSettings, load_default

__all__ = ["DEFAULT_SEEDS", "run_replicate", "run_replication", "write_findings"]

#: Networks trained by ``bioattn replicate`` by default (training seeds 0 … 4).
DEFAULT_SEEDS = 5


def run_replication(
    out_dir: str | Path,
    config: SweepConfig = SweepConfig(),
    settings: TrainSettings = TrainSettings(),
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Train or load the default network, compute values, choose β on selection images,
    measure on test images, write tables, findings and figures.

    Returns a dict with the summary table, the gains, the verdicts, the paths written and
    timings.
    """
    out_dir = Path(out_dir)
    # config.json marks a finished run (written last); a run that starts is not finished
    (out_dir / "config.json").unlink(missing_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    trained = load_default(settings, data_dir, progress=progress)
    timings["model"] = time.perf_counter() - started

    train = load_fashion_mnist("train", data_dir)
    test = load_fashion_mnist("test", data_dir)
    step = time.perf_counter()
    values = compute_values(
        trained.network,
        trained.detectors,
        train,
        config.image_types,
        seed=config.seed,
        progress=progress,
    )
    save_values(values, out_dir / "values.nc")
    timings["values"] = time.perf_counter() - step

    network, detectors = trained.network, trained.detectors
    categories = (
        list(detectors.categories)
        if config.categories is None
        else resolve_categories(config.categories, detectors.categories)
    )
    step = time.perf_counter()
    selection = run_sweep(
        network,
        detectors,
        values,
        None,
        config,
        progress,
        tasks=build_selection_sets(train, categories, config),
    )
    timings["selection_sweep"] = time.perf_counter() - step
    step = time.perf_counter()
    table = run_sweep(
        network, detectors, values, test, config, progress, chosen_betas=choose_betas(selection)
    )
    timings["test_sweep"] = time.perf_counter() - step
    gains, summary = write_tables(table, out_dir, selection=selection)
    found = write_findings(gains, out_dir)
    figures = plot_run(out_dir)
    timings["total"] = time.perf_counter() - started
    write_run_config(
        out_dir,
        "replication",
        _settings(config, settings),
        model={
            "name": network.name,
            "metrics": trained.metrics,
            "cache": str(trained.path),
        },
        results={"verdicts": _verdict_dict(found)},
        timings=timings,
    )
    return {
        "summary": summary,
        "gains": gains,
        "verdicts": found,
        "figures": figures,
        "timings": timings,
        "metrics": trained.metrics,
    }


def _settings(config: SweepConfig, settings: TrainSettings) -> dict[str, Any]:
    return {"sweep": config.to_dict(), "training": asdict(settings)}


def _verdict_dict(found: pd.DataFrame) -> dict[str, str]:
    return {str(row.finding): str(row.verdict) for row in found.itertuples()}


def write_findings(
    gains: pd.DataFrame, out_dir: Path, seed: int = 0, ssn: bool = False
) -> pd.DataFrame:
    """Write ``effects.csv``, ``comparisons.csv``, ``method_tests.csv`` and ``findings.csv``
    of held-out gains (one network, or several with a ``network`` column); return the
    verdicts. ``ssn``: the gains are an SSN-CNN's, so they also decide finding 6
    (:func:`~bioattn.analysis.findings.with_reproduction`)."""
    out_dir = Path(out_dir)
    table = comparisons(gains, seed=seed)
    if ssn:
        table = with_reproduction(table)
    found = verdicts(table)
    write_csv(effects(gains, seed=seed), out_dir / "effects.csv")
    write_csv(table, out_dir / "comparisons.csv")
    write_csv(method_tests(gains, seed=seed), out_dir / "method_tests.csv")
    write_csv(found, out_dir / "findings.csv")
    return found


def run_replicate(
    out_dir: str | Path,
    seeds: Sequence[int] = tuple(range(DEFAULT_SEEDS)),
    config: SweepConfig = SweepConfig(),
    settings: TrainSettings = TrainSettings(),
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """The replication on several networks trained the same way (training seeds ``seeds``).

    Each network's results go to ``out_dir/network-<seed>/`` (:func:`run_replication`); a
    network whose folder is complete with the same settings is reused, so an interrupted run
    resumes where it stopped, and a folder holding other settings is refused, never
    overwritten. The pooled tables and figures give each effect's mean with a 95 % interval
    over networks and categories (:mod:`bioattn.analysis.findings`).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("replicate needs at least one training seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"training seeds must differ, got {seeds}")
    out_dir = Path(out_dir)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    per_network = []
    metrics = {}
    for seed in seeds:
        folder = out_dir / f"network-{seed}"
        network_settings = replace(settings, seed=seed)
        step = time.perf_counter()
        if _complete(folder, _settings(config, network_settings)):
            gains = pd.read_csv(folder / "gains.csv", keep_default_na=False)
            written = json.loads((folder / "config.json").read_text())
            metrics[seed] = written["model"]["metrics"]
            # what the network cost when it ran, not the time to read it back
            timings[f"network-{seed}"] = written["timings_seconds"].get("total", 0.0)
        else:
            result = run_replication(folder, config, network_settings, data_dir, progress)
            gains, metrics[seed] = result["gains"], result["metrics"]
            timings[f"network-{seed}"] = time.perf_counter() - step
        per_network.append(gains.assign(network=seed))
    pooled = pd.concat(per_network, ignore_index=True)
    write_csv(pooled, out_dir / "gains.csv")
    found = write_findings(pooled, out_dir)
    figures = plot_run(out_dir)
    timings["this_run"] = time.perf_counter() - started
    timings["total"] = sum(v for k, v in timings.items() if k.startswith("network-"))
    write_run_config(
        out_dir,
        "replicate",
        {**_settings(config, settings), "seeds": seeds},
        model={
            "name": settings.architecture,
            "networks": {
                str(seed): {
                    "test_accuracy": m.get("test_accuracy"),
                    "detector_balanced_accuracy": m.get("detector_balanced_accuracy"),
                    "train_seconds": m.get("train_seconds"),
                }
                for seed, m in metrics.items()
            },
        },
        results={"verdicts": _verdict_dict(found)},
        timings=timings,
    )
    return {
        "effects": pd.read_csv(out_dir / "effects.csv"),
        "gains": pooled,
        "verdicts": found,
        "figures": figures,
        "timings": timings,
        "metrics": metrics,
    }


def _complete(folder: Path, settings: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a finished replication with ``settings``; refuse other
    settings (the folder is another run's results)."""
    config_path = folder / "config.json"
    if not config_path.exists():
        return False
    try:
        written = json.loads(config_path.read_text())
    except json.JSONDecodeError:
        return False  # an interrupted write: run again
    stored = json.loads(json.dumps(written.get("settings", {}), default=str))
    wanted = json.loads(json.dumps(settings, default=str))
    if written.get("kind") != "replication" or stored != wanted:
        differ = [
            f"{part}.{key}: {stored.get(part, {}).get(key)!r} there, {value!r} now"
            for part, section in wanted.items()
            for key, value in section.items()
            if stored.get(part, {}).get(key) != value
        ]
        raise DataError(
            f"{folder} holds a {written.get('kind')!r} run with other settings "
            f"({'; '.join(differ[:4]) or 'another kind of run'}); give another --out folder, "
            "or delete that folder to run it again"
        )
    return (folder / "gains.csv").exists()
