"""Wall time of the two replication commands from an empty cache: `bioattn demo` (one network)
and `bioattn replicate` (five networks), each training its networks first.

Each command runs as a subprocess with its own empty cache folder (``BIOATTN_CACHE``), so
training is included, as on a fresh machine. Writes the wall times, the per-network timings
the run folders record and the machine to ``benchmarks/replication_time_results.json``.
The replicate folder is kept (``--keep``) so that its tables can be read afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import machine_info  # noqa: E402

BIOATTN = Path(sys.executable).with_name("bioattn")


def timed(argv: list[str], cache: Path) -> float:
    """Run one bioattn command with an empty cache; its wall time in seconds."""
    env = {**os.environ, "BIOATTN_CACHE": str(cache)}
    start = time.perf_counter()
    subprocess.run([str(BIOATTN), *argv], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="where the replicate run goes")
    parser.add_argument("--skip-demo", action="store_true", help="time only replicate")
    parser.add_argument("--out", type=Path, default=HERE / "replication_time_results.json")
    args = parser.parse_args(argv)
    results: dict = {"machine": machine_info()}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        if not args.skip_demo:
            results["demo_seconds"] = round(
                timed(["demo", "--out", str(scratch / "demo")], scratch / "cache-demo"), 1
            )
            print(f"bioattn demo from an empty cache: {results['demo_seconds']:.0f} s")
        out = args.keep or scratch / "replicate"
        seconds = timed(
            ["replicate", "--networks", str(args.networks), "--out", str(out)],
            scratch / "cache-replicate",
        )
        results["replicate_seconds"] = round(seconds, 1)
        results["replicate_networks"] = args.networks
        config = json.loads((out / "config.json").read_text())
        results["replicate_timings"] = config["timings_seconds"]
        results["train_seconds"] = {
            seed: m["train_seconds"] for seed, m in config["model"]["networks"].items()
        }
        print(f"bioattn replicate ({args.networks} networks) from an empty cache: {seconds:.0f} s")
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
