"""Sharded, resumable sweeps: one file per (category, layer setting), merged by ``collect``.

A sweep is split into shards, one per category and layer setting (each attended layer, and the
all-layers mode). Each shard's rows go atomically into ``RUN/shards/<shard>.parquet``, tagged
with the fingerprint of everything that defines them (sweep settings, network weights,
detectors, values, test images). Rerunning the same sweep skips the shards already finished; a
shard file that is truncated, unreadable, or from another sweep is recomputed (with a warning)
and never merged. A shard that fails is recorded in ``RUN/shards/<shard>.error.txt`` and the
others go on; the run then ends with :class:`SweepIncompleteError` naming the failures, and
rerunning retries only them. :func:`collect` merges the finished shards into the same table,
row for row, that one uninterrupted :func:`~bioattn.experiments.sweep.run_sweep` gives.

Shards are packed into jobs (several shards per job, so that a worker loads the model once per
job) and run by an executor: ``local`` (in this process), ``process`` (a pool of worker
processes, each loading the experiment from its config) or ``submitit`` (Slurm through the
optional ``submitit`` package, all jobs as one job array; its local executor runs the same jobs
on this machine). A submitit job that fails as a whole fails each of its unfinished shards.
``process`` workers end with the sweep's process, however it ends (``kill -9`` included).

A configured sweep holds ``RUN/.lock`` (an exclusive ``flock``) from start to end, so that two
sweeps never write one folder at once. The file names the holder (PID, host, settings hash,
fingerprint); a second sweep with other settings is refused at once with
:class:`RunFolderBusyError`, one with the same settings waits for the first and then finds its
shards finished. The file goes when the sweep ends; the kernel drops the lock of a killed sweep,
so the file such a sweep leaves behind never blocks: its content is information only.

``RUN/shards/manifest.json`` is the plan ``collect`` merges; it is not what makes a shard
trusted. A damaged manifest, or one of another sweep, is rewritten, and each shard is still
judged by its own tag: shards of this sweep are kept, others recomputed, never merged.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr

from bioattn.cache import atomic_write_bytes, update_with_module, update_with_tensor
from bioattn.data.imageset import ImageSet
from bioattn.data.tasks import TaskSet
from bioattn.errors import BioattnError, ConfigError, DataError
from bioattn.experiments.config import EXECUTORS, ExperimentConfig
from bioattn.experiments.prepare import prepare
from bioattn.experiments.runfolder import plot_run, write_run_config, write_tables
from bioattn.experiments.sweep import (
    ALL_LAYERS,
    PERFORMANCE_COLUMNS,
    SweepConfig,
    resolve_sweep,
    run_sweep,
)
from bioattn.logs import progress_bar
from bioattn.models.detectors import Detectors
from bioattn.models.network import Network

try:
    import fcntl
except ImportError:  # Windows: no flock; run folders are then not locked
    fcntl = None  # type: ignore[assignment]

SHARD_FOLDER = "shards"
LOCK_FILE = ".lock"
_METADATA_KEY = b"bioattn_shard"

log = logging.getLogger(__name__)


class SweepIncompleteError(BioattnError):
    """Some shards of a sweep failed; the finished ones are kept and a rerun retries the rest."""


class RunFolderBusyError(ConfigError):
    """The run folder is held by a sweep with other settings (or by this very process, which
    would wait for itself)."""


@dataclass(frozen=True)
class Shard:
    """One category and one layer setting (a layer alias, or ``"all"``) of a sweep."""

    category: str
    layer: str

    @property
    def name(self) -> str:
        """File-name-safe, unique name (the category's characters beyond [A-Za-z0-9] hashed)."""
        safe = re.sub(r"[^A-Za-z0-9]+", "-", self.category).strip("-") or "category"
        digest = hashlib.sha256(self.category.encode()).hexdigest()[:6]
        layer = self.layer
        if re.search(r"[^A-Za-z0-9_.-]", layer):  # site names such as layer1.0.relu:1, V4.r:*
            tail = hashlib.sha256(layer.encode()).hexdigest()[:6]
            layer = re.sub(r"[^A-Za-z0-9_.-]+", "-", layer).strip("-") + f"-{tail}"
        return f"{safe}-{digest}__{layer}"

    def config(self, sweep: SweepConfig) -> SweepConfig:
        """The sweep restricted to this shard."""
        if self.layer == ALL_LAYERS:
            return replace(sweep, categories=(self.category,), layers=(), all_layers=True)
        return replace(sweep, categories=(self.category,), layers=(self.layer,), all_layers=False)


def plan_shards(
    network: Network, detectors: Detectors, values: xr.Dataset, sweep: SweepConfig, tasks=None
) -> list[Shard]:
    """Every shard of ``sweep``, in the order an uninterrupted sweep writes its rows."""
    resolved = resolve_sweep(sweep, network, detectors, values, tasks)
    layers = [layer.alias for layer in resolved.layers]
    if resolved.config.all_layers:
        layers.append(ALL_LAYERS)
    return [Shard(c, layer) for c in resolved.categories for layer in layers]


def sweep_fingerprint(
    network: Network,
    detectors: Detectors,
    values: xr.Dataset,
    test_images: ImageSet | None,
    sweep: SweepConfig,
    tasks: Mapping[tuple[str, str], TaskSet] | None = None,
) -> str:
    """A hash of everything that determines a sweep's rows; shards of other sweeps differ."""
    digest = hashlib.sha256()
    settings = asdict(replace(sweep, categories=None, layers=None, all_layers=True))
    settings["precision"] = network.precision  # float32 and half-precision rows never mix
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    update_with_module(digest, network.module)
    detectors.update_digest(digest)
    for name in sorted(values.data_vars):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(values[name].values).tobytes())
    if test_images is not None:
        update_with_tensor(digest, test_images.images)
        update_with_tensor(digest, test_images.labels)
    for key in sorted(tasks or {}):
        digest.update(repr(key).encode())
        update_with_tensor(digest, tasks[key].images)
        update_with_tensor(digest, tasks[key].is_target)
        digest.update(repr(tasks[key].cued_quadrant).encode())
    return digest.hexdigest()[:24]


