"""Stimulus sets from a folder of images, one sub-folder per category (torchvision layout).

::

    root/
      cat/      001.jpg  002.png ...
      dog/      a.jpeg ...

Category names are the sub-folder names in sorted order; hidden entries (names starting with ".")
and files without an image extension are ignored. Images are preprocessed the ImageNet way: the
short side is resized to ``resize`` (bilinear, antialiased) and the centre ``size`` × ``size`` is
cropped. Pixel values stay in [0, 1]; each model normalises its own input.

Unreadable or corrupt files are skipped with a warning. :func:`load_image_folder` returns just the
:class:`ImageSet`; :func:`load_image_folder_report` also returns which files were loaded and which
were skipped and why.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bioattn.data.imageset import ImageSet
from bioattn.errors import ConfigError, DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
"""File extensions that are loaded (compared case-insensitively)."""


@dataclass(frozen=True)
class FolderLoadReport:
    """What :func:`load_image_folder_report` loaded.

    ``image_set`` holds the images; ``paths[i]`` is the file that ``image_set.images[i]`` came
    from; ``skipped`` lists (file, reason) for each image file that could not be loaded.
    """

    image_set: ImageSet
    paths: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        """How many image files were skipped."""
        return len(self.skipped)


def _check_size(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{name} must be a positive integer number of pixels or None, got {value!r}"
        )


def _preprocess(image: Image.Image, size: int | None, resize: int | None, mode: str) -> np.ndarray:
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    image = image.convert(mode)
    if resize is not None:
        width, height = image.size
        scale = resize / min(width, height)
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if new_size != image.size:
            image = image.resize(new_size, Image.Resampling.BILINEAR)
        if size is not None:
            width, height = image.size
            left = (width - size) // 2
            top = (height - size) // 2
            image = image.crop((left, top, left + size, top + size))
    elif size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def category_files(root: str | os.PathLike[str]) -> list[tuple[str, list[Path]]]:
    """(category, its image files) for each sub-folder of ``root``, sorted by name; reads no
    image. Raises :class:`DataError` for a missing folder, no sub-folders or an empty one."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"image folder {root} {what}")
    category_dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
    if not category_dirs:
        raise DataError(
            f"image folder {root} has no category sub-folders; expected one sub-folder per "
            "category holding that category's images (root/CATEGORY/IMAGE.png)"
        )
    categories = []
    for directory in category_dirs:
        found = sorted(
            p
            for p in directory.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise DataError(
                f"category folder {directory} holds no image files (extensions "
                f"{', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
            )
        categories.append((directory.name, found))
    return categories


def load_image_folder_report(
    root: str | os.PathLike[str],
    size: int | None = 224,
    resize: int | None = 256,
    grayscale: bool = False,
) -> FolderLoadReport:
    """Load ``root`` (one sub-folder per category) and report what was loaded and skipped.

    See :func:`load_image_folder` for the arguments. Each skipped file is also reported with
    ``warnings.warn`` (one warning per file, naming it and the reason).
    """
    _check_size("size", size)
    _check_size("resize", resize)
    if size is not None and resize is not None and size > resize:
        raise ConfigError(
            f"crop size {size} is larger than the resized short side {resize}; "
            "use size <= resize (ImageNet: resize=256, size=224)"
        )
    listing = category_files(root)
    files = [(path, label) for label, (_name, found) in enumerate(listing) for path in found]
    root = Path(root).expanduser()

    mode = "L" if grayscale else "RGB"
    target = resize if resize is not None else size  # short side the images are brought to
    upscaled: list[tuple[Path, tuple[int, int]]] = []
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path, label in files:
        try:
            with Image.open(path) as image:
                image.load()
                if target is not None and min(image.size) < target:
                    upscaled.append((path, image.size))
                array = _preprocess(image, size, resize, mode)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            skipped.append((path, reason))
            warnings.warn(f"skipping unreadable image {path} ({reason})", stacklevel=2)
            continue
        if arrays and array.shape != arrays[0].shape:
            raise DataError(
                f"images in {root} differ in shape ({paths[0]}: {arrays[0].shape[:2]}, "
                f"{path}: {array.shape[:2]}); pass size=N (and resize) to bring them to one size"
            )
        arrays.append(array)
        labels.append(label)
        paths.append(path)
    if not arrays:
        raise DataError(
            f"none of the {len(files)} image files in {root} could be read; first problem: "
            f"{skipped[0][0]}: {skipped[0][1]}"
        )
    if upscaled:
        path, (width, height) = upscaled[0]
        warnings.warn(
            f"{len(upscaled)} of {len(arrays)} images in {root} are smaller than the input they "
            f"are brought to and were upscaled (e.g. {path.name}: {width}x{height} to a short "
            f"side of {target}); that costs compute and adds no detail - give [data] size (and "
            "resize) near the images' own size if the model takes it",
            stacklevel=2,
        )
    stacked = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    image_set = ImageSet(
        images=stacked.to(torch.float32).div_(255.0),
        labels=torch.tensor(labels, dtype=torch.int64),
        categories=tuple(name for name, _ in listing),
        split=root.resolve().name,
    )
    return FolderLoadReport(image_set=image_set, paths=paths, skipped=skipped)


def load_image_folder(
    root: str | os.PathLike[str],
    size: int | None = 224,
    resize: int | None = 256,
    grayscale: bool = False,
) -> ImageSet:
    """Load a folder with one sub-folder per category as an :class:`ImageSet`.

    Args:
        root: the folder; its non-hidden sub-folders, sorted by name, are the categories.
        size: side of the square centre crop, or None for no crop.
        resize: the short side is first resized to this (keeping the aspect ratio); if None the
            image is resized directly to ``size`` × ``size`` (distorting the aspect ratio). With
            both None, images are kept as they are and must all share one shape.
        grayscale: load as one grey channel ("L") instead of three ("RGB").

    Returns images float32 (N, 1 or 3, H, W) in [0, 1] in category then file-name order;
    ``split`` is the folder's name. Corrupt or unreadable files are skipped with a warning (use
    :func:`load_image_folder_report` to get the list). Raises :class:`DataError` if the folder is
    missing, has no category sub-folders, a category folder has no image files, no file can be
    read, or the images do not share one shape; :class:`ConfigError` for invalid sizes.
    """
    return load_image_folder_report(root, size=size, resize=resize, grayscale=grayscale).image_set
