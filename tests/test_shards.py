"""Sharded sweeps: same table as one run, failures kept apart, damaged shards never merged,
kill-and-resume, the process and submitit executors, and configured runs (VGG-16 included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest

from bioattn.errors import DataError
from bioattn.experiments import shards as shards_module
from bioattn.experiments.config import load_config
from bioattn.experiments.shards import (
    SweepIncompleteError,
    collect,
    pack_jobs,
    plan_shards,
    read_shard,
    run_configured_sweep,
    run_shards,
    sweep_fingerprint,
    write_manifest,
)
from bioattn.experiments.sweep import DEFAULT_METHODS, SweepConfig, run_sweep
from tests.conftest import make_image_set, write_pattern_folder

ROOT = Path(__file__).resolve().parents[1]
CONFIG = SweepConfig(
    image_types=("merged",), betas=(0.0, 0.5, 2.0), n_pos=6, n_neg=6, methods=("tuning", "gradient")
)


@pytest.fixture
def sharded(tiny_network, tiny_detectors, values, tmp_path):
    """Everything run_shards needs, with the manifest written."""
    test = make_image_set(n_per_category=10, split="test")
    shards = plan_shards(tiny_network, tiny_detectors, values, CONFIG)
    fingerprint = sweep_fingerprint(tiny_network, tiny_detectors, values, test, CONFIG)
    rows = {s.name: len(CONFIG.betas) * len(CONFIG.methods) for s in shards}
    write_manifest(tmp_path, fingerprint, shards, rows)
    args = (tiny_network, tiny_detectors, values, test, CONFIG, tmp_path)
    return args, shards, fingerprint


def test_shards_merge_into_the_uninterrupted_table(sharded):
    args, shards, fingerprint = sharded
    assert len(shards) == 4 * 3  # 4 categories × (2 layers + all-layers mode)
    outcomes = run_shards(*args, shards[::-1], fingerprint, progress=False)  # any order
    assert {o.status for o in outcomes} == {"done"}
    expected = run_sweep(*args[:5], progress=False)
    pd.testing.assert_frame_equal(collect(args[-1]), expected, check_exact=True)
    again = run_shards(*args, shards, fingerprint, progress=False)
    assert {o.status for o in again} == {"skipped"}


def test_a_failing_shard_is_reported_and_the_others_are_kept(sharded, monkeypatch):
    args, shards, fingerprint = sharded
    real = shards_module.run_sweep

    def flaky(network, detectors, values, test_images, config, **kwargs):
        if config.categories == ("b",) and config.all_layers:
            raise RuntimeError("out of memory (simulated)")
        return real(network, detectors, values, test_images, config, **kwargs)

    monkeypatch.setattr(shards_module, "run_sweep", flaky)
    outcomes = run_shards(*args, shards, fingerprint, progress=False)
    failed = [o for o in outcomes if o.status == "failed"]
    assert [(o.shard.category, o.shard.layer) for o in failed] == [("b", "all")]
    assert "out of memory (simulated)" in failed[0].error
    error_file = args[-1] / "shards" / f"{failed[0].shard.name}.error.txt"
    assert "RuntimeError" in error_file.read_text()
    with pytest.raises(SweepIncompleteError, match=r"1 of 12 shards .* b/all \(failed\)"):
        collect(args[-1])
    monkeypatch.setattr(shards_module, "run_sweep", real)
    retry = run_shards(*args, shards, fingerprint, progress=False)
    assert [o.status for o in retry].count("done") == 1 and not error_file.exists()
    pd.testing.assert_frame_equal(collect(args[-1]), run_sweep(*args[:5], progress=False))


def test_damaged_or_foreign_shards_are_recomputed_never_merged(sharded):
    args, shards, fingerprint = sharded
    run_shards(*args, shards, fingerprint, progress=False)
    path = args[-1] / "shards" / f"{shards[0].name}.parquet"
    good = path.read_bytes()
    rows = read_shard(path, fingerprint, shards[0])
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(SweepIncompleteError, match="cannot be read"):
        collect(args[-1])
    with pytest.warns(UserWarning, match="cannot be read.*computing it again"):
        outcomes = run_shards(*args, shards[:1], fingerprint, progress=False)
    assert outcomes[0].status == "done"  # the same rows again (the tag's compute time differs)
    pd.testing.assert_frame_equal(read_shard(path, fingerprint, shards[0]), rows, check_exact=True)
    with pytest.raises(DataError, match="belongs to another sweep"):
        read_shard(path, "0" * 24, shards[0])
    other = sweep_fingerprint(*args[:3], args[3], replace(CONFIG, betas=(0.0, 1.0)))
    assert other != fingerprint
    with pytest.raises(DataError, match=r"holds a/conv1_1"):
        read_shard(path, fingerprint, shards[1])


def test_pack_jobs_spreads_shards():
    items = list(range(7))
    assert pack_jobs(items, workers=2) == [[0, 1, 2, 3], [4, 5, 6]]
    assert pack_jobs(items, workers=2, shards_per_job=3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert pack_jobs([], workers=3) == []


CONFIG_TOML = """
[model]
spec = "tests.conftest:tiny_rgb_net"

