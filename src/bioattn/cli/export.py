"""``bioattn export``: a recording in formats other tools read (Brain-Score-style assemblies)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_export_brainscore(args: argparse.Namespace) -> int:
    """Write a recording's map-mean activity as a Brain-Score-style (presentation, neuroid)
    assembly in netCDF."""
    from bioattn.experiments.assembly import save_assembly, to_brainscore_assembly

    assembly = to_brainscore_assembly(args.recording)
    path = save_assembly(assembly, args.out)
    print(
        f"assembly of {assembly.sizes['presentation']} presentations × "
        f"{assembly.sizes['neuroid']} neuroids written to {path}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export brainscore``."""
    p = sub.add_parser("export", help="export a recording for other tools")
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    q = formats.add_parser(
        "brainscore",
        help="a Brain-Score-style assembly (presentation × neuroid, plain xarray netCDF)",
    )
    q.add_argument("recording", type=Path, help="recording from `bioattn record`")
    q.add_argument("--out", type=Path, required=True, help="netCDF file to write")
    q.set_defaults(func=cmd_export_brainscore)
