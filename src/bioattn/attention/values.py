"""Attention values per feature map: category tuning and gradient (Lindsay & Miller 2018).

Both are stored in one ``xarray.Dataset`` with dims (category, unit); every unit carries the
coordinates ``layer`` (alias, e.g. ``conv2_1``) and ``channel`` (Brain-Score's convention).

* ``mean_activity`` r̄(c, l, k): mean over standard images of category c and over space of the
  post-ReLU activity of map k at layer l.
* ``tuning`` f(c, l, k): z-score of r̄ across categories, (r̄ − mean_c r̄) / std_c r̄ with the
  population std (ddof = 0); a map whose r̄ does not vary across categories gets 0.
* ``gradient_<image_type>`` g(c, l, k): mean over task images (positives and negatives for
  category c, of that image type) of ∂(detector-c logit)/∂r summed over space. The sign needs
  no flip: a positive value means that raising the map raises the "present" logit. Each map is
  normalised by its largest |g| across categories, so values lie in [−1, 1]; maps whose
  gradient is 0 for every category, and any non-finite value, become 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from bioattn.data.imageset import ImageSet
from bioattn.data.tasks import GRADIENT_STREAM, TaskSet, make_task_set, task_seed
from bioattn.errors import ConfigError, DataError
from bioattn.models.detectors import Detectors
from bioattn.models.hooks import capture_activity, concat_units, record_map_means
from bioattn.models.network import LayerInfo, Network

#: Value types that sweeps understand, besides ``gradient`` (stored per image type).
VALUE_TYPES = ("tuning", "gradient")


def _unit_coords(network: Network) -> dict[str, tuple[str, np.ndarray]]:
    layers = [layer.alias for layer in network.layers for _ in range(layer.channels)]
    channels = [k for layer in network.layers for k in range(layer.channels)]
    return {"layer": ("unit", np.array(layers)), "channel": ("unit", np.array(channels))}


def layer_table(layers: Sequence[LayerInfo]) -> str:
    """The JSON table ``[[alias, conv (else site name), maps], ...]`` that values and recording
    files keep, to check they belong to a network."""
    return json.dumps([[la.alias, la.conv or la.name, la.channels] for la in layers])


def empty_values(network: Network, categories: Sequence[str]) -> xr.Dataset:
    """A values dataset with the network's unit coordinates and no variables yet."""
    n_units = sum(layer.channels for layer in network.layers)
    return xr.Dataset(
        coords={"category": list(categories), "unit": np.arange(n_units), **_unit_coords(network)},
        attrs={"model": network.name, "layers": layer_table(network.layers)},
    )


def zscore_across_categories(mean_activity: np.ndarray) -> np.ndarray:
    """Z-score (K, U) along categories (ddof = 0); zero-variance units get 0."""
    mean = mean_activity.mean(axis=0, keepdims=True)
    std = mean_activity.std(axis=0, keepdims=True)
    safe = np.where(std > 1e-12, std, 1.0)
    return np.where(std > 1e-12, (mean_activity - mean) / safe, 0.0)


def normalise_per_unit(gradients: np.ndarray) -> np.ndarray:
    """Divide each unit's gradients (K, U) by its max |g| across categories; non-finite → 0."""
    g = np.nan_to_num(gradients, nan=0.0, posinf=0.0, neginf=0.0)
    scale = np.abs(g).max(axis=0, keepdims=True)
    return np.where(scale > 0, g / np.where(scale > 0, scale, 1.0), 0.0)