[data]
kind = "image-folder"
path = "{data}"
size = 16
resize = 16
detector_images = 12

[values]
gradient_images = 6

[sweep]
image_types = ["merged"]
betas = [0, 0.5, 2]
n_pos = 5
n_neg = 5

[run]
out = "{out}"
executor = "{executor}"
workers = 2
"""


def configured(tmp_path: Path, name: str, executor: str = "local") -> Path:
    data = tmp_path / "images"
    if not data.exists():
        write_pattern_folder(data, n_per_category=10)
    path = tmp_path / f"{name}.toml"
    path.write_text(CONFIG_TOML.format(data=data, out=tmp_path / name, executor=executor))
    return path


_SLOW_RUN = """
import sys, time
from bioattn.experiments import shards
from bioattn.experiments.config import load_config
real = shards.run_sweep
def slow(*args, **kwargs):
    time.sleep(0.4)
    return real(*args, **kwargs)
shards.run_sweep = slow
shards.run_configured_sweep(load_config(sys.argv[1]), progress=False)
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """One image folder and one uninterrupted reference run for the configured-run tests."""
    folder = tmp_path_factory.mktemp("configured")
    run_configured_sweep(load_config(configured(folder, "reference")), progress=False)
    return folder


def reference_table(base: Path) -> pd.DataFrame:
    return pd.read_parquet(base / "reference" / "performance.parquet")


def test_killed_run_resumes_to_the_same_table(base):
    tmp_path = base
    path = configured(tmp_path, "killed")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_RUN, str(path)], cwd=ROOT, env=env, start_new_session=True
    )
    shard_dir = tmp_path / "killed" / "shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(shard_dir.glob("*.parquet"))) < 2:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list(shard_dir.glob("*.parquet")))
    assert 2 <= finished < 9  # 3 categories × (2 layers + all)
    with pytest.raises(SweepIncompleteError, match="not run yet"):
        collect(tmp_path / "killed")
    resumed = run_configured_sweep(load_config(path), progress=False)
    assert resumed["skipped"] == finished and resumed["done"] == 9 - finished
    # config.json keeps what the shards finished before the kill cost (0.4 s each, at least)
    timings = json.loads((tmp_path / "killed" / "config.json").read_text())["timings_seconds"]
    assert timings["earlier_runs"] >= 0.4 * finished - 0.1
    assert timings["total"] >= timings["this_run"] + timings["earlier_runs"] - 0.1
    pd.testing.assert_frame_equal(resumed["table"], reference_table(base), check_exact=True)
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "killed" / "performance.parquet"), reference_table(base)
    )


@pytest.mark.parametrize("executor", ["process", "submitit"])
def test_other_executors_give_the_same_table(base, executor, monkeypatch):
    monkeypatch.setenv("BIOATTN_SUBMITIT_CLUSTER", "local")
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{ROOT / 'src'}")
    monkeypatch.chdir(ROOT)
    result = run_configured_sweep(load_config(configured(base, executor, executor)), False)
    assert result["done"] == 9
    pd.testing.assert_frame_equal(result["table"], reference_table(base), check_exact=True)


