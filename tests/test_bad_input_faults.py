"""Faults around a sharded sweep's run folder: a killed parent takes its pool workers with it,
two sweeps never share a folder at once, and a bad manifest never decides which rows merge."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bioattn.experiments.config import load_config
from bioattn.experiments.shards import (
    RunFolderBusyError,
    lock_run_folder,
    run_configured_sweep,
    settings_key,
)
from tests.test_shards import _SLOW_RUN, ROOT, configured

PROC = Path("/proc")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(), start_new_session=True)


def _end_session(process: subprocess.Popen) -> None:
    """Kill whatever is left of a test's subprocess and its children (one session each)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _wait_for_a_shard(process: subprocess.Popen, shard_dir: Path) -> None:
    deadline = time.monotonic() + 120
    while not list(shard_dir.glob("*.parquet")):
        assert process.poll() is None, "the sweep ended before it could be disturbed"
        assert time.monotonic() < deadline, "no shard within 120 s"
        time.sleep(0.05)


def _other_betas(path: Path, name: str, out: Path | None = None) -> Path:
    """A copy of a configured sweep's TOML with other β values (and optionally another out)."""
    text = path.read_text()
    changed = text.replace("betas = [0, 0.5, 2]", "betas = [0, 1]")
    if out is not None:
        changed = re.sub(r'out = ".*"', f'out = "{out}"', changed)
    assert changed.count("betas = [0, 1]") == 1
    other = path.with_name(f"{name}.toml")
    other.write_text(changed)
    return other


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from the state field on (the command name may hold spaces), or None."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _children(parent: int) -> dict[int, tuple[str, str]]:
    """Live processes whose parent is ``parent``: pid -> (start time, command line)."""
    found = {}
    for entry in PROC.iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[1]) == parent and fields[0] != "Z":
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            found[int(entry.name)] = (fields[19], cmdline)
    return found


