"""The ``bioattn`` command line: one entry point, one subcommand per job.

Each command group lives in its own module (``model``, ``sweep``, ``psychophysics``, ``neural``,
``mechanisms``, ``ssn``) and each command parses its flags, builds an
:class:`~bioattn.experiments.config.ExperimentConfig` from ``--config`` and the shared model/data
options (:mod:`bioattn.cli.common`), calls the library and prints; see ``bioattn COMMAND --help``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from bioattn.errors import BioattnError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from bioattn.cli import mechanisms, model, neural, psychophysics, ssn, sweep

    parser = argparse.ArgumentParser(
        prog="bioattn",
        description="Biologically inspired attention (feature similarity gain) in CNNs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (model, sweep, psychophysics, neural, mechanisms, ssn):
        group.register(sub)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; errors the user can fix are printed as one message (exit status 2)."""
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = _format_warning
    try:
        return args.func(args)
    except BioattnError as error:
        print(f"bioattn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bioattn {args.command}: interrupted", file=sys.stderr)
        return 130
