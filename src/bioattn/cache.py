"""The user cache directory, where trained default models and detectors are kept."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def cache_dir() -> Path:
    """Cache root: ``$BIOATTN_CACHE``, else ``$XDG_CACHE_HOME/bioattn`` or ``~/.cache/bioattn``."""
    env = os.environ.get("BIOATTN_CACHE")
    if env:
        root = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "bioattn"
    root.mkdir(parents=True, exist_ok=True)
    return root


def update_with_tensor(digest: Any, tensor: torch.Tensor) -> None:
    """Feed a tensor's shape, dtype and contents into a ``hashlib`` digest."""
    array = tensor.detach().cpu().contiguous()
    digest.update(f"{tuple(array.shape)} {array.dtype}".encode())
    # flattened first: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes
    digest.update(array.reshape(-1).view(torch.uint8).numpy().tobytes() if array.numel() else b"")


def update_with_module(digest: Any, module: torch.nn.Module) -> None:
    """Feed a module's state dict (names, shapes, dtypes, contents) into a ``hashlib`` digest."""
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        update_with_tensor(digest, tensor)


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of JSON-serialisable settings, used to key cache entries."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it replaces ``path`` (readers
    never see a half-written file), on any error (a full disk) it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
