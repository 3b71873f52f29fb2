"""The README's Python API examples run as written (on the trained default network)."""

from __future__ import annotations

from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def quick_replication(monkeypatch):
    """The replication example trains five networks; here each network's run is a synthetic
    stand-in (tests/test_findings.py), so that the pooling, statistics and verdicts run for
    real in seconds. `bioattn demo` itself runs end to end in tests/test_end_to_end.py."""
    import bioattn
    from bioattn.experiments import replication
    from tests.test_findings import fake_replication

    fake = fake_replication([])
    monkeypatch.setattr(replication, "run_replication", fake)
    monkeypatch.setattr(bioattn, "run_replication", fake, raising=False)


@pytest.mark.slow
def test_the_readme_python_examples_run(tmp_path, monkeypatch, quick_replication):
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = [part.split("```", 1)[0] for part in section.split("```python\n")[1:]]
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)  # prepare() keeps values in runs/sweep/ under the working folder
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert set(namespace["result"].table["layer"]) >= {"conv3_1"}
    assert "mean_delta_pp" in namespace["result"].summary
    assert len(namespace["sink"].table()) > 0
    assert namespace["features"].shape[0] == 150
    assert set(namespace["replicated"]["verdicts"]["verdict"]) <= {
        "holds",
        "does not hold",
        "mixed",
        "not run",
    }
    assert "mean_delta_pp" in namespace["replicated"]["effects"]
    assert "verdicts" in namespace["one"]
