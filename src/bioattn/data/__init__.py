"""Stimulus sets: Fashion-MNIST, image folders, composites (merged, array, noise), task sets."""

from bioattn.data.composites import (
    QUADRANTS,
    array_grid,
    embed_in_noise,
    measured_snr,
    merge,
    quadrant_slices,
    resolve_quadrant,
    snr_db_to_ratio,
    snr_ratio_to_db,
)
from bioattn.data.fashion_mnist import (
    FASHION_MNIST_CATEGORIES,
    find_data_dir,
    load_fashion_mnist,
    read_idx,
)
from bioattn.data.image_folder import (
    IMAGE_EXTENSIONS,
    FolderLoadReport,
    load_image_folder,
    load_image_folder_report,
)
from bioattn.data.imageset import ImageSet, resolve_category
from bioattn.data.tasks import IMAGE_TYPES, TaskSet, make_task_set, make_task_sets

__all__ = [
    "FASHION_MNIST_CATEGORIES",
    "IMAGE_EXTENSIONS",
    "IMAGE_TYPES",
    "QUADRANTS",
    "FolderLoadReport",
    "ImageSet",
    "TaskSet",
    "array_grid",
    "embed_in_noise",
    "find_data_dir",
    "load_fashion_mnist",
    "load_image_folder",
    "load_image_folder_report",
    "make_task_set",
    "make_task_sets",
    "measured_snr",
    "merge",
    "quadrant_slices",
    "read_idx",
    "resolve_category",
    "resolve_quadrant",
    "snr_db_to_ratio",
    "snr_ratio_to_db",
]