def _shard_path(run_dir: Path, shard: Shard) -> Path:
    return run_dir / SHARD_FOLDER / f"{shard.name}.parquet"


def _error_path(run_dir: Path, shard: Shard) -> Path:
    return run_dir / SHARD_FOLDER / f"{shard.name}.error.txt"


def write_shard(
    path: Path, table: pd.DataFrame, fingerprint: str, shard: Shard, seconds: float = 0.0
) -> None:
    """Write a shard's rows atomically, tagged with the sweep's fingerprint, its row count and
    the seconds it took to compute."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    tag = {"fingerprint": fingerprint, "category": shard.category, "layer": shard.layer}
    tag["rows"] = len(table)
    tag["seconds"] = round(float(seconds), 3)
    arrow = arrow.replace_schema_metadata(
        {**(arrow.schema.metadata or {}), _METADATA_KEY: json.dumps(tag).encode()}
    )
    sink = pa.BufferOutputStream()
    pq.write_table(arrow, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def shard_seconds(run_dir: Path, shard: Shard) -> float:
    """The compute time a finished shard's tag records (0 when it has none or is unreadable)."""
    try:
        raw = (pq.read_schema(_shard_path(Path(run_dir), shard)).metadata or {}).get(_METADATA_KEY)
        return float(json.loads(raw).get("seconds", 0.0)) if raw else 0.0
    except (OSError, pa.ArrowException, ValueError):
        return 0.0


