"""Brain-Score-style assemblies of a recording: plain xarray, no Brain-Score dependency.

:func:`to_brainscore_assembly` turns a recording's spatially averaged ``activity`` (stimulus,
unit) into a DataArray with dims (``presentation``, ``neuroid``), the layout of Brain-Score's
``NeuroidAssembly`` (its MultiIndexes left out, as brainio writes them to netCDF; wrap the
array in ``brainio.assemblies.NeuroidAssembly`` to get them back).

* presentation (one per recording row): ``stimulus_id`` (``<task category>.<role>.<image>``:
  one image seen under several attention conditions keeps its id), ``category_name`` (the
  task category) and the recording's per-row coordinates ``condition``, ``role``,
  ``task_category``, ``image``, ``is_target``, ``target_quadrant``, ``attended_category``,
  ``attended_layer``, ``method`` and ``beta``; with detectors also ``target_logit``.
* neuroid (one per feature map): ``neuroid_id`` (``<layer>.<channel>``, as Brain-Score's model
  tools name the channels of a layer), ``layer``, ``channel`` and ``unit`` (the recording's
  map index).

:func:`save_assembly` writes it as netCDF with CF attributes (:mod:`bioattn.netcdf`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from bioattn.analysis.neural import ROW_COORDS, AnalysisError, recording_rows
from bioattn.cache import atomic_path
from bioattn.netcdf import cf_dataset

#: ``format`` attribute of assembly files (not a recording: ``bioattn analyze`` refuses them).
ASSEMBLY_FORMAT = "bioattn-brainscore-assembly-1"
#: Recording attributes an assembly keeps.
KEPT_ATTRS = ("model", "image_type", "source_split", "layers", "layer_modules", "network_layers")
#: Name of the assembly's data variable in its file.
ASSEMBLY_NAME = "activity"


def to_brainscore_assembly(recording: xr.Dataset | str | Path) -> xr.DataArray:
    """The recording's map-mean activity as a (presentation, neuroid) DataArray.

    ``recording``: an open recording (:func:`~bioattn.experiments.recording.open_recording`)
    or the path of one. The values are the recording's ``activity``, unchanged (float32).
    Raises :class:`~bioattn.errors.DataError` for a missing file or one that is not a
    recording, and :class:`~bioattn.analysis.neural.AnalysisError` for a dataset that lacks a
    recording's variables.
    """
    if isinstance(recording, (str, Path)):
        from bioattn.experiments.recording import open_recording

        with open_recording(recording) as dataset:
            return to_brainscore_assembly(dataset)
    rows = recording_rows(recording)  # refuses a dataset without a recording's coordinates
    for name in ("unit", "layer", "channel"):
        if name not in recording.variables:
            raise AnalysisError(
                f"exporting an assembly needs the per-unit {name!r} coordinate, which the "
                "recording lacks; give a recording made by `bioattn record`"
            )
    layers = recording["layer"].values.astype(str)
    channels = np.asarray(recording["channel"].values, dtype=np.int64)
    stimulus_id = [
        f"{category}.{role}.{image}"
        for category, role, image in zip(
            rows["task_category"], rows["role"], rows["image"], strict=True
        )
    ]
    presentation: dict[str, tuple[str, np.ndarray]] = {
        "stimulus_id": ("presentation", np.array(stimulus_id, dtype=object)),
        "category_name": ("presentation", rows["task_category"].to_numpy(dtype=object)),
    }
    for name in ROW_COORDS:
        presentation[name] = ("presentation", rows[name].to_numpy())
    if "target_logit" in recording.variables:
        presentation["target_logit"] = ("presentation", recording["target_logit"].values)
    neuroid = {
        "neuroid_id": (
            "neuroid",
            np.array([f"{a}.{c}" for a, c in zip(layers, channels, strict=True)], dtype=object),
        ),
        "layer": ("neuroid", layers.astype(object)),
        "channel": ("neuroid", channels),
        "unit": ("neuroid", np.asarray(recording["unit"].values)),
    }
    attrs = {key: recording.attrs[key] for key in KEPT_ATTRS if key in recording.attrs}
    return xr.DataArray(
        np.asarray(recording["activity"].values),
        dims=("presentation", "neuroid"),
        coords={**presentation, **neuroid},
        name=ASSEMBLY_NAME,
        attrs={"format": ASSEMBLY_FORMAT, **attrs},
    )


def save_assembly(assembly: xr.DataArray, path: str | Path) -> Path:
    """Write an assembly as netCDF (h5netcdf) atomically, with CF attributes.

    Read it back with ``xarray.open_dataarray(path, engine="h5netcdf")``.
    """
    path = Path(path)
    # the attributes go on the file and stay on the variable: open_dataarray (how Brain-Score's
    # brainio reads assemblies) gives the variable's
    dataset = cf_dataset(
        assembly.to_dataset(promote_attrs=True),
        "bioattn Brain-Score-style assembly of feature-map activity",
        "bioattn.experiments.assembly.save_assembly",
    )
    with atomic_path(path) as tmp:  # removed again if writing fails (a full disk)
        dataset.to_netcdf(tmp, engine="h5netcdf")
    return path