def tuning_values(
    network: Network, images: ImageSet, batch_size: int = 256, progress: bool = False
) -> xr.Dataset:
    """Mean activity and tuning values of every attendable layer from one pass over ``images``.

    ``images`` must be standard images from the training split (never the test images).
    """
    if len(images) == 0:
        raise DataError("tuning values need images, but the image set is empty")
    missing = [c for k, c in enumerate(images.categories) if not bool((images.labels == k).any())]
    if missing:
        raise DataError(f"tuning values need images of every category; none for {missing}")
    per_layer = record_map_means(network, images.images, batch_size=batch_size)
    activity = concat_units(per_layer, network.layers).to(torch.float64)  # (N, U)
    k = len(images.categories)
    one_hot = torch.nn.functional.one_hot(images.labels, k).to(torch.float64)  # (N, K)
    mean_activity = (one_hot.T @ activity) / one_hot.sum(0, keepdim=True).T
    mean_np = mean_activity.numpy()
    ds = empty_values(network, images.categories)
    ds["mean_activity"] = (("category", "unit"), mean_np.astype(np.float32))
    ds["tuning"] = (("category", "unit"), zscore_across_categories(mean_np).astype(np.float32))
    ds["tuning"].attrs["source_split"] = images.split
    return ds


def raw_gradients(
    network: Network,
    detectors: Detectors,
    task: TaskSet,
    batch_size: int = 128,
) -> np.ndarray:
    """Mean over ``task``'s images of ∂(logit of its target)/∂r summed over space, (U,)."""
    target = detectors.index(task.target_name)
    layers: list[LayerInfo] = network.layers
    totals = [torch.zeros(layer.channels, dtype=torch.float64) for layer in layers]
    with capture_activity(network, layers) as store, network.capture_readout() as readout:
        for start in range(0, task.images.shape[0], batch_size):
            batch = network.preprocess(task.images[start : start + batch_size])
            network(batch)
            logit = detectors.logits(readout.pop())[:, target].sum()
            activity = [store[layer.alias] for layer in layers]
            grads = torch.autograd.grad(logit, activity)
            for total, grad in zip(totals, grads, strict=True):
                total += grad.sum(dim=(0, 2, 3)).to("cpu", torch.float64)
    return (torch.cat(totals) / task.images.shape[0]).numpy()


def gradient_values(
    network: Network,
    detectors: Detectors,
    tasks: Mapping[str, TaskSet],
    batch_size: int = 128,
    progress: bool = False,
) -> np.ndarray:
    """Normalised gradient values (K, U) for the categories of ``detectors``.

    ``tasks`` maps each category name to its task set (positives and negatives of one image
    type). Use task sets built from training images so test images stay unseen.
    """
    missing = [c for c in detectors.categories if c not in tasks]
    if missing:
        raise DataError(f"gradient values need a task set for every category; missing {missing}")
    rows = [
        raw_gradients(network, detectors, tasks[category], batch_size)
        for category in tqdm(detectors.categories, desc="gradient values", disable=not progress)
    ]
    return normalise_per_unit(np.stack(rows))


def add_gradient_values(
    values: xr.Dataset,
    network: Network,
    detectors: Detectors,
    tasks: Mapping[str, TaskSet],
    image_type: str,
    batch_size: int = 128,
    progress: bool = False,
) -> xr.Dataset:
    """Return ``values`` with ``gradient_<image_type>`` added."""
    check_values_match(values, network)
    if list(values["category"].values) != list(detectors.categories):
        raise ConfigError(
            f"values have categories {list(values['category'].values)} but detectors have "
            f"{list(detectors.categories)}"
        )
    grads = gradient_values(network, detectors, tasks, batch_size, progress)
    name = f"gradient_{image_type}"
    out = values.copy()
    out[name] = (("category", "unit"), grads.astype(np.float32))
    out[name].attrs["source_split"] = next(iter(tasks.values())).split
    return out


def check_values_match(values: xr.Dataset, network: Network) -> None:
    """Raise ConfigError unless ``values`` were computed for ``network``'s layers and maps."""
    expected = layer_table(network.layers)
    found = values.attrs.get("layers")
    if found != expected:
        raise ConfigError(
            f"values file does not match model {network.name!r}: it holds layers "
            f"{_describe_layers(found)} but the model has {_describe_layers(expected)}; "
            "recompute them with `bioattn values` for this model"
        )