def test_vgg16_end_to_end_at_small_size(base):
    """Random-weight VGG-16 on a generated image folder at 32 px: detectors on fc7, values,
    a sharded sweep over two layers, tables and figures."""
    text = configured(base, "vgg").read_text()
    text = text.replace('"tests.conftest:tiny_rgb_net"', '"vgg16"')
    text = text.replace("size = 16", "size = 32")
    text = text.replace("resize = 16", "resize = 32").replace(
        "n_neg = 5", 'n_neg = 5\nlayers = ["conv1_1", "conv5_3"]\nall_layers = false'
    )
    path = base / "vgg.toml"
    path.write_text(text)
    result = run_configured_sweep(load_config(path), progress=False)
    table = result["table"]
    assert set(table["layer"]) == {"conv1_1", "conv5_3"}
    assert set(table["category"]) == {"bars", "blobs", "dots"}
    assert len(table) == 3 * 2 * len(DEFAULT_METHODS) * 3  # categories × layers × methods × β
    run = base / "vgg"
    assert (run / "detectors.safetensors").exists() and (run / "values.nc").exists()
    assert (run / "figures" / "performance_increase.png").stat().st_size > 0


def test_resnet18_with_batch_norm_and_layer_numbers_end_to_end(base):
    """A BatchNorm model (0-dim num_batches_tracked buffers in the fingerprint) with layers
    given as TOML integers."""
    text = configured(base, "resnet").read_text()
    text = text.replace('"tests.conftest:tiny_rgb_net"', '"resnet18"')
    text = text.replace("size = 16", "size = 32").replace("resize = 16", "resize = 32")
    text = text.replace("n_neg = 5", "n_neg = 5\nlayers = [3, 17]\nall_layers = false")
    path = base / "resnet.toml"
    path.write_text(text)
    table = run_configured_sweep(load_config(path), progress=False)["table"]
    assert set(table["layer"]) == {"layer1.0.relu:1", "layer4.1.relu:1"}
    assert len(table) == 3 * 2 * len(DEFAULT_METHODS) * 3  # categories × layers × methods × β