def read_shard(path: Path, fingerprint: str, shard: Shard) -> pd.DataFrame:
    """A finished shard's rows; :class:`DataError` if the file is damaged or from another sweep."""
    try:
        arrow = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"shard file {path} cannot be read ({error})") from None
    raw = (arrow.schema.metadata or {}).get(_METADATA_KEY)
    if raw is None:
        raise DataError(f"shard file {path} has no bioattn tag; it was not written by a sweep")
    tag = json.loads(raw)
    if tag.get("fingerprint") != fingerprint:
        raise DataError(
            f"shard file {path} belongs to another sweep (fingerprint {tag.get('fingerprint')}, "
            f"this sweep {fingerprint}: other settings, weights, detectors, values or images)"
        )
    if (tag.get("category"), tag.get("layer")) != (shard.category, shard.layer):
        raise DataError(f"shard file {path} holds {tag.get('category')}/{tag.get('layer')}")
    table = arrow.to_pandas()
    if len(table) != tag.get("rows") or list(table.columns) != PERFORMANCE_COLUMNS:
        raise DataError(f"shard file {path} is incomplete ({len(table)} of {tag.get('rows')} rows)")
    return table


@dataclass
class ShardOutcome:
    """What happened to one shard in one run."""

    shard: Shard
    status: str  # "done", "skipped" (finished earlier) or "failed"
    error: str = ""


def run_shards(
    network: Network,
    detectors: Detectors,
    values: xr.Dataset,
    test_images: ImageSet | None,
    sweep: SweepConfig,
    run_dir: str | Path,
    shards: Sequence[Shard],
    fingerprint: str,
    tasks: Mapping[tuple[str, str], TaskSet] | None = None,
    progress: bool = True,
) -> list[ShardOutcome]:
    """Run the given shards in this process, skipping finished ones; never raises for a shard.

    This is what every executor's job runs (a job is a list of shards).
    """
    run_dir = Path(run_dir)
    (run_dir / SHARD_FOLDER).mkdir(parents=True, exist_ok=True)
    outcomes = []
    bar = progress_bar(shards, desc="shards", disable=not progress, leave=False)
    for shard in bar:
        _exit_if_orphaned()  # a pool worker whose sweep has gone starts no new shard
        path, error_path = _shard_path(run_dir, shard), _error_path(run_dir, shard)
        if _finished(run_dir, shard, fingerprint):
            outcomes.append(ShardOutcome(shard, "skipped"))
            continue
        try:
            began = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the β = 0 note was given once for the sweep
                table = run_sweep(
                    network,
                    detectors,
                    values,
                    test_images,
                    shard.config(sweep),
                    progress=False,
                    tasks=tasks,
                )
            write_shard(path, table, fingerprint, shard, time.perf_counter() - began)
            error_path.unlink(missing_ok=True)
            outcomes.append(ShardOutcome(shard, "done"))
        except Exception as error:  # a failed shard must not lose the others
            text = "".join(traceback.format_exception(error))
            atomic_write_bytes(error_path, text.encode())
            outcomes.append(ShardOutcome(shard, "failed", f"{type(error).__name__}: {error}"))
    return outcomes


def _manifest_path(run_dir: Path) -> Path:
    return run_dir / SHARD_FOLDER / "manifest.json"


def write_manifest(
    run_dir: Path, fingerprint: str, shards: Sequence[Shard], rows: Mapping[str, int]
) -> None:
    """The shard plan of a run: what ``collect`` must find, in which order."""
    manifest = {
        "fingerprint": fingerprint,
        "shards": [
            {"category": s.category, "layer": s.layer, "name": s.name, "rows": rows[s.name]}
            for s in shards
        ],
    }
    atomic_write_bytes(_manifest_path(run_dir), json.dumps(manifest, indent=2).encode())


