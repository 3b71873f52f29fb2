"""The ``bioattn`` command line: one entry point, one subcommand per job.

Each command group lives in its own module (``model``, ``sweep``, ``psychophysics``, ``neural``,
``export``, ``mechanisms``, ``ssn``) and each command parses its flags, builds an
:class:`~bioattn.experiments.config.ExperimentConfig` from ``--config`` and the shared model/data
options (:mod:`bioattn.cli.common`), calls the library and prints; see ``bioattn COMMAND --help``.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from bioattn import __version__
from bioattn.errors import BioattnError, ConfigError

__all__ = ["build_parser", "main"]


def torch_version() -> str:
    """The installed torch's version, read from its metadata (importing torch takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from bioattn.cli import (
        export,
        info,
        mechanisms,
        model,
        neural,
        psychophysics,
        ssn,
        sweep,
        templates,
    )

    parser = argparse.ArgumentParser(
        prog="bioattn",
        description="Biologically inspired attention (feature similarity gain) in CNNs.",
    )
    parser.add_argument(
        "--version", action="version", version=f"bioattn {__version__} (torch {torch_version()})"
    )
    add_verbosity(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (model, sweep, psychophysics, neural, export, mechanisms, ssn, info, templates):
        group.register(sub)
    for path, command in _commands(parser):
        command.set_defaults(command_path=" ".join(path))
        group = command.add_argument_group("plan and output")
        group.add_argument(
            "--dry-run",
            action="store_true",
            help="check every name and setting, print the plan (work, time, disk) and exit",
        )
        add_verbosity(group, top=False)
    return parser


def add_verbosity(parser: argparse.ArgumentParser | argparse._ArgumentGroup, top: bool) -> None:
    """``-q``/``-v``, on the top level (``bioattn -v sweep``) and on each command (``bioattn
    sweep -v``); a command's copy has no default, so that it keeps the top level's."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if top else argparse.SUPPRESS,
        help="say what is loaded, computed and kept (-vv: debug)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_const",
        const=True,
        default=False if top else argparse.SUPPRESS,
        help="only results and errors: no progress bars, warnings or info",
    )


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(names, parser) of every command that runs (nested ones included, aliases once)."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions and path:
        yield path, parser
    seen: set[int] = set()
    for action in actions:
        for name, child in action.choices.items():
            if id(child) not in seen:
                seen.add(id(child))
                yield from _commands(child, (*path, name))


#: Suffixes of ``--out`` values that name a file (anything else names a folder).
FILE_OUTPUTS = (".nc", ".parquet", ".csv", ".json", ".safetensors", ".html", ".toml")
#: Errors of writing that the user can fix (a full disk, no permission, a read-only system).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM}


def check_output(path: Path) -> None:
    """Refuse an output location that cannot be written, before any work: a folder where a
    file is expected or the reverse, a path under a file, or a read-only place."""
    is_file = path.suffix.lower() in FILE_OUTPUTS
    what = "file" if is_file else "folder"
    if path.exists() and path.is_dir() == is_file:
        found = "a folder" if path.is_dir() else "a file"
        raise ConfigError(f"--out {path} should be a {what} but is {found}; choose another path")
    parent = path if path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(
            f"--out {path} lies under {parent}, which is a file, not a folder; choose another path"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--out {path}: {parent} is not writable (read-only or no permission); choose a "
            "writable location"
        )


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; errors the user can fix are printed as one message (exit status 2)."""
    args = build_parser().parse_args(argv)
    from bioattn.logs import configure

    verbosity = -1 if args.quiet else args.verbose
    configure(verbosity)
    warnings.simplefilter("ignore" if args.quiet else "default")
    warnings.formatwarning = _format_warning
    try:
        from bioattn.cli.plans import plan_command

        if isinstance(getattr(args, "out", None), Path):
            check_output(args.out)
        plan = plan_command(args, timed=args.dry_run)
        if args.dry_run:
            print(plan.format())
            return 0
        return args.func(args)
    except BioattnError as error:
        print(f"bioattn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in _WRITE_ERRNOS:
            raise
        where = f" {error.filename}" if error.filename else ""
        print(
            f"bioattn {args.command}: error: could not write{where}: {error.strerror}; free "
            "space or choose a writable location, then rerun (finished parts are kept)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"bioattn {args.command}: interrupted", file=sys.stderr)
        return 130