def test_cli_sweep_with_a_config_flags_override_and_collect(base, capsys):
    from bioattn.cli import main

    path = configured(base, "cli")
    out = base / "cli-override"
    assert main(["sweep", "--config", str(path), "--betas", "0,1", "--out", str(out)]) == 0
    table = pd.read_parquet(out / "performance.parquet")
    assert sorted(table["beta"].unique()) == [0.0, 1.0]  # the flag won over the file's betas
    assert table["n_pos"].unique().tolist() == [5]  # the file's n_pos
    assert "shards: 9 computed, 0 finished earlier" in capsys.readouterr().out
    (out / "performance.parquet").unlink()
    assert main(["collect", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "performance.parquet"), table)
    assert main(["sweep", "--config", str(base / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_report_is_self_contained_html(base, capsys):
    from html.parser import HTMLParser

    from bioattn.cli import main

    assert main(["report", str(base / "reference")]) == 0
    page = (base / "reference" / "report.html").read_text()

    class Collector(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.sources: list[str] = []
            self.tags: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.sources += [v for k, v in attrs if k in ("src", "href") and v]

    parser = Collector()
    parser.feed(page)
    # every reference is embedded (data:) or a file beside the page, never a URL
    local = [s for s in parser.sources if not s.startswith("data:")]
    assert parser.sources and all((base / "reference" / s).is_file() for s in local)
    assert parser.tags.count("img") == 3 and "table" in parser.tags
    assert page.count("Plotly.newPlot(") == 3  # by layer, d′/criterion by layer, β curves
    assert "performance_increase.png" in page and "Configuration (config.json)" in page
    assert "torch" in page  # versions from config.json
    assert main(["report", str(base / "nowhere")]) == 2


# --- submitit job arrays (a fake executor: no Slurm, no processes) ---------------------------
class FakeJob:
    """A submitit job that runs its function when its result is asked for."""

    def __init__(self, job_id: str, fn, args: tuple) -> None:
        self.job_id, self.fn, self.args = job_id, fn, args

    def result(self):
        return self.fn(*self.args)


class FakeExecutor:
    """Records every submission; jobs submitted one by one are refused."""

    instances: ClassVar[list[FakeExecutor]] = []

    def __init__(self, folder=None, cluster=None) -> None:
        self.folder, self.cluster, self.parameters = folder, cluster, {}
        self.arrays: list[list[tuple]] = []
        FakeExecutor.instances.append(self)

    def update_parameters(self, **parameters) -> None:
        self.parameters.update(parameters)

    def map_array(self, fn, *iterables):
        calls = list(zip(*iterables, strict=True))
        self.arrays.append(calls)
        return [FakeJob(f"7_{i}", fn, args) for i, args in enumerate(calls)]

    def submit(self, *args, **kwargs):
        raise AssertionError("shards must go in one job array, not one submission each")


def fake_job(run_dir: Path, shards):
    """Finishes every shard, except that the job of shard ``b/conv1_1`` dies after writing
    the first of its shards, and shard ``c/all`` fails inside its job."""
    outcomes = []
    for shard in shards:
        if (shard.category, shard.layer) == ("b", "conv1_1"):
            raise RuntimeError("the job was killed (simulated)")
        if (shard.category, shard.layer) == ("c", "all"):
            outcomes.append(shards_module.ShardOutcome(shard, "failed", "ValueError: bad"))
            continue
        path = shards_module._shard_path(run_dir, shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"rows")
        outcomes.append(shards_module.ShardOutcome(shard, "done"))
    return outcomes


def test_submitit_gets_one_job_array_and_failures_are_reported_per_shard(tmp_path, monkeypatch):
    import types

    FakeExecutor.instances.clear()
    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=FakeExecutor))
    shards = [
        shards_module.Shard(category, layer)
        for category in "abc"
        for layer in ("conv1_1", "conv2_1", "all")
    ]
    # the job of b: b/all is done before b/conv1_1 kills the job; b/conv2_1 never runs
    order = [*shards[:3], shards[5], shards[3], shards[4], *shards[6:]]
    jobs = [order[0:3], order[3:6], order[6:9]]
    outcomes = shards_module.run_jobs(
        fake_job,
        (tmp_path,),
        jobs,
        "submitit",
        folder=tmp_path,
        submitit_parameters={"timeout_min": 5},
    )
    (executor,) = FakeExecutor.instances
    assert executor.folder == tmp_path / "submitit" and executor.parameters == {"timeout_min": 5}
    assert executor.arrays == [[(tmp_path, job) for job in jobs]]  # one array, every shard
    status = {(o.shard.category, o.shard.layer): o.status for o in outcomes}
    assert len(outcomes) == 9 and len(status) == 9
    assert status == {
        **{(c, layer): "done" for c in "abc" for layer in ("conv1_1", "conv2_1", "all")},
        ("b", "conv1_1"): "failed",
        ("b", "conv2_1"): "failed",
        ("c", "all"): "failed",
    }
    killed = [o for o in outcomes if o.shard.category == "b" and o.status == "failed"]
    for outcome in killed:
        assert outcome.error == "job 7_1 failed: RuntimeError: the job was killed (simulated)"
        error_file = tmp_path / "shards" / f"{outcome.shard.name}.error.txt"
        assert "killed (simulated)" in error_file.read_text()
    # the shard the killed job finished stays
    assert shards_module._shard_path(tmp_path, shards_module.Shard("b", "all")).exists()


def test_a_stale_shard_file_of_a_failed_job_is_not_counted_done(tmp_path):
    shard = shards_module.Shard("b", "conv1_1")
    stale = shards_module._shard_path(tmp_path, shard)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from another sweep")
    outcomes = shards_module.run_job_array(
        FakeExecutor(), fake_job, (tmp_path,), [[shard]], tmp_path
    )
    assert [(o.status, o.error.startswith("job 7_0 failed")) for o in outcomes] == [
        ("failed", True)
    ]
    assert shards_module.run_job_array(FakeExecutor(), fake_job, (tmp_path,), []) == []
