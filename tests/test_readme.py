"""The README's Python API examples run as written (on the trained default network)."""

from __future__ import annotations

from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_the_readme_python_examples_run(tmp_path, monkeypatch):
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = [part.split("```", 1)[0] for part in section.split("```python\n")[1:]]
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)  # prepare() keeps values in runs/sweep/ under the working folder
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert set(namespace["table"]["layer"]) >= {"conv3_1"}
    assert len(namespace["sink"].table()) > 0
    assert namespace["features"].shape[0] == 150
