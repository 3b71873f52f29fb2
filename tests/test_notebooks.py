"""The tutorials (docs/tutorials/*.ipynb) run top to bottom, on the tiny network.

Each notebook reads ``BIOATTN_TUTORIAL_CONFIG`` in its first cell: unset (a reader), it uses
the trained default network; here it names a config of the tiny three-block network on a
pattern image folder (:func:`tests.conftest.write_tiny_config`), which keeps every notebook
to seconds. The kernel is this interpreter's (ipykernel's ``python3`` spec) and starts in the
repository root, so that the tiny model's spec ``tests.conftest:tiny_rgb_vgg`` imports.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import write_tiny_config

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.ipynb"))


def test_there_are_three_tutorials_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (the dev extra)")
    assert [p.name for p in TUTORIALS] == [
        "01-quickstart.ipynb",
        "02-values-and-layers.ipynb",
        "03-neural-recording.ipynb",
    ]
    for path in TUTORIALS:
        notebook = nbformat.read(path, as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        assert "BIOATTN_TUTORIAL_CONFIG" in code[0].source, path.name


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_the_tutorial_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (the dev extra)")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (the dev extra)")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (the dev extra)")
    # the kernel inherits this environment: the tiny config, no display, this worktree's code
    monkeypatch.setenv("BIOATTN_TUTORIAL_CONFIG", str(write_tiny_config(tmp_path)))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    paths = [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    assert (tmp_path / "run" / "values.nc").exists()  # it ran on the tiny config
