"""A self-contained HTML report of a results folder: figures embedded, tables, config, versions.

``bioattn report RUN_DIR`` writes ``RUN_DIR/report.html``. The page has no external references
(figures are embedded as base64 PNG, styles inline), so it opens offline and can be mailed or
archived as one file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from bioattn.cache import atomic_write_bytes
from bioattn.errors import DataError

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f3f3f3; } figure { margin: 1em 0; } img { max-width: 100%; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
"""

#: Tables shown when present, with the number of rows shown at most.
_TABLES = (
    ("findings.csv", "Findings: verdicts computed from this run", 20),
    ("effects.csv", "Performance increase by layer (95 % intervals)", 200),
    ("summary.csv", "Summary: performance increase by layer", 200),
    ("gains.csv", "Best β and gain per category", 60),
)


def _table_html(frame: pd.DataFrame, limit: int) -> str:
    shown = frame.head(limit)
    body = shown.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, escape=True)
    if len(frame) > limit:
        body += f"<p>First {limit} of {len(frame)} rows; the whole table is in the CSV.</p>"
    return body


def _figure_html(path: Path, run_dir: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    label = html.escape(str(path.relative_to(run_dir)))
    return (
        f'<figure><img alt="{label}" src="data:image/png;base64,{data}">'
        f"<figcaption>{label}</figcaption></figure>"
    )


def write_report(run_dir: str | Path, title: str | None = None) -> Path:
    """Write ``run_dir/report.html`` from the folder's tables, figures and ``config.json``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"results folder {run_dir} does not exist")
    figures = sorted(run_dir.rglob("*.png"))
    tables = [(run_dir / name, heading, limit) for name, heading, limit in _TABLES]
    tables = [t for t in tables if t[0].exists()]
    config_path = run_dir / "config.json"
    if not figures and not tables and not config_path.exists():
        raise DataError(
            f"{run_dir} holds no figures, tables or config.json; give a folder written by "
            "`bioattn sweep`, `bioattn demo` or another bioattn command"
        )
    title = title or f"bioattn results: {run_dir.resolve().name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    config = None
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"{config_path} is not valid JSON ({error})") from None
    if isinstance(config, dict):
        facts = []
        environment = config.get("environment")
        if isinstance(environment, dict):
            facts += [f"{k} {v}" for k, v in environment.items()]
        timings = config.get("timings_seconds")
        if isinstance(timings, dict):
            facts += [f"{k}: {v} s" for k, v in timings.items()]
        if facts:
            parts.append(f"<p>{html.escape(' · '.join(facts))}</p>")
    for path, heading, limit in tables:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(_table_html(pd.read_csv(path), limit))
    if figures:
        parts.append("<h2>Figures</h2>")
        parts.extend(_figure_html(path, run_dir) for path in figures)
    if config is not None:
        parts.append("<h2>Configuration (config.json)</h2>")
        parts.append(f"<pre>{html.escape(json.dumps(config, indent=2))}</pre>")
    parts.append("</body></html>")
    out = run_dir / "report.html"
    atomic_write_bytes(out, "\n".join(parts).encode("utf-8"))
    return out
