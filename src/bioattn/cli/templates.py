"""``bioattn init-config KIND``: write a commented example config to start from.

The templates live in the package (``bioattn/examples/*.toml``); the tests load each one and
run it with ``--dry-run``, so what a user starts from always parses and plans.
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path

from bioattn.errors import ConfigError

#: Template name -> what it configures.
TEMPLATES = {
    "default": "the trained default network on Fashion-MNIST",
    "vgg16": "VGG-16 (torchvision weights) on your own image folder",
    "user-model": "your own PyTorch CNN (package.module:callable) on an image folder",
    "slurm": "a sweep whose shards run as a Slurm job array through submitit",
}


def template_text(kind: str) -> str:
    """The text of the example config ``kind`` (one of :data:`TEMPLATES`)."""
    if kind not in TEMPLATES:
        raise ConfigError(f"no example config {kind!r}; valid: {', '.join(TEMPLATES)}")
    return files("bioattn").joinpath("examples", f"{kind}.toml").read_text(encoding="utf-8")


def cmd_init_config(args: argparse.Namespace) -> int:
    """Write the template to ``--out`` (or print it with ``--out -``)."""
    text = template_text(args.kind)
    if str(args.out) == "-":
        sys.stdout.write(text)
        return 0
    out = args.out if args.out is not None else Path(f"{args.kind}.toml")
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; choose another --out or add --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(
        f"wrote {out}: {TEMPLATES[args.kind]}. "
        f"Check it with: bioattn sweep --config {out} --dry-run"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``init-config``."""
    kinds = "; ".join(f"{name}: {what}" for name, what in TEMPLATES.items())
    p = sub.add_parser(
        "init-config",
        help="write a commented example config (TOML) to start from",
        description=f"Write a commented example config. KIND is one of: {kinds}.",
    )
    p.add_argument("kind", metavar="KIND", choices=list(TEMPLATES), help=", ".join(TEMPLATES))
    p.add_argument(
        "--out", type=Path, default=None, help="file to write (default: KIND.toml; '-': stdout)"
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_init_config)