def _describe_layers(table: str | None) -> str:
    if not table:
        return "(no layer table)"
    return ", ".join(f"{alias}[{channels}]" for alias, _path, channels in json.loads(table))


def variable_name(method: str, image_type: str) -> str:
    """Dataset variable holding the values of a value type (``tuning`` or ``gradient``)."""
    if method == "tuning":
        return "tuning"
    if method == "gradient":
        return f"gradient_{image_type}"
    raise ConfigError(f"unknown value type {method!r}; valid value types: {', '.join(VALUE_TYPES)}")


def layer_values(
    values: xr.Dataset, variable: str, category: str, layer: LayerInfo
) -> torch.Tensor:
    """The (C,) values of one layer for one category.

    A group (all calls of a reused module, e.g. every time step of a recurrent area) gets the
    mean of its calls' values: one gain per map, applied at every call.
    """
    if variable not in values:
        raise ConfigError(
            f"values have no {variable!r}; available: {', '.join(map(str, values.data_vars))}"
        )
    row = np.asarray(values[variable].sel(category=category).values, dtype=np.float32)
    aliases = layer.members or (layer.alias,)
    rows = [row[values["layer"].values == alias] for alias in aliases]
    selected = rows[0] if len(rows) == 1 else np.mean(np.stack(rows), axis=0, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(selected))


def layer_scales(values: xr.Dataset) -> dict[str, float]:
    """B_l for response gain: each layer's mean activity over tuning images and maps."""
    mean = values["mean_activity"].mean("category")
    return {
        str(alias): float(mean.values[values["layer"].values == alias].mean())
        for alias in dict.fromkeys(values["layer"].values)
    }


def save_values(values: xr.Dataset, path: str | Path) -> Path:
    """Write values as netCDF (HDF5-based, via h5netcdf) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    values.to_netcdf(tmp, engine="h5netcdf")
    tmp.replace(path)
    return path


def load_values(path: str | Path, network: Network | None = None) -> xr.Dataset:
    """Read values written by :func:`save_values`; checked against ``network`` when given."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"values file {path} does not exist; compute it with `bioattn values`")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as handle:
            values = handle.load()
    except (OSError, ValueError) as error:
        raise DataError(
            f"cannot read values file {path}: {error}; expected a netCDF file written by "
            "`bioattn values`"
        ) from error
    if network is not None:
        check_values_match(values, network)
    return values


#: Positives and negatives per category for gradient values (training images, not test ones).
GRADIENT_SET_SIZE = 100


def compute_values(
    network: Network,
    detectors: Detectors,
    train_images: ImageSet,
    image_types: Sequence[str] = ("merged", "array"),
    gradient_set_size: int = GRADIENT_SET_SIZE,
    seed: int = 0,
    progress: bool = True,
    tuning_images: ImageSet | None = None,
) -> xr.Dataset:
    """Tuning values from standard training images and gradient values per image type.

    Gradient values use task sets (``gradient_set_size`` positives and as many negatives per
    category) built from the training split with their own seed, so no test image is used.
    Tuning values use ``tuning_images`` when given (a subset, for slow networks such as the
    SSN-CNN), else ``train_images``.
    """
    tuning_images = train_images if tuning_images is None else tuning_images
    for images in (train_images, tuning_images):
        if images.split != "train":
            raise DataError(f"values must come from training images, got split {images.split!r}")
    values = tuning_values(network, tuning_images)
    for image_type in image_types:
        if image_type == "noise":
            raise DataError("gradient values for noise images are not computed by the replication")
        tasks = {
            category: make_task_set(
                train_images,
                category,
                image_type,
                n_pos=gradient_set_size,
                n_neg=gradient_set_size,
                seed=task_seed(seed, k, GRADIENT_STREAM),
            )
            for k, category in enumerate(detectors.categories)
        }
        values = add_gradient_values(
            values, network, detectors, tasks, image_type, progress=progress
        )
    return values
