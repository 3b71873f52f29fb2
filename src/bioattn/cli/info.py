"""``bioattn info``: what this installation has — versions, device, cache, data, extras.

Everything is reported, nothing is required: a missing dataset or extra is a line of the
report with what would fix it, not an error.
"""

from __future__ import annotations

import argparse
import platform
from importlib.metadata import PackageNotFoundError, version

#: Optional packages and tools bioattn uses when present, with what each is for.
OPTIONAL = {
    "torchvision": "not needed: bioattn's own architectures load torchvision weight files",
    "submitit": "sweep shards as Slurm jobs (--executor submitit)",
    "plotly": "the report's interactive figures",
    "websocket-client": "the report's browser check",
}


def info_lines() -> list[str]:
    """The report as lines of text."""
    import torch

    from bioattn import __version__
    from bioattn.cache import cache_dir
    from bioattn.data.fashion_mnist import find_data_dir
    from bioattn.errors import DataError
    from bioattn.report.browser import find_chromium

    lines = [
        f"bioattn {__version__}",
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), python "
        f"{platform.python_version()}, {platform.machine()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"device: cuda ({torch.cuda.get_device_name(0)}); default runs use the CPU")
    else:
        lines.append("device: cpu (no CUDA device)")
    cache = cache_dir()
    models = cache / "models"
    trained = sorted(p.name for p in models.glob("*") if p.is_dir()) if models.is_dir() else []
    listed = f": {', '.join(trained)}" if trained else ""
    lines.append(f"cache: {cache} ({len(trained)} trained networks{listed})")
    try:
        lines.append(f"Fashion-MNIST: {find_data_dir()}")
    except DataError as error:
        lines.append(f"Fashion-MNIST: not found. {error}")
    for name, purpose in OPTIONAL.items():
        try:
            lines.append(f"{name} {version(name)}: {purpose}")
        except PackageNotFoundError:
            lines.append(f"{name} not installed: {purpose}")
    chromium = find_chromium()
    lines.append(
        f"chromium: {chromium}"
        if chromium
        else "chromium not found: the report's browser test"
        " is skipped (apt-get install chromium, or set $CHROMIUM)"
    )
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    """Print what this installation has."""
    print("\n".join(info_lines()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``info``."""
    p = sub.add_parser("info", help="versions, device, cache, data folder and optional extras")
    p.set_defaults(func=cmd_info)
