"""Fashion-MNIST from its IDX files (the format of the original MNIST distribution).

The four files are looked for in, in order: an explicit ``data_dir`` argument (the CLI's
``--data-dir``), the ``BIOATTN_DATA`` environment variable, and
``/usr/share/datasets/fashion-mnist`` (where the Debian package ``dataset-fashion-mnist`` puts
them). Gzipped and plain files are both accepted.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from bioattn.data.imageset import ImageSet
from bioattn.errors import DataError

FASHION_MNIST_CATEGORIES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Category names in label order (label ``i`` is ``FASHION_MNIST_CATEGORIES[i]``)."""

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_ENV_VAR = "BIOATTN_DATA"
IMAGE_SIZE = 28

# split -> (images file stem, labels file stem); each may be present as ``stem.gz`` or ``stem``.
_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLITS: tuple[str, ...] = tuple(_FILES)

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

_FIX_HINT = (
    "Install the data with 'sudo apt-get install dataset-fashion-mnist', or download the four "
    "files from https://github.com/zalandoresearch/fashion-mnist and pass '--data-dir DIR' "
    f"(or set {DATA_ENV_VAR}=DIR) to the folder that holds them."
)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file (gzipped or not; detected by the gzip magic bytes ``1f 8b``).

    The header is two zero bytes, a type code (0x08 unsigned byte, 0x09 signed byte, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a
    big-endian uint32; the payload follows, big-endian, and must be exactly as long as the
    dimensions say. Returns a writable array in native byte order with shape ``dims``.

    Raises :class:`DataError` naming ``path`` and the problem (unreadable, corrupt gzip, truncated
    header or payload, bad magic, unknown type code, trailing bytes).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc.strerror or exc}") from exc
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"IDX file {path} is a corrupt or truncated gzip stream ({exc}); "
                "download it again or use the un-gzipped file"
            ) from exc
    if len(raw) < 4:
        raise DataError(
            f"IDX file {path} is truncated: {len(raw)} bytes, shorter than the 4-byte magic number"
        )
    zero1, zero2, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0:
        raise DataError(
            f"{path} is not an IDX file: bad magic number {raw[:4].hex(' ')} "
            "(an IDX file starts with 00 00, a type code and the number of dimensions)"
        )
    if type_code not in _IDX_DTYPES:
        valid = ", ".join(f"0x{code:02x}" for code in _IDX_DTYPES)
        raise DataError(
            f"IDX file {path} has unknown type code 0x{type_code:02x} in its magic number; "
            f"valid codes are {valid}"
        )
    if ndim == 0:
        raise DataError(f"IDX file {path} declares 0 dimensions; an IDX file needs at least one")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(
            f"IDX file {path} is truncated: its header declares {ndim} dimensions "
            f"({header_len} header bytes) but the file has only {len(raw)} bytes"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    count = int(np.prod(dims, dtype=np.int64))
    expected = count * dtype.itemsize
    actual = len(raw) - header_len
    if actual < expected:
        raise DataError(
            f"IDX file {path} is truncated: dimensions {dims} of {dtype.itemsize}-byte values need "
            f"{expected} payload bytes but only {actual} are present; download it again"
        )
    if actual > expected:
        raise DataError(
            f"IDX file {path} has {actual - expected} unexpected trailing bytes after the "
            f"{expected}-byte payload that its dimensions {dims} describe"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header_len)
    return data.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def _locate(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def find_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files.

    Looks at ``data_dir`` if given, else ``$BIOATTN_DATA``, else
    ``/usr/share/datasets/fashion-mnist``. Each file may be gzipped (``train-images-idx3-ubyte.gz``)
    or not (``train-images-idx3-ubyte``). Raises :class:`DataError` saying which files are missing
    where, and how to install them or point bioattn at them.
    """
    if data_dir is not None:
        directory, source = Path(data_dir).expanduser(), "the data_dir argument (--data-dir)"
    elif os.environ.get(DATA_ENV_VAR):
        directory, source = Path(os.environ[DATA_ENV_VAR]).expanduser(), f"${DATA_ENV_VAR}"
    else:
        directory, source = DEFAULT_DATA_DIR, "the default location"
    if not directory.is_dir():
        what = "is not a folder" if directory.exists() else "does not exist"
        raise DataError(f"Fashion-MNIST folder {directory} (from {source}) {what}. {_FIX_HINT}")
    missing = [
        f"{stem}.gz"
        for stems in _FILES.values()
        for stem in stems
        if _locate(directory, stem) is None
    ]
    if missing:
        raise DataError(
            f"Fashion-MNIST files missing in {directory} (from {source}): {', '.join(missing)} "
            f"(gzipped or not). {_FIX_HINT}"
        )
    return directory.resolve()


@functools.lru_cache(maxsize=8)
def _load_arrays(
    images_path: Path, labels_path: Path, stamp: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Parsed and validated (images uint8 (N, 28, 28), labels int64 (N,)), read-only.

    ``stamp`` (sizes and modification times) is part of the cache key so that replaced files are
    read again.
    """
    del stamp
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{images_path} holds {images.dtype} data of shape {images.shape}; "
            "Fashion-MNIST images are unsigned bytes of shape (N, 28, 28)"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(
            f"{labels_path} holds {labels.dtype} data of shape {labels.shape}; "
            "Fashion-MNIST labels are unsigned bytes of shape (N,)"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} "
            "labels; the two files must come from the same split and release"
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CATEGORIES):
        raise DataError(
            f"{labels_path} contains label {int(labels.max())}; Fashion-MNIST labels are 0..9"
        )
    labels = labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist(
    split: str = "train", data_dir: str | os.PathLike[str] | None = None
) -> ImageSet:
    """Load the Fashion-MNIST ``split`` ("train": 60000 images, "test": 10000).

    Returns an :class:`ImageSet` with images float32 (N, 1, 28, 28) in [0, 1] (bytes / 255),
    labels int64 indexing :data:`FASHION_MNIST_CATEGORIES`, and ``split`` set to ``split``. The
    parsed files are cached in this process (keyed by path, size and modification time); every
    call returns fresh tensors, so callers may modify them.
    """
    if split not in _FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; valid splits are 'train', 'test'")
    directory = find_data_dir(data_dir)
    paths = []
    for stem in _FILES[split]:
        found = _locate(directory, stem)
        if found is None:  # removed since find_data_dir looked
            raise DataError(f"Fashion-MNIST file {stem}(.gz) disappeared from {directory}")
        paths.append(found)
    images_path, labels_path = paths
    stamp = tuple(v for p in paths for v in (p.stat().st_size, p.stat().st_mtime_ns))
    images, labels = _load_arrays(images_path, labels_path, stamp)
    tensor = torch.from_numpy(images.astype(np.float32)).unsqueeze(1).div_(255.0)
    return ImageSet(
        images=tensor,
        labels=torch.from_numpy(labels.copy()),
        categories=FASHION_MNIST_CATEGORIES,
        split=split,
    )
