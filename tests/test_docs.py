"""The documentation site builds in strict mode (mkdocs.yml): every page, link and API reference
resolves, offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly_and_offline(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[dev]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (the dev extra)")
    site = tmp_path / "site"
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    assert (site / "index.html").exists()
    reference = (site / "reference" / "experiments.html").read_text(encoding="utf-8")
    assert 'id="bioattn.experiments.results.sweep"' in reference  # mkdocstrings rendered it
    # nothing is fetched when a page is opened: no scripts, styles or fonts from the web
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        fetched = re.findall(r'<(?:script|link|img)[^>]*(?:src|href)="(https?://[^"]+)"', text)
        assert fetched == [], f"{page.relative_to(site)} loads {fetched}"