def collect(run_dir: str | Path) -> pd.DataFrame:
    """Merge a run's shards into its performance table (the order of an uninterrupted sweep).

    Raises :class:`SweepIncompleteError` listing the shards that are missing or failed.
    """
    run_dir = Path(run_dir)
    path = _manifest_path(run_dir)
    if not path.exists():
        raise DataError(
            f"{run_dir} has no {SHARD_FOLDER}/manifest.json; give the folder of a sharded sweep "
            "(`bioattn sweep --out FOLDER`)"
        )
    try:
        manifest = json.loads(path.read_text())
        fingerprint = manifest["fingerprint"]
        shards = [Shard(s["category"], s["layer"]) for s in manifest["shards"]]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path} is damaged ({error}); rerun the sweep to rewrite it") from None
    tables, missing = [], []
    for shard in shards:
        shard_path = _shard_path(run_dir, shard)
        error_path = _error_path(run_dir, shard)
        if not shard_path.exists():
            reason = "failed" if error_path.exists() else "not run yet"
            missing.append(f"{shard.category}/{shard.layer} ({reason})")
            continue
        try:
            tables.append(read_shard(shard_path, fingerprint, shard))
        except DataError as problem:
            missing.append(f"{shard.category}/{shard.layer} ({problem})")
    if missing:
        raise SweepIncompleteError(
            f"{len(missing)} of {len(shards)} shards are not finished: {'; '.join(missing[:5])}"
            f"{' …' if len(missing) > 5 else ''}. Rerun the same sweep to compute them (finished "
            f"shards are kept); error details in {run_dir / SHARD_FOLDER}/*.error.txt"
        )
    return _canonical_order(pd.concat(tables, ignore_index=True), shards)


def _canonical_order(table: pd.DataFrame, shards: Sequence[Shard]) -> pd.DataFrame:
    """Rows as :func:`run_sweep` orders them: image type, category, layer setting, method, β."""
    categories = list(dict.fromkeys(s.category for s in shards))
    layers = list(dict.fromkeys(s.layer for s in shards))
    image_types = list(dict.fromkeys(table["image_type"]))
    methods = list(dict.fromkeys(table["method"]))
    keys = pd.DataFrame(
        {
            "t": table["image_type"].map(image_types.index),
            "c": table["category"].map(categories.index),
            "l": table["layer"].map(layers.index),
            "m": table["method"].map(methods.index),
        }
    )
    order = keys.sort_values(["t", "c", "l", "m"], kind="stable").index
    return table.loc[order].reset_index(drop=True)


# --- executors -------------------------------------------------------------------------------


