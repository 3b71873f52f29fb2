"""Logging and progress bars: how much bioattn says while it works.

The library logs to the ``bioattn`` logger (``logging.getLogger("bioattn.<module>")``) and
shows progress bars through :func:`progress_bar`; the command line's ``-q``/``-v`` set both
with :func:`configure`. In Python, configure the ``bioattn`` logger as any other, and pass
``progress=False`` to the functions that show bars (or call ``configure(-1)``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from tqdm.auto import tqdm

__all__ = ["configure", "progress_bar", "progress_enabled"]

_state = {"progress": True}
#: Verbosity -> level of the ``bioattn`` logger: -1 quiet (errors only), 0 warnings, 1 info,
#: 2 debug.
LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


def configure(verbosity: int = 0) -> None:
    """Set the ``bioattn`` logger's level (and Python warnings, which it also reports) and
    whether progress bars show: ``-1`` quiet (errors only, no bars), ``0`` the default
    (warnings), ``1`` info (what is loaded, computed and kept), ``2`` debug."""
    level = LEVELS[max(-1, min(2, verbosity))]
    logger = logging.getLogger("bioattn")
    logger.setLevel(level)
    if not any(getattr(h, "_bioattn", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._bioattn = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
    _state["progress"] = verbosity >= 0


def progress_enabled() -> bool:
    """Whether progress bars show (``False`` after ``configure(-1)``)."""
    return _state["progress"]


def progress_bar(iterable: Any = None, *, disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm progress bar, hidden when ``disable`` or when bars are off (:func:`configure`)."""
    return tqdm(iterable, disable=disable or not _state["progress"], **kwargs)
