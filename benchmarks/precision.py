"""Reduced precision on a GPU: VGG-16 (random weights) on a generated 224 px image folder, the
same sweep in float32 and bfloat16 (same detectors and values), timed, with the largest changes
over the whole sweep and what the built-in one-category check saw.

Run on a CUDA machine: ``python benchmarks/precision.py WORK_DIR OUT_DIR`` (from the repository
root, with the repository on PYTHONPATH). Results are recorded in BENCHMARKS.md.
"""

import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from tests.conftest import write_pattern_folder  # the generated folder the tests use

from bioattn.experiments.config import load_config
from bioattn.experiments.shards import run_configured_sweep

out = Path(sys.argv[1])
data = write_pattern_folder(out / "images", n_per_category=30, size=256)
results = {}
for precision in ("float32", "bfloat16"):
    path = out / f"{precision}.toml"
    path.write_text(f"""
[model]
spec = "vgg16"
device = "cuda"
precision = "{precision}"
[data]
kind = "image-folder"
path = "{data}"
detector_images = 30
[values]
gradient_images = 20
[sweep]
image_types = ["merged"]
layers = ["conv1_1", "conv3_3", "conv5_3"]
betas = [0, 0.5, 1, 2]
n_pos = 30
n_neg = 30
[run]
out = "{out / precision}"
""")
    if precision == "bfloat16":
        # same detectors and values as the float32 run, so only the sweep's precision differs
        (out / precision).mkdir(parents=True, exist_ok=True)
        for name in ("detectors.safetensors", "values.nc"):
            (out / precision / name).write_bytes((out / "float32" / name).read_bytes())
    torch.cuda.synchronize()
    started = time.perf_counter()
    result = run_configured_sweep(load_config(path), progress=False)
    torch.cuda.synchronize()
    seconds = round(time.perf_counter() - started, 1)
    results[precision] = {"seconds": seconds, "rows": len(result["table"])}
a = pd.read_parquet(out / "float32" / "performance.parquet")
b = pd.read_parquet(out / "bfloat16" / "performance.parquet")
for c in ("tp", "fp", "performance", "dprime"):
    results[f"max_abs_diff_{c}_whole_sweep"] = float((a[c] - b[c]).abs().max())
results["precision_check"] = json.loads((out / "bfloat16" / "config.json").read_text())[
    "precision_check"
]
results["gpu"] = torch.cuda.get_device_name()
print(json.dumps(results, indent=1))
(Path(sys.argv[2]) / "gpu_vgg.json").write_text(json.dumps(results, indent=1))
