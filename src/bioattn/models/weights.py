"""Safe weight files: loading state dicts without unpickling arbitrary objects, checking them
against a model before loading, and saving them as safetensors.

Files ending in ``.safetensors`` are read with ``safetensors``; anything else (``.pt``, ``.pth``,
``.bin``) with ``torch.load(..., weights_only=True)``, which refuses pickled Python objects other
than tensors and plain containers. A checkpoint dict that wraps the weights under ``"state_dict"``
or ``"model"`` is unwrapped, and a ``module.`` prefix left by ``nn.DataParallel`` is removed.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from bioattn.errors import WeightsError

#: How many entries of each kind (missing, unexpected, mismatched) a mismatch error lists.
MAX_LISTED = 10

_ADVICE = (
    "save the weights as a .safetensors file or as a plain state dict "
    "(torch.save(model.state_dict(), path))"
)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded object, with any DataParallel prefix removed."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"cannot use weights file {str(path)!r}: it holds a {type(obj).__name__}, not a state "
            f"dict mapping parameter names to tensors; {_ADVICE}"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        shown = ", ".join(bad[:MAX_LISTED]) + (" ..." if len(bad) > MAX_LISTED else "")
        raise WeightsError(
            f"cannot use weights file {str(path)!r}: {len(bad)} entries are not named tensors "
            f"({shown}); {_ADVICE}"
        )
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


#: Sentences of torch.load's error text that are advice, not the reason: among them the advice to
#: re-run with ``weights_only=False``, which bioattn must never pass on.
_TORCH_ADVICE = re.compile(
    r"weights_only|weights only load failed|trust|please use|please file|check the doc|"
    r"arbitrary code|alternatively|^\(\d\)",
    re.IGNORECASE,
)
#: torch.load's ways of saying that the file holds pickled Python objects it will not rebuild.
_PICKLED_OBJECTS = re.compile(
    r"unsupported global|whose module \S+ is blocked|add_safe_globals|can only create new object",
    re.IGNORECASE,
)


def _load_failure_reason(error: Exception) -> str:
    """The informative part of a ``torch.load`` error (its text is long, generic, and advises
    ``weights_only=False``, which is left out)."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split())
    text = text.split("WeightsUnpickler error:", 1)[-1].split(" Check the doc", 1)[0]
    sentences = re.split(r"(?<=[.!?])\s+", text)
    text = " ".join(s for s in sentences if s and not _TORCH_ADVICE.search(s)).strip(" .")
    if not text:
        return type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``path`` on the CPU without executing pickled code.

    ``.safetensors`` files are read with ``safetensors.torch.load_file``; other files with
    ``torch.load(path, map_location="cpu", weights_only=True)``. A dict holding the weights under
    ``"state_dict"`` or ``"model"`` is unwrapped; a leading ``module.`` on every key is stripped.

    Raises:
        WeightsError: the file is missing, unreadable or corrupt, holds pickled objects that are
            not tensors (refused for safety), or does not contain a state dict.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"weights file {str(path)!r} does not exist; check the path")
    if not path.is_file():
        raise WeightsError(f"weights path {str(path)!r} is not a file; give a weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception as error:
            raise WeightsError(
                f"cannot read safetensors file {str(path)!r}: {error}; the file may be "
                "truncated or corrupt - re-export it with safetensors.torch.save_file"
            ) from error
        return _unwrap(obj, path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = _load_failure_reason(error)
        if _PICKLED_OBJECTS.search(str(error)):
            raise WeightsError(
                f"cannot load weights file {str(path)!r}: it holds pickled Python code or objects, "
                f"not only tensors ({reason}). bioattn will not run it, because unpickling such a "
                "file can execute arbitrary code. If you trust the file, convert it once on a "
                "machine where you are willing to run it: state = torch.load(path, "
                "weights_only=False); safetensors.torch.save_file({k: v.contiguous() for k, v in "
                'state.items()}, "weights.safetensors") (take the checkpoint\'s "state_dict" entry '
                "first if it has one), or build the model there and save "
                "torch.save(model.state_dict(), path); then give bioattn the new file"
            ) from error
        raise WeightsError(
            f"cannot load weights file {str(path)!r}: it is unreadable or corrupt, or not a "
            f"PyTorch weights file ({reason}); {_ADVICE}"
        ) from error
    return _unwrap(obj, path)


def _listing(title: str, items: list[str]) -> str:
    shown = items[:MAX_LISTED]
    more = f", ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{len(items)} {title}: " + ", ".join(shown) + more


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Differences between ``state`` and ``module``'s state dict, one readable line per group.

    An empty list means every key is present on both sides with the same shape.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(_listing("missing keys (in the model, not in the weights)", missing))
    if unexpected:
        problems.append(_listing("unexpected keys (in the weights, not in the model)", unexpected))
    if mismatched:
        problems.append(_listing("shape mismatches", mismatched))
    return problems


def load_weights(
    module: nn.Module,
    path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
    *,
    assign: bool = False,
) -> None:
    """Load weights into ``module`` after checking that keys and shapes match exactly.

    ``path_or_state_dict`` is a weights file (see :func:`load_state_dict_file`) or a state dict.
    With ``assign=True`` the loaded tensors (cast to the model's dtypes) replace the module's
    parameters instead of being copied into them, which is what a module built on the ``meta``
    device needs (no memory or time spent on a random initialisation that is overwritten).

    Raises:
        WeightsError: the file cannot be loaded safely, or its keys or shapes differ from the
            model's; the message lists missing keys, unexpected keys and shape mismatches.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = repr(str(path_or_state_dict))
        state = load_state_dict_file(path_or_state_dict)
    else:
        source = "the given state dict"
        state = _unwrap(path_or_state_dict, Path("<state dict>"))
    problems = check_state_dict(module, state)
    if problems:
        raise WeightsError(
            f"weights from {source} do not match the model {type(module).__name__}: "
            + "; ".join(problems)
            + ". Use weights saved from the same architecture (and number of classes)"
        )
    if assign:
        expected = module.state_dict()
        state = {
            k: v.to(dtype=expected[k].dtype) if v.is_floating_point() else v
            for k, v in state.items()
        }
    module.load_state_dict(state, strict=True, assign=assign)


def save_weights(module: nn.Module, path: str | Path) -> Path:
    """Save ``module``'s state dict as a safetensors file, atomically; returns the path.

    The file is written next to ``path`` under a temporary name and then renamed, so an
    interrupted save never leaves a truncated file at ``path``.
    """
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or non-contiguous storage: give it independent contiguous copies.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
