"""CF conventions for the netCDF files bioattn writes (values, recordings, assemblies).

Every variable and coordinate gets ``units`` and ``long_name`` (:func:`variable_attrs`), every
file the global attributes ``Conventions`` (CF-1.8), ``title``, ``source`` (``bioattn
<version>``) and ``history`` (an ISO 8601 UTC timestamp and what wrote the file;
:func:`global_attrs`). Writers built on xarray call :func:`cf_dataset`; the streaming recording
writer (h5netcdf) calls :func:`annotate_file` once its variables exist.

**Units.** Everything bioattn stores is dimensionless: network activity, logits, tuning
z-scores, normalised gradients and β have no physical unit, and indices, flags and labels are
counts or names. CF writes a dimensionless quantity as ``units = "1"``, which is what every
variable gets; the ``long_name`` says what the number is.

**Layer lists.** The global attribute ``layers`` is a list of layer aliases (a netCDF string
array) with the matching module names in ``layer_modules``; files written before held one JSON
string ``[[alias, module, maps], ...]``. :func:`read_layer_table` reads both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import xarray as xr

from bioattn import __version__

#: The CF version the files follow.
CONVENTIONS = "CF-1.8"
#: CF's unit of a dimensionless quantity.
DIMENSIONLESS = "1"

#: ``long_name`` of every variable and coordinate bioattn writes, by name.
LONG_NAMES: dict[str, str] = {
    # values files and recordings
    "category": "category name",
    "unit": "index of the feature map among the stored maps",
    "layer": "alias of the layer the feature map belongs to",
    "channel": "index of the feature map (channel) within its layer",
    "mean_activity": "mean post-ReLU activity over standard images of the category and space",
    "tuning": "tuning value: mean activity z-scored across categories",
    # recordings
    "activity": "spatially averaged post-ReLU activity of the feature map",
    "quadrant_activity": "post-ReLU activity averaged over one quadrant of the feature map",
    "quadrant": "quadrant of a 2x2 array image",
    "target_logit": "logit of the task category's detector",
    "condition": "condition id (rows of one condition are contiguous)",
    "role": "role of the image: task image or unattended reference image",
    "task_category": "category whose stimulus set the image belongs to",
    "image": "index of the image in its stimulus set",
    "is_target": "whether the image is a positive (contains the task category)",
    "target_quadrant": "quadrant holding the target in array images (0-3; -1: none)",
    "attended_category": "attended category (none: unattended)",
    "attended_layer": "layer attention is applied at (all: every layer; none: unattended)",
    "method": "attention method: value type and gain rule (none: unattended)",
    "beta": "attention strength beta",
    # Brain-Score-style assemblies (bioattn.experiments.assembly)
    "stimulus_id": "identifier of the stimulus (task category, role and image index)",
    "neuroid_id": "identifier of the neuroid (layer alias and channel)",
    "category_name": "category whose stimulus set the image belongs to",
}

#: ``long_name`` templates of variables named by a prefix and a suffix (image type, layer).
PREFIXED_LONG_NAMES: dict[str, str] = {
    "gradient_": "gradient value on {} images: mean d(detector logit)/d(activity), normalised "
    "per map to [-1, 1]",
    "maps_": "full post-ReLU feature maps of layer {}",
}


def long_name(name: str) -> str | None:
    """The ``long_name`` of a variable bioattn writes, or ``None`` for a name it does not know."""
    if name in LONG_NAMES:
        return LONG_NAMES[name]
    for prefix, template in PREFIXED_LONG_NAMES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return template.format(name[len(prefix) :])
    return None


def variable_attrs(name: str, existing: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``units`` and ``long_name`` for variable ``name``; what ``existing`` already sets wins.

    A variable bioattn does not know (one a user added) gets its ``description``, else its
    name, as ``long_name``, and no ``units``: its unit is not bioattn's to claim.
    """
    existing = dict(existing or {})
    known = long_name(name)
    attrs = {"long_name": known or str(existing.get("description") or name)}
    if known is not None:
        attrs["units"] = DIMENSIONLESS
    return {key: str(existing.get(key, value)) for key, value in attrs.items()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def global_attrs(
    title: str, made_by: str, existing: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """``Conventions``, ``title``, ``source`` and ``history`` for a file bioattn writes.

    ``made_by`` says what wrote the file (e.g. ``"bioattn record"``); the history line is
    ``"<UTC timestamp> <made_by>"``, appended to the history of ``existing`` attributes (a
    dataset read from a file and written again keeps its earlier lines, as CF asks).
    """
    line = f"{_now()} {made_by} (bioattn {__version__})"
    earlier = str((existing or {}).get("history") or "").strip()
    return {
        "Conventions": CONVENTIONS,
        "title": title,
        "source": f"bioattn {__version__}",
        "history": f"{earlier}\n{line}" if earlier else line,
    }


def cf_dataset(dataset: xr.Dataset, title: str, made_by: str) -> xr.Dataset:
    """A shallow copy of ``dataset`` with CF attributes on it and on every variable.

    The data are shared, not copied: only attributes change.
    """
    out = dataset.copy(deep=False)
    for name, variable in out.variables.items():
        variable.attrs = {**variable.attrs, **variable_attrs(str(name), variable.attrs)}
    out.attrs = {**out.attrs, **global_attrs(title, made_by, out.attrs)}
    return out


def annotate_file(file: Any, title: str, made_by: str) -> None:
    """Set CF attributes on an open, writable ``h5netcdf.File`` and each of its variables."""
    for name, variable in file.variables.items():
        for key, value in variable_attrs(str(name), dict(variable.attrs)).items():
            variable.attrs[key] = value
    for key, value in global_attrs(title, made_by, dict(file.attrs)).items():
        file.attrs[key] = value


def layer_attrs(layers: Sequence[Any]) -> dict[str, list[str]]:
    """The global attributes naming a file's layers (``LayerInfo`` objects), in order.

    ``layers``: their aliases; ``layer_modules``: the module (conv) each alias reads, else its
    site name. Both are lists of strings, which netCDF stores as string arrays.
    """
    return {
        "layers": [str(layer.alias) for layer in layers],
        "layer_modules": [str(layer.conv or layer.name) for layer in layers],
    }


def string_list(value: Any) -> list[str]:
    """A string-array attribute as a list of strings.

    netCDF readers give a one-element string array back as a plain string, and a JSON string
    list was the old form of such attributes: both are accepted.
    """
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                return [value]
            return [str(v) for v in parsed] if isinstance(parsed, list) else [value]
        return [value]
    return [str(v) for v in np.asarray(value, dtype=object).reshape(-1)]


def read_layer_table(dataset: xr.Dataset) -> list[tuple[str, str, int]] | None:
    """``[(alias, module, maps), ...]`` from a values file's or recording's attributes.

    Reads the list form (``layers`` and ``layer_modules``; the number of maps is counted in the
    per-unit ``layer`` coordinate) and the old JSON-string table. ``None`` when the dataset
    names no layers or the table cannot be read.
    """
    found = dataset.attrs.get("layers")
    if found is None:
        return None
    if isinstance(found, str) and found.strip().startswith("[["):
        try:
            return [(str(a), str(m), int(n)) for a, m, n in json.loads(found)]
        except (json.JSONDecodeError, TypeError, ValueError):
            return None
    aliases = string_list(found)
    modules = string_list(dataset.attrs.get("layer_modules"))
    if len(modules) != len(aliases):
        return None
    if "layer" in dataset.variables:
        per_unit = np.asarray(dataset["layer"].values).astype(str)
        counts = [int((per_unit == alias).sum()) for alias in aliases]
    else:
        counts = [0] * len(aliases)
    return list(zip(aliases, modules, counts, strict=True))
