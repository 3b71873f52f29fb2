"""Devices and reduced precision: CPU bfloat16 autocast, clear errors, and (with a GPU) CUDA."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch

from bioattn.attention.rules import ValueSource, parse_rule
from bioattn.data.tasks import make_task_set
from bioattn.errors import ConfigError
from bioattn.experiments.config import ModelSection
from bioattn.experiments.engine import SweepEngine
from bioattn.experiments.sweep import SweepConfig, run_sweep
from bioattn.models.network import resolve_device
from tests.conftest import make_image_set

CONFIG = SweepConfig(
    image_types=("merged",), betas=(0.0, 0.5, 2.0), n_pos=6, n_neg=6, methods=("tuning", "gradient")
)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_bad_devices_and_precisions_are_clear_errors(tiny_network):
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="precision 'half' is not known; valid: float32"):
        ModelSection(precision="half")
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        replace(tiny_network, precision="fp8")


def _logits(network, detectors, values, precision):
    test = make_image_set(n_per_category=10, split="test")
    task = make_task_set(test, "b", "merged", n_pos=6, n_neg=6, seed=0)
    source = ValueSource(values, CONFIG.shuffle_seed)
    conditions = [
        {layer: parse_rule(m).modulation(source, "merged", "b", layer, 1.0)}
        for m in ("tuning", "gradient")
        for layer in network.layers
    ]
    network.precision = precision
    try:
        with network.autocast():
            return SweepEngine(network, detectors).condition_logits(task, conditions)
    finally:
        network.precision = "float32"


def test_bfloat16_autocast_runs_and_stays_close_to_float32(tiny_network, tiny_detectors, values):
    full = _logits(tiny_network, tiny_detectors, values, "float32")
    half = _logits(tiny_network, tiny_detectors, values, "bfloat16")
    assert half.dtype == torch.float32  # the read-out is float32 whatever the precision
    difference = (half - full).abs().max().item()
    assert 0 < difference < 0.05 * full.abs().max().item()  # really reduced, and close


def test_configured_bfloat16_run_records_its_check_against_float32(tmp_path):
    from bioattn.experiments.config import load_config
    from bioattn.experiments.shards import run_configured_sweep
    from tests.test_shards import configured

    path = configured(tmp_path, "bf16")
    spec = 'spec = "tests.conftest:tiny_rgb_net"'
    path.write_text(path.read_text().replace(spec, spec + '\nprecision = "bfloat16"'))
    run_configured_sweep(load_config(path), progress=False)
    written = json.loads((tmp_path / "bf16" / "config.json").read_text())
    check = written["results"]["precision_check"]
    assert check["precision"] == "bfloat16"
    assert 0 <= check["max_abs_diff_performance"] <= 1


@cuda
def test_cuda_sweep_matches_cpu(tiny_network, tiny_detectors, values):
    test = make_image_set(n_per_category=10, split="test")
    cpu = run_sweep(tiny_network, tiny_detectors, values, test, CONFIG, progress=False)
    tiny_network.to("cuda")
    try:
        gpu = run_sweep(tiny_network, tiny_detectors, values, test, CONFIG, progress=False)
        naive = run_sweep(
            tiny_network, tiny_detectors, values, test, CONFIG, progress=False, engine="naive"
        )
    finally:
        tiny_network.to("cpu")
    pd.testing.assert_frame_equal(gpu, cpu, check_exact=False, atol=1e-6, rtol=0)
    pd.testing.assert_frame_equal(gpu, naive, check_exact=False, atol=1e-6, rtol=0)
