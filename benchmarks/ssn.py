"""SSN-CNN benchmark: cost per image against the plain network, per-layer cost, and convergence.

Run with ``.venv/bin/python benchmarks/ssn.py [OUT_DIR]`` (default ``runs/ssn_benchmark``; the same
as ``bioattn ssn benchmark OUT_DIR``). In one process, on the trained default network (cached;
trained first if missing), its calibrated SSN-CNN (SSN at all six layers, default
:class:`bioattn.ssn.SSNParams`) and ``--n-images`` merged Fashion-MNIST test images (Coat task):

1. times the plain network and the SSN-CNN on the same images, alternating, ``--repeats``
   times (``cost.csv``, with the 1-minute load average at each timing);
2. times each SSN layer alone and counts its Euler steps (``layer_costs.csv``);
3. re-runs the SSN-CNN with Euler steps dt = 0.5, 1, 2 ms and tolerances 1e-6 … 1e-4, against
   the dt = 0.5 ms, tol = 1e-6 reference (``convergence.csv``: feature deviation, changed
   decisions, steps, seconds per image);
4. records the machine and the torch thread count (``machine.json``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bioattn.ssn.convergence import run_ssn_benchmark


def main() -> None:
    """Parse the arguments, run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("runs/ssn_benchmark"))
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-convergence", action="store_true", help="skip step 3")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice); on a machine whose cores are "
        "busy with other work use 1: each of the SSN's hundreds of Euler steps waits for every "
        "thread, which made 2 threads 7-50x slower than 1 on 2 shared cores",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tables = run_ssn_benchmark(
        args.out,
        n_images=args.n_images,
        repeats=args.repeats,
        settings=() if args.no_convergence else None,
    )
    for name, table in tables.items():
        print(f"\n{name}:\n{table.to_string(index=False)}")
    print(f"\nwritten to {args.out}; took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
