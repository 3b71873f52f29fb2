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

Values remember what they were computed from: ``attrs["model_fingerprint"]``
(:func:`model_fingerprint`) holds short sha256 hashes of the network's weights and, once
gradient values are added, of the detectors. :func:`check_values_match` (and
:func:`load_values` with a network) refuses values of another model, and values with a
non-finite entry.
"""

from __future__ import annotations

import gc
import hashlib
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from bioattn.cache import atomic_path, update_with_module
from bioattn.data.imageset import ImageSet
from bioattn.data.tasks import GRADIENT_STREAM, TaskSet, make_task_set, task_seed
from bioattn.errors import ConfigError, DataError
from bioattn.logs import progress_bar
from bioattn.models.detectors import Detectors
from bioattn.models.hooks import capture_activity, concat_units, record_map_means
from bioattn.models.network import LayerInfo, Network
from bioattn.netcdf import cf_dataset, layer_attrs, read_layer_table

#: Value types that sweeps understand, besides ``gradient`` (stored per image type).
VALUE_TYPES = ("tuning", "gradient")

#: ``attrs`` key of the fingerprint of the model the values were computed for.
FINGERPRINT_ATTR = "model_fingerprint"
#: ``attrs`` key set in memory when values of another model were deliberately accepted
#: (``allow_other_model``): the fingerprint of the model they were accepted for.
ALLOWED_ATTR = "allowed_for_model"


def _weights_hash(network: Network) -> str:
    digest = hashlib.sha256()
    update_with_module(digest, network.module)
    return digest.hexdigest()[:16]


def _detectors_hash(detectors: Detectors) -> str:
    digest = hashlib.sha256()
    detectors.update_digest(digest)
    return digest.hexdigest()[:16]


def model_fingerprint(network: Network, detectors: Detectors | None = None) -> str:
    """What values were computed from: ``"weights:<hash>,detectors:<hash>"``.

    Each hash is the first 16 hex digits of a sha256: of the network's state dict (names,
    shapes, dtypes and contents; not its device or precision), and of the detectors' tensors
    and categories. Without ``detectors`` (tuning values need none) only the weights part.
    """
    parts = {"weights": _weights_hash(network)}
    if detectors is not None:
        parts["detectors"] = _detectors_hash(detectors)
    return ",".join(f"{key}:{value}" for key, value in parts.items())


def _parse_fingerprint(text: object) -> dict[str, str]:
    if not isinstance(text, str) or not text:
        return {}
    return dict(part.partition(":")[::2] for part in text.split(","))


def _unit_coords(network: Network) -> dict[str, tuple[str, np.ndarray]]:
    layers = [layer.alias for layer in network.layers for _ in range(layer.channels)]
    channels = [k for layer in network.layers for k in range(layer.channels)]
    return {"layer": ("unit", np.array(layers)), "channel": ("unit", np.array(channels))}


def empty_values(network: Network, categories: Sequence[str]) -> xr.Dataset:
    """A values dataset with the network's unit coordinates and no variables yet."""
    n_units = sum(layer.channels for layer in network.layers)
    return xr.Dataset(
        coords={"category": list(categories), "unit": np.arange(n_units), **_unit_coords(network)},
        attrs={
            "model": network.name,
            **layer_attrs(network.layers),
            FINGERPRINT_ATTR: model_fingerprint(network),
        },
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
        for category in progress_bar(
            detectors.categories, desc="gradient values", disable=not progress
        )
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
    """Return ``values`` with ``gradient_<image_type>`` added.

    The fingerprint of ``values`` then names ``detectors`` too, unless the values came from
    another model (or carry no fingerprint): then it is left as it was.
    """
    check_values_match(values, network, detectors)
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
    current = model_fingerprint(network, detectors)
    recorded = _parse_fingerprint(values.attrs.get(FINGERPRINT_ATTR))
    if recorded and not _fingerprint_differences(recorded, _parse_fingerprint(current)):
        out.attrs[FINGERPRINT_ATTR] = current
    return out


def check_values_match(
    values: xr.Dataset,
    network: Network,
    detectors: Detectors | None = None,
    *,
    allow_other_model: bool = False,
    source: str = "the values dataset",
) -> None:
    """Raise unless ``values`` were computed for ``network`` (and ``detectors``, when given).

    ConfigError when the layers and maps differ, or when the values' fingerprint (see
    :func:`model_fingerprint`) names other weights or (with ``detectors``) other detectors;
    with ``allow_other_model`` the latter is only a warning, and ``values.attrs`` then records
    the model they were accepted for (so later checks against it pass quietly). Values without
    a fingerprint (written by older versions) are accepted with a warning. DataError when an
    entry is not finite (:func:`check_values_finite`). ``source`` names the values in messages.
    """
    # files before the CF attributes hold a JSON table; read_layer_table reads both forms
    expected = [(la.alias, la.conv or la.name, la.channels) for la in network.layers]
    found = read_layer_table(values)
    if found != expected:
        raise ConfigError(
            f"{source} does not match model {network.name!r}: it holds layers "
            f"{_describe_layers(found)} but the model has {_describe_layers(expected)}; "
            "recompute the values with `bioattn values` for this model"
        )
    for name, (_dim, expected_coord) in _unit_coords(network).items():
        if name not in values.coords or not np.array_equal(values[name].values, expected_coord):
            raise DataError(
                f"{source} has the layer table of model {network.name!r} but its per-unit "
                f"{name!r} coordinate does not follow it (the file is damaged or was edited); "
                "recompute the values with `bioattn values`"
            )
    check_values_finite(values, source)
    _check_provenance(values, network, detectors, allow_other_model, source)


def _fingerprint_differences(found: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """The parts (weights, detectors) that both fingerprints name and that differ."""
    return [key for key in current if key in found and found[key] != current[key]]


def _check_provenance(
    values: xr.Dataset,
    network: Network,
    detectors: Detectors | None,
    allow_other_model: bool,
    source: str,
) -> None:
    recorded = values.attrs.get(FINGERPRINT_ATTR)
    found = _parse_fingerprint(recorded)
    if not found:
        warnings.warn(
            f"{source} carries no model fingerprint (written by an older bioattn), so it cannot be "
            f"checked that it was computed for model {network.name!r}; recompute the values "
            "with `bioattn values` to have them checked",
            stacklevel=2,  # one place: shown once however many times the values are checked
        )
        return
    current = model_fingerprint(network, detectors)
    differ = _fingerprint_differences(found, _parse_fingerprint(current))
    if not differ:
        return
    allowed = _parse_fingerprint(values.attrs.get(ALLOWED_ATTR))
    if all(allowed.get(key) == _parse_fingerprint(current)[key] for key in differ):
        return  # already accepted for this very model, with a warning
    what = " and ".join(
        "weights" if key == "weights" else "detectors (or categories)" for key in differ
    )
    problem = (
        f"{source} was computed for another model: its fingerprint is {recorded} but model "
        f"{network.name!r} here is {current}; the {what} differ"
    )
    if not allow_other_model:
        raise ConfigError(
            f"{problem}. Recompute the values with `bioattn values` for this model, or set "
            "[values] allow_other_model = true to use them on purpose"
        )
    warnings.warn(f"{problem}; using them anyway ([values] allow_other_model = true)", stacklevel=2)
    values.attrs[ALLOWED_ATTR] = current


def check_values_finite(values: xr.Dataset, source: str = "the values dataset") -> None:
    """Raise DataError if a variable of ``values`` holds NaN or ±inf, naming the first such
    entry (variable, category, layer and channel) and how many there are."""
    counts: dict[str, int] = {}
    first = ""
    for name, variable in values.data_vars.items():
        if variable.dtype.kind not in "fc":
            continue
        bad = ~np.isfinite(np.asarray(variable.values))
        if not bad.any():
            continue
        counts[str(name)] = int(bad.sum())
        if not first:
            index = np.argwhere(bad)[0]
            first = (
                f"{name}[{_describe_entry(values, variable.dims, index)}] = "
                f"{variable.values[tuple(index)].item()}"
            )
    if counts:
        total = sum(counts.values())
        per_variable = ", ".join(f"{count} in {name!r}" for name, count in counts.items())
        raise DataError(
            f"{source} holds {total} non-finite entr{'y' if total == 1 else 'ies'} (NaN or inf: "
            f"{per_variable}); the first is {first}. Values must be finite: recompute them with "
            "`bioattn values`"
        )


def _describe_entry(values: xr.Dataset, dims: Sequence[object], index: np.ndarray) -> str:
    parts = []
    for dim, i in zip(dims, index, strict=True):
        if dim == "category" and "category" in values.coords:
            parts.append(f"category {str(values['category'].values[i])!r}")
        elif dim == "unit" and "layer" in values.coords and "channel" in values.coords:
            layer, channel = str(values["layer"].values[i]), int(values["channel"].values[i])
            parts.append(f"layer {layer} channel {channel}")
        else:
            parts.append(f"{dim} {int(i)}")
    return ", ".join(parts)


def _describe_layers(table: Sequence[tuple[str, str, int]] | None) -> str:
    if not table:
        return "(no layer table)"
    return ", ".join(f"{alias}[{channels}]" for alias, _path, channels in table)


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
    """Write values as netCDF (HDF5-based, via h5netcdf) atomically.

    Numeric variables are stored with HDF5's Fletcher-32 checksum, so that a file whose bytes
    were damaged later fails to load instead of giving other numbers. The file carries CF
    attributes (:mod:`bioattn.netcdf`): units and long names, Conventions, title, source and
    history; ``values`` itself is not changed.
    """
    path = Path(path)
    values = cf_dataset(
        values, "bioattn attention values per feature map", "bioattn.attention.values.save_values"
    )
    encoding = {
        name: {"fletcher32": True}
        for name, variable in values.variables.items()
        if variable.dtype.kind in "biufc" and variable.size > 0
    }
    with atomic_path(path) as tmp:  # removed again if writing fails (a full disk)
        values.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)
    return path


def _read_values(path: Path) -> tuple[xr.Dataset | None, str]:
    """The dataset in ``path``, or ``None`` and what went wrong (any exception: a damaged file
    fails in many ways in h5py, h5netcdf and xarray).

    The exception is not kept: a half-opened ``h5netcdf.File`` that it references would report
    an ``AttributeError`` from its ``__del__`` later; that one report is swallowed here.
    """
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        where = getattr(unraisable.object, "__module__", None) or ""
        if not (where.startswith("h5netcdf") and isinstance(unraisable.exc_value, AttributeError)):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        try:
            with xr.open_dataset(path, engine="h5netcdf") as handle:
                return handle.load(), ""
        except Exception as error:
            problem = f"{type(error).__name__}: {error}"
        gc.collect()  # while the hook is installed
        return None, problem
    finally:
        sys.unraisablehook = previous


def load_values(
    path: str | Path,
    network: Network | None = None,
    detectors: Detectors | None = None,
    *,
    allow_other_model: bool = False,
) -> xr.Dataset:
    """Read values written by :func:`save_values`.

    Always refused (DataError) when the file cannot be read or an entry is not finite; with
    ``network`` (and ``detectors``) also checked to belong to that model, see
    :func:`check_values_match`.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"values file {path} does not exist; compute it with `bioattn values`")
    values, problem = _read_values(path)
    if values is None:
        raise DataError(
            f"cannot read values file {path}: it is corrupt or not a values file ({problem}); "
            "recompute it with `bioattn values` (a netCDF file written by `bioattn values` is "
            "expected)"
        )
    source = f"values file {path}"
    if network is None:
        check_values_finite(values, source)
    else:
        check_values_match(
            values, network, detectors, allow_other_model=allow_other_model, source=source
        )
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