def pack_jobs(shards: Sequence[Shard], workers: int, shards_per_job: int = 0) -> list[list[Shard]]:
    """Split shards into jobs: ``shards_per_job`` each, or evenly into ``workers`` jobs (0)."""
    if not shards:
        return []
    size = shards_per_job or -(-len(shards) // max(1, workers))
    return [list(shards[i : i + size]) for i in range(0, len(shards), size)]


#: A job: loads the experiment, then runs a list of shards; returns their outcomes.
JobFunction = Callable[[Sequence[Shard]], list[ShardOutcome]]


def run_jobs(
    job: Callable[..., list[ShardOutcome]],
    job_args: tuple,
    jobs: Sequence[Sequence[Shard]],
    executor: str = "local",
    workers: int = 2,
    folder: Path | None = None,
    submitit_parameters: Mapping[str, Any] | None = None,
) -> list[ShardOutcome]:
    """Run ``job(*job_args, shards)`` for every job with the chosen executor.

    ``process`` and ``submitit`` pickle ``job`` and ``job_args``, so ``job`` must be a
    module-level function and its arguments plain data (e.g. an experiment config).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if executor == "local":
        return [outcome for shards in jobs for outcome in job(*job_args, shards)]
    if executor == "process":
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        # spawn: a forked torch process can deadlock in its thread pools
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=get_context("spawn"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            try:
                futures = [pool.submit(job, *job_args, shards) for shards in jobs]
                return [outcome for future in futures for outcome in future.result()]
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # start no queued job
                raise
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "executor 'submitit' needs the submitit package: pip install 'bioattn[cluster]'"
        ) from None
    submit_folder = (folder or Path("submitit")) / "submitit"
    cluster = os.environ.get("BIOATTN_SUBMITIT_CLUSTER")  # "local" / "debug" for tests
    auto = submitit.AutoExecutor(folder=submit_folder, cluster=cluster)
    auto.update_parameters(**dict(submitit_parameters or {}))
    return run_job_array(auto, job, job_args, jobs, folder)


def run_job_array(
    executor: Any,
    job: Callable[..., list[ShardOutcome]],
    job_args: tuple,
    jobs: Sequence[Sequence[Shard]],
    run_dir: Path | None = None,
) -> list[ShardOutcome]:
    """Submit every job as one job array of a submitit ``executor`` and wait for them all.

    One array is one Slurm submission however many jobs it holds (jobs submitted one by one
    are as many submissions, which clusters limit). Shard failures inside a job are reported
    by the job itself. A job that fails as a whole (killed, out of memory, its experiment not
    loading) does not lose the other jobs' outcomes: with ``run_dir``, each of its shards whose
    file it wrote before failing is ``done``, and every other one ``failed`` with the job's
    error, also written to the shard's error file; without ``run_dir`` all its shards fail.
    """
    jobs = [list(shards) for shards in jobs]
    if not jobs:
        return []
    # the shard files as they were: a failed job may still have finished some of its shards
    before = {s.name: _mtime(run_dir, s) for shards in jobs for s in shards} if run_dir else {}
    # map_array takes one iterable per argument: the shared arguments repeat for every job
    handles = executor.map_array(job, *([arg] * len(jobs) for arg in job_args), jobs)
    outcomes: list[ShardOutcome] = []
    for shards, handle in zip(jobs, handles, strict=True):
        try:
            outcomes += handle.result()
        except Exception as error:  # the whole job failed, not one of its shards
            message = (
                f"job {getattr(handle, 'job_id', '?')} failed: {type(error).__name__}: {error}"
            )
            for shard in shards:
                if run_dir is None:
                    outcomes.append(ShardOutcome(shard, "failed", message))
                    continue
                written = _mtime(run_dir, shard)
                if written is not None and written != before[shard.name]:
                    outcomes.append(ShardOutcome(shard, "done"))  # written atomically: whole
                    continue
                path = _error_path(Path(run_dir), shard)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, message.encode())
                outcomes.append(ShardOutcome(shard, "failed", message))
    return outcomes


def _mtime(run_dir: Path, shard: Shard) -> int | None:
    """Modification time (ns) of a shard's file, ``None`` when there is none."""
    try:
        return _shard_path(Path(run_dir), shard).stat().st_mtime_ns
    except FileNotFoundError:
        return None


#: The sweep process a pool worker serves (set in the worker by :func:`_die_with_parent`).
_POOL_PARENT: int | None = None
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Pool-worker initializer: end this worker when the sweep process ``parent`` ends.

    On Linux the kernel sends SIGKILL the moment the parent dies (``prctl(PR_SET_PDEATHSIG)``);
    everywhere a watcher thread, and a check before each shard, exit once the worker's parent
    is no longer ``parent`` (an orphan is adopted by another process).
    """
    global _POOL_PARENT
    _POOL_PARENT = parent
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watcher below still ends the worker
            pass
    _exit_if_orphaned()  # the parent died before prctl took effect
    watcher = threading.Thread(target=_watch_parent, name="bioattn-parent-watch", daemon=True)
    watcher.start()


def _exit_if_orphaned() -> None:
    if _POOL_PARENT is not None and os.getppid() != _POOL_PARENT:
        os._exit(1)  # nothing to report to: the sweep that would read it is gone


def _watch_parent() -> None:
    while True:
        time.sleep(0.5)
        _exit_if_orphaned()


def summarise_outcomes(outcomes: Iterable[ShardOutcome]) -> dict[str, int]:
    """How many shards were done, skipped and failed."""
    counts = {"done": 0, "skipped": 0, "failed": 0}
    for outcome in outcomes:
        counts[outcome.status] += 1
    return counts


# --- a configured sweep, end to end ------------------------------------------------------------


def _experiment_job(config: ExperimentConfig, shards: Sequence[Shard]) -> list[ShardOutcome]:
    """One job of a configured sweep: load the experiment once, run its shards."""
    experiment = prepare(config, progress=False)
    fingerprint = sweep_fingerprint(
        experiment.network,
        experiment.detectors,
        experiment.values,
        experiment.test_images,
        config.sweep,
    )
    return run_shards(
        experiment.network,
        experiment.detectors,
        experiment.values,
        experiment.test_images,
        config.sweep,
        config.run.out,
        shards,
        fingerprint,
        progress=False,
    )


def run_configured_sweep(config: ExperimentConfig, progress: bool = True) -> dict[str, Any]:
    """Run an :class:`~bioattn.experiments.config.ExperimentConfig`'s sweep, sharded and resumable.

    Loads the experiment (fitting detectors and computing values once if needed), plans the
    shards, runs the unfinished ones with the configured executor, merges them, and writes the
    results folder (tables, figures, ``config.json``). Raises :class:`SweepIncompleteError` when
    shards failed; the finished ones stay and a rerun retries the rest.

    The whole run holds the run folder's lock (see :func:`lock_run_folder`): while another
    sweep runs there, one with other settings raises :class:`RunFolderBusyError` at once and one
    with the same settings waits for it, then reuses its shards.
    """
    started = time.perf_counter()
    with lock_run_folder(config.run.out, settings_key(config)) as lock:
        return _run_configured_sweep(config, progress, lock, started)


def _run_configured_sweep(
    config: ExperimentConfig, progress: bool, lock: RunFolderLock, started: float
) -> dict[str, Any]:
    run_dir = Path(config.run.out)
    experiment = prepare(config, progress=progress)
    network, detectors, values = experiment.network, experiment.detectors, experiment.values
    resolved = resolve_sweep(config.sweep, network, detectors, values)
    for note in resolved.notes:
        warnings.warn(note, stacklevel=3)
    sweep = resolved.config
    config = replace(config, sweep=sweep)
    fingerprint = sweep_fingerprint(network, detectors, values, experiment.test_images, sweep)
    lock.record(fingerprint)
    shards = plan_shards(network, detectors, values, sweep)
    # each shard holds one layer setting of one category: every image type, method and β
    per_shard = len(sweep.image_types) * len(resolved.methods) * len(sweep.betas)
    rows = {s.name: per_shard for s in shards}
    problem = _manifest_problem(run_dir, fingerprint)
    if problem:
        kept = sum(_tagged(run_dir, s, fingerprint) for s in shards)
        warnings.warn(
            f"{problem}; it is rewritten. Each shard is checked against its own tag: {kept} of "
            f"{len(shards)} belong to this sweep and are kept, the other {len(shards) - kept} "
            "are computed (shards of other settings are never merged)",
            stacklevel=3,
        )
    write_manifest(run_dir, fingerprint, shards, rows)
    log.info("sweep: %d shards in %s", len(shards), run_dir)
    precision = (
        precision_check(experiment, sweep, shards[0].category)
        if network.precision != "float32" and shards
        else None
    )
    if config.run.executor == "local":  # run_shards skips the finished shards itself
        outcomes = run_shards(
            network,
            detectors,
            values,
            experiment.test_images,
            sweep,
            run_dir,
            shards,
            fingerprint,
            progress=progress,
        )
    else:
        pending = [s for s in shards if not _finished(run_dir, s, fingerprint)]
        outcomes = [ShardOutcome(s, "skipped") for s in shards if s not in set(pending)]
        if pending:
            jobs = pack_jobs(pending, config.run.workers, config.run.shards_per_job)
            outcomes += run_jobs(
                _experiment_job,
                (config,),
                jobs,
                config.run.executor,
                config.run.workers,
                folder=run_dir,
                submitit_parameters=config.run.submitit_parameters(),
            )
    counts = summarise_outcomes(outcomes)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise SweepIncompleteError(
            f"{len(failed)} of {len(shards)} shards failed ({counts['done']} computed now, "
            f"{counts['skipped']} finished earlier): "
            + "; ".join(f"{o.shard.category}/{o.shard.layer}: {o.error}" for o in failed[:3])
            + f". Details in {run_dir / SHARD_FOLDER}/*.error.txt; rerun to retry them."
        )
    table = collect(run_dir)
    gains, summary = write_tables(table, run_dir)
    figures = plot_run(run_dir)
    write_run_config(
        run_dir,
        "sweep",
        {"experiment": config.to_dict(), "fingerprint": fingerprint},
        model={"name": network.name, "device": str(network.device)},
        results={"shards": counts, "precision_check": precision},
        timings=_sweep_timings(run_dir, outcomes, time.perf_counter() - started),
    )
    return {"table": table, "gains": gains, "summary": summary, "figures": figures, **counts}


def _sweep_timings(
    run_dir: Path, outcomes: Sequence[ShardOutcome], this_run: float
) -> dict[str, float]:
    """This invocation's wall time, the compute time of shards finished by earlier (resumed)
    invocations, read from their tags, and their sum."""
    earlier = sum(shard_seconds(run_dir, o.shard) for o in outcomes if o.status == "skipped")
    return {"total": this_run + earlier, "this_run": this_run, "earlier_runs": earlier}


#: Largest change of performance ((TP + TN) / 2) from reduced precision that passes unremarked.
PRECISION_TOLERANCE = 0.02


def precision_check(experiment: Any, sweep: SweepConfig, category: str) -> dict[str, Any]:
    """One category's rows (every layer setting) at the network's reduced precision against
    float32: the largest changes. Warns when performance moves by more than
    :data:`PRECISION_TOLERANCE` anywhere.
    """
    network = experiment.network
    precision = network.precision
    args = (network, experiment.detectors, experiment.values, experiment.test_images)
    checked = replace(sweep, categories=(category,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reduced = run_sweep(*args, checked, progress=False)
        network.precision = "float32"
        try:
            full = run_sweep(*args, checked, progress=False)
        finally:
            network.precision = precision
    check: dict[str, Any] = {"precision": precision, "category": category, "rows": len(full)}
    for column in ("tp", "fp", "performance", "dprime", "criterion"):
        check[f"max_abs_diff_{column}"] = float((reduced[column] - full[column]).abs().max())
    if check["max_abs_diff_performance"] > PRECISION_TOLERANCE:
        warnings.warn(
            f"{precision} changes performance by up to {check['max_abs_diff_performance']:.3f} "
            f"against float32 on {category}; consider float32",
            stacklevel=2,
        )
    return check


def _manifest_problem(run_dir: Path, fingerprint: str) -> str | None:
    """What is wrong with the run folder's manifest for this sweep (None: absent or its own)."""
    path = _manifest_path(run_dir)
    if not path.exists():
        return None
    try:
        previous = json.loads(path.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as error:  # ValueError: JSON, UTF-8
        return f"{path} is damaged ({type(error).__name__}: {error})"
    if previous != fingerprint:
        return (
            f"{path} was written by another sweep (fingerprint {previous!r}, this sweep "
            f"{fingerprint})"
        )
    return None


def _tagged(run_dir: Path, shard: Shard, fingerprint: str) -> bool:
    """Whether a shard file is finished and tagged as this sweep's (no warning)."""
    try:
        read_shard(_shard_path(run_dir, shard), fingerprint, shard)
        return True
    except DataError:
        return False


def _finished(run_dir: Path, shard: Shard, fingerprint: str) -> bool:
    path = _shard_path(run_dir, shard)
    if not path.exists():
        return False
    try:
        read_shard(path, fingerprint, shard)
        return True
    except DataError as problem:
        warnings.warn(f"{problem}; computing it again", stacklevel=2)
        return False


# --- the run folder's lock ------------------------------------------------------------------


def settings_key(config: ExperimentConfig) -> str:
    """A hash of what defines a configured sweep's rows, known before anything is loaded: the
    whole config less ``[run]`` (where it goes, and how the work is spread)."""
    settings = {k: v for k, v in config.to_dict().items() if k != "run"}
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunFolderLock:
    """The held lock of a run folder; :meth:`record` adds the sweep's fingerprint to its file."""

    def __init__(self, fd: int, path: Path, settings: str) -> None:
        self.fd, self.path, self.settings = fd, path, settings
        self.info: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "settings": settings,
            "fingerprint": None,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def record(self, fingerprint: str | None) -> None:
        """Write who holds the lock into the lock file, in place (the lock is on this inode)."""
        self.info["fingerprint"] = fingerprint
        data = json.dumps(self.info).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        info = json.loads(os.pread(fd, 65536, 0) or b"null")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _holder_running(info: Mapping[str, Any]) -> bool:
    """Whether the lock file names a live process (one on another host is taken as live)."""
    pid = info.get("pid")
    if not isinstance(pid, int):
        return False
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(info: Mapping[str, Any]) -> str:
    if not info:
        return "a process that has not written its details"
    fingerprint = info.get("fingerprint") or "not computed yet"
    return (
        f"PID {info.get('pid')} on {info.get('host')} since {info.get('since')} (settings "
        f"{info.get('settings')}, fingerprint {fingerprint})"
    )


@contextmanager
def lock_run_folder(run_dir: str | Path, settings: str) -> Iterator[RunFolderLock]:
    """Hold ``RUN/.lock`` exclusively for the block; released on any exit.

    While another process holds it: if its lock file names other ``settings``, raise
    :class:`RunFolderBusyError` (naming the folder and that process) without waiting; if the same
    settings, warn and wait until it ends (its finished shards are then reused). On release the
    lock file is removed (and the run folder, if this call made it and nothing was written);
    the kernel releases the lock of a process that ends any other way, so a lock file left by a
    killed sweep never blocks: it only tells who held it. Without ``fcntl`` (Windows) nothing
    is locked.
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    path = run_dir / LOCK_FILE
    fd = _open_locked(path, run_dir, settings)
    try:
        lock = RunFolderLock(fd, path, settings)
        lock.record(None)
        yield lock
    finally:
        with suppress(OSError):
            path.unlink()  # still held: a waiter on this file sees it gone and locks a new one
        os.close(fd)  # drops the flock
        if created:
            with suppress(OSError):
                run_dir.rmdir()  # only when empty: a sweep refused before writing anything


def _open_locked(path: Path, run_dir: Path, settings: str) -> int:
    """A descriptor of ``path`` holding its flock, once the file is still the one at ``path``."""
    while True:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is None:
                return fd
            _acquire(fd, run_dir, settings)
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed the file while this one waited: lock the new one


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _acquire(fd: int, run_dir: Path, settings: str) -> None:
    deadline = time.monotonic() + 2.0  # a new holder writes its details right after locking
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = _read_holder(fd)
        if _holder_running(holder) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    mine = holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()
    if holder.get("settings") != settings or mine:  # waiting for oneself would never end
        other = "this process's own unfinished sweep" if mine else "a sweep with other settings"
        raise RunFolderBusyError(
            f"run folder {run_dir} is in use by {other}: {_describe(holder)}; this sweep has "
            f"settings {settings}. Wait for it to end, or give this sweep another --out folder"
        )
    warnings.warn(
        f"run folder {run_dir} is in use by a sweep with the same settings ({_describe(holder)});"
        " waiting for it to end, then reusing its shards",
        stacklevel=4,
    )
    fcntl.flock(fd, fcntl.LOCK_EX)