def _alive(pid: int, started: str) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` (zombies are dead)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == started


@pytest.mark.skipif(not (PROC / "self" / "stat").exists(), reason="reads /proc")
def test_killed_parent_takes_its_process_workers_with_it(tmp_path):
    path = configured(tmp_path, "orphans", "process")
    # a script file, not -c: spawned workers import it, so their shards are slow too (1.5 s)
    guarded = "if __name__ == '__main__':\n    shards.run_configured_sweep("
    slow = _SLOW_RUN.replace("time.sleep(0.4)", "time.sleep(1.5)")
    slow = slow.replace("shards.run_configured_sweep(", guarded)
    assert "time.sleep(1.5)" in slow and guarded in slow
    script = tmp_path / "slow_sweep.py"
    script.write_text(slow)
    run = tmp_path / "orphans"
    process = _start(str(script), str(path))
    try:
        _wait_for_a_shard(process, run / "shards")
        children = _children(process.pid)
        workers = [pid for pid, (_, cmdline) in children.items() if "spawn_main" in cmdline]
        assert len(workers) == 2  # [run] workers = 2, each with 4 or 5 shards of 1.5 s to go
        os.kill(process.pid, signal.SIGKILL)  # the parent alone, not its process group
        process.wait()
        killed = time.monotonic()
        while time.monotonic() - killed < 3.0 and any(
            _alive(pid, started) for pid, (started, _) in children.items()
        ):
            time.sleep(0.02)
        left = [pid for pid, (started, _) in children.items() if _alive(pid, started)]
        assert not left, f"children {left} of the killed sweep still run 3 s later"
        finished = len(list((run / "shards").glob("*.parquet")))
        time.sleep(2.0)  # no orphan goes on writing shards
        assert len(list((run / "shards").glob("*.parquet"))) == finished < 9
        # the killed sweep's lock file stays, naming it, but does not block the folder
        assert json.loads((run / ".lock").read_text())["pid"] == process.pid
        began = time.monotonic()
        with lock_run_folder(run, "other settings") as lock:
            assert json.loads((run / ".lock").read_text())["pid"] == os.getpid() == lock.info["pid"]
        assert time.monotonic() - began < 0.5
        assert not (run / ".lock").exists()
    finally:
        _end_session(process)


def test_a_busy_run_folder_refuses_other_settings_and_joins_the_same(tmp_path):
    """While a sweep runs, one with other settings is refused at once; one with the same
    settings waits, then finds every shard finished."""
    reference = run_configured_sweep(load_config(configured(tmp_path, "reference")), False)
    path = configured(tmp_path, "shared")
    other = _other_betas(path, "shared-other-betas")
    run = tmp_path / "shared"
    process = _start("-c", _SLOW_RUN, str(path))  # 9 shards of 0.4 s at least
    try:
        _wait_for_a_shard(process, run / "shards")
        holder = json.loads((run / ".lock").read_text())
        assert holder["pid"] == process.pid and len(holder["fingerprint"]) == 24
        began = time.monotonic()
        expected = (
            rf"run folder {re.escape(str(run))} is in use by a sweep with other settings: "
            rf"PID {process.pid} on .* fingerprint {holder['fingerprint']}\); this sweep has "
            rf"settings (?!{holder['settings']})[0-9a-f]{{16}}\. Wait for it to end, or give"
        )
        with pytest.raises(RunFolderBusyError, match=expected):
            run_configured_sweep(load_config(other), progress=False)
        assert time.monotonic() - began < 1.0  # refused without waiting
        assert process.poll() is None, "the first sweep ended before the second was refused"
        with pytest.warns(UserWarning, match=rf"same settings \(PID {process.pid} .* waiting"):
            joined = run_configured_sweep(load_config(path), progress=False)
        assert process.wait(timeout=120) == 0  # the first sweep was not disturbed either
        assert (joined["done"], joined["skipped"]) == (0, 9)
        pd.testing.assert_frame_equal(joined["table"], reference["table"], check_exact=True)
        assert not (run / ".lock").exists()  # removed by whoever held it last
    finally:
        _end_session(process)
    # the lock goes with the block, whatever ends it, and so does a folder it made for nothing
    fresh = tmp_path / "fresh"
    with pytest.raises(ZeroDivisionError), lock_run_folder(fresh, "a"):
        assert json.loads((fresh / ".lock").read_text())["settings"] == "a"
        1 / 0  # noqa: B018
    assert not fresh.exists()
    same = settings_key(load_config(path))
    with lock_run_folder(run, same), pytest.raises(RunFolderBusyError, match="own unfinished"):
        run_configured_sweep(load_config(path), progress=False)  # never waits for itself


def test_a_bad_manifest_is_rewritten_and_every_shard_judged_by_its_own_tag(tmp_path):
    """Neither a manifest that is not JSON nor one of another sweep decides which shards are
    reused: the shards' own tags do, so rows of other settings are never merged."""
    path = configured(tmp_path, "run")
    first = run_configured_sweep(load_config(path), progress=False)
    other = _other_betas(path, "other", out=tmp_path / "other")
    run_configured_sweep(load_config(other), progress=False)
    manifest = tmp_path / "run" / "shards" / "manifest.json"
    fingerprint = json.loads(manifest.read_text())["fingerprint"]
    foreign_manifest = tmp_path / "other" / "shards" / "manifest.json"
    foreign = json.loads(foreign_manifest.read_text())["fingerprint"]
    assert foreign != fingerprint
    # one shard of the other settings in place of ours, and a manifest that is not even text
    name = json.loads(manifest.read_text())["shards"][0]["name"]
    shutil.copy(tmp_path / "other" / "shards" / f"{name}.parquet", manifest.parent)
    manifest.write_bytes(b"\xff{ not json")
    with pytest.warns(UserWarning) as caught:
        again = run_configured_sweep(load_config(path), progress=False)
    messages = [str(w.message) for w in caught]
    damaged = (
        rf"{re.escape(str(manifest))} is damaged \(UnicodeDecodeError: .*\); it is rewritten\. "
        r"Each shard is checked against its own tag: 8 of 9 belong to this sweep and are kept, "
        r"the other 1 are computed \(shards of other settings are never merged\)$"
    )
    assert [m for m in messages if re.match(damaged, m)], messages
    assert [m for m in messages if f"{name}.parquet belongs to another sweep" in m], messages
    assert (again["done"], again["skipped"]) == (1, 8)
    pd.testing.assert_frame_equal(again["table"], first["table"], check_exact=True)
    assert json.loads(manifest.read_text())["fingerprint"] == fingerprint
    # a valid manifest of the other sweep: all shards still carry this sweep's tag
    shutil.copy(foreign_manifest, manifest)
    with pytest.warns(
        UserWarning,
        match=rf"written by another sweep \(fingerprint '{foreign}', this sweep {fingerprint}\);"
        r" it is rewritten\. .*: 9 of 9 belong to this sweep and are kept, the other 0 are",
    ):
        third = run_configured_sweep(load_config(path), progress=False)
    assert (third["done"], third["skipped"]) == (0, 9)
    pd.testing.assert_frame_equal(third["table"], first["table"], check_exact=True)
    assert json.loads(manifest.read_text())["fingerprint"] == fingerprint
