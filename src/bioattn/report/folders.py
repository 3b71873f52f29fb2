"""Reading a results folder into what the report shows: a :class:`Section` per folder.

A folder is recognised by the files it holds, not by the command that wrote it, so one reader
serves every family: ``findings.csv`` (+ ``comparisons.csv``) gives verdicts (the SSN
replication writes one per network folder, ``ssn/`` and ``plain/``); ``effects.csv`` or
``summary.csv`` the performance increase and Δd′/Δc by layer;
a long-form performance table (``selection.parquet``, ``performance.parquet``,
``cueing.parquet``, ``noise_detection.parquet``; for several networks their
``network-*/selection.parquet``) the curves against β or SNR; the mechanisms' ``comparison.csv``
and the SSN signatures' ``summation.csv``/``contrast_response.csv``/``time_course.csv`` their
own figures. Every CSV becomes a formatted table, every PNG a static figure, and sub-folders that
hold results (``orientation/``, ``spatial/``, ``ssn/``, ``plain/``, ``cueing/``…) child sections.
Per-network folders (``network-<seed>``) of a pooled run are named, not repeated.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from bioattn.errors import DataError
from bioattn.report import figures as rf
from bioattn.report.tables import Table, format_duration, format_number

__all__ = ["Finding", "Plot", "Section", "read_folder"]

#: Tables shown first, in this order, with their titles; other CSVs follow by name.
TABLE_TITLES = {
    "effects.csv": "Performance increase by layer: Δ with 95 % intervals",
    "method_tests.csv": "Gradient vs tuning, layer by layer (paired tests)",
    "comparisons.csv": "Every comparison behind the findings",
    "summary.csv": "Performance increase by layer: mean ± SEM over categories",
    "gains.csv": "Per category: chosen β and held-out Δ",
    "comparison.csv": "Attention mechanisms compared",
    "comparison_by_category.csv": "Mechanisms by category",
    "gain_correlations.csv": "Correlations between mechanisms' gains",
    "cueing_summary.csv": "Spatial cueing: means over categories per cue and β",
    "noise_thresholds.csv": "Detection in noise: thresholds",
    "orientation_detectors.csv": "Orientation detectors",
    "criterion_sensitivity.csv": "Criterion and sensitivity changes",
    "summation.csv": "Response summation",
    "contrast_response.csv": "Contrast response",
    "time_course.csv": "Time courses",
    "convergence.csv": "SSN convergence",
}
#: Columns each known table must have (a corrupt or foreign file is refused with these named).
REQUIRED = {
    "findings.csv": ("finding", "claim", "verdict"),
    "effects.csv": ("image_type", "layer", "method", "mean_delta_pp", "ci_low_pp", "ci_high_pp"),
    "summary.csv": ("image_type", "layer", "method", "mean_delta_pp", "sem_delta_pp"),
    "comparisons.csv": ("finding", "image_type", "comparison", "unit", "mean", "ci_low", "ci_high"),
    "gains.csv": ("image_type", "category", "layer", "method", "delta_pp"),
}
#: Long-form performance tables, in order of preference for the β curves.
CURVE_TABLES = (
    "selection.parquet",
    "performance.parquet",
    "cueing.parquet",
    "noise_detection.parquet",
)
_PERF_COLUMNS = ("image_type", "method", "beta", "performance", "dprime", "criterion")
_KIND_TITLES = {
    "replication": "Replication on one network (bioattn demo)",
    "replicate": "Replication on several networks (bioattn replicate)",
    "sweep": "Attention sweep (bioattn sweep)",
    "orientation": "Orientation and spatial attention (bioattn orientation)",
    "ssn-replication": "SSN-CNN replication (bioattn ssn replicate)",
    "mechanisms": "Attention mechanisms compared (bioattn mechanisms)",
}
_CHILD_TITLES = {
    "orientation": "Feature attention to orientation",
    "spatial": "Spatial attention",
    "ssn": "SSN-CNN, attention as input current",
    "plain": "Plain CNN, multiplicative FSGM",
    "ssn_fsgm": "SSN-CNN, multiplicative FSGM",
    "cueing": "Spatial cueing",
    "noise": "Detection in noise",
}


@dataclass(frozen=True)
class Finding:
    """One finding's verdict and the numbers behind it."""

    label: str
    claim: str
    verdict: str
    counts: str
    #: (setting, numbers, outcome) per comparison; outcome "" when not given
    evidence: tuple[tuple[str, str, str], ...]
    #: what every comparison measures (e.g. "Δ gradient − Δ tuning"), when they share it
    measure: str = ""


@dataclass(frozen=True)
class Plot:
    """One interactive figure with its title and what it shows."""

    title: str
    caption: str
    figure: go.Figure


@dataclass
class Section:
    """What the report shows of one results folder (and of its result sub-folders)."""

    path: Path
    title: str
    facts: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    children: list[Section] = field(default_factory=list)
    config: dict[str, Any] | None = None
    effects: pd.DataFrame | None = None
    note: str = ""

    def empty(self) -> bool:
        """True when the folder held nothing the report knows."""
        return (
            not (self.findings or self.plots or self.tables or self.images or self.children)
            and self.config is None
        )


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV table, or a :class:`DataError` that names the file and what it should hold."""
    try:
        frame = pd.read_csv(path, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(
            f"{path} is not a readable CSV table ({error}); rerun the command that wrote it "
            "or remove the file"
        ) from None
    required = REQUIRED.get(path.name, ())
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path} lacks the columns {missing} that a bioattn {path.name} has (it has "
            f"{list(frame.columns)}); rerun the command that wrote it"
        )
    return frame


def read_parquet(path: Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """A Parquet table, or a :class:`DataError` that names the file."""
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise DataError(
            f"{path} is not a readable Parquet table ({type(error).__name__}: {error}); rerun "
            "the command that wrote it or remove the file"
        ) from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks the columns {missing}; it has {list(frame.columns)}")
    return frame


def read_json(path: Path) -> Any:
    """A JSON document, or a :class:`DataError` that names the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(
            f"{path} is not valid JSON ({error}); rerun the command that wrote it"
        ) from None


# --- what was run ---------------------------------------------------------------------------
def _sweep_settings(settings: dict[str, Any]) -> dict[str, Any]:
    for candidate in (
        settings.get("sweep"),
        (settings.get("experiment") or {}).get("sweep"),
        settings.get("orientation"),
        (settings.get("comparison") or {}),
    ):
        if isinstance(candidate, dict) and candidate:
            return candidate
    return {}


def _span(values: list[Any]) -> str:
    numbers = [float(v) for v in values]
    return f"{format_number('beta', min(numbers))}–{format_number('beta', max(numbers))}"


def _facts(config: dict[str, Any], tables: dict[str, pd.DataFrame], path: Path) -> list[str]:
    """Two lines: what was run (model, data, task) and the conditions, time and versions."""
    settings = config.get("settings") if isinstance(config.get("settings"), dict) else {}
    sweep = _sweep_settings(settings)
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    what: list[str] = []
    name = model.get("name")
    networks = model.get("networks")
    if isinstance(networks, dict) and networks:
        accuracy = [n.get("test_accuracy") for n in networks.values() if isinstance(n, dict)]
        accuracy = [a for a in accuracy if isinstance(a, (int, float))]
        seeds = settings.get("seeds") or list(networks)
        text = (
            f"{len(networks)} × {name or 'network'} (training seeds {', '.join(map(str, seeds))})"
        )
        if accuracy:
            text += f", test accuracy {100 * sum(accuracy) / len(accuracy):.1f} % (mean)"
        what.append(text)
    elif name:
        metrics = model.get("metrics") if isinstance(model.get("metrics"), dict) else {}
        text = f"model {name}"
        if isinstance(metrics.get("test_accuracy"), (int, float)):
            text += f", test accuracy {100 * metrics['test_accuracy']:.1f} %"
        what.append(text)
    if isinstance(settings.get("training"), dict) or str(name).startswith("fashion-"):
        what.append("Fashion-MNIST")
    task = sweep.get("task")
    image_types = sweep.get("image_types")
    if task or image_types:
        part = f"{task or ''} task".strip()
        if image_types:
            part += f", {' and '.join(map(str, image_types))} images"
        what.append(part)
    gains = tables.get("gains.csv")
    if gains is not None and "category" in gains.columns:
        what.append(f"{gains['category'].nunique()} categories")
    if sweep.get("n_pos") is not None:
        what.append(f"{sweep['n_pos']} + {sweep.get('n_neg', sweep['n_pos'])} test images each")
    how: list[str] = []
    methods = sweep.get("methods")
    if methods:
        how.append(f"{len(methods)} methods ({', '.join(map(str, methods))})")
    layered = tables.get("effects.csv", tables.get("summary.csv"))
    if layered is not None and "layer" in layered.columns:
        how.append(f"{layered['layer'].nunique()} layer settings")
    betas = sweep.get("betas")
    if betas:
        how.append(f"{len(betas)} β ({_span(betas)})")
    conditions = " × ".join(how)
    tail: list[str] = []
    stamp = datetime.fromtimestamp((path / "config.json").stat().st_mtime, tz=timezone.utc)
    tail.append(f"finished {stamp:%Y-%m-%d %H:%M} UTC")
    timings = config.get("timings_seconds")
    if isinstance(timings, dict):
        total = timings.get("total")
        if not isinstance(total, (int, float)):
            numbers = [v for v in timings.values() if isinstance(v, (int, float))]
            total = sum(numbers) if numbers else None
        if isinstance(total, (int, float)) and not math.isnan(total):
            tail.append(f"took {format_duration(float(total))}")
    environment = config.get("environment")
    if isinstance(environment, dict):
        versions = [
            f"{k} {environment[k]}" for k in ("bioattn", "torch", "python") if k in environment
        ]
        if "threads" in environment:
            versions.append(f"{environment['threads']} threads")
        tail.append(", ".join(versions))
    lines = [" · ".join(what)] if what else []
    lines.append(" · ".join(p for p in [conditions, *tail] if p))
    return lines


# --- findings -------------------------------------------------------------------------------
def _findings(found: pd.DataFrame, compared: pd.DataFrame | None) -> list[Finding]:
    out = []
    for row in found.itertuples(index=False):
        finding = str(row.finding)
        label = f"Finding {finding}" if finding.isdigit() else f"{finding.capitalize()}"
        counts = ""
        supporting = getattr(row, "supporting", "")
        if isinstance(supporting, str) and supporting:
            against = getattr(row, "contradicting", 0)
            counts = f"{supporting} support, {int(against or 0)} against"
        evidence: tuple[tuple[str, str, str], ...] = ()
        measure = ""
        rows = None
        if compared is not None:
            rows = compared.loc[compared["finding"].astype(str) == finding]
        if rows is not None and not rows.empty:
            settings, measure = _split_comparisons([str(c) for c in rows["comparison"]])
            evidence = tuple(
                (
                    f"{r.image_type} · {setting}",
                    f"{format_number('mean', r.mean, r.unit)} "
                    f"[{format_number('mean', r.ci_low, r.unit)}, "
                    f"{format_number('mean', r.ci_high, r.unit)}] {r.unit}",
                    str(r.outcome),
                )
                for r, setting in zip(rows.itertuples(index=False), settings, strict=True)
            )
        else:
            text = getattr(row, "evidence", "")
            if isinstance(text, str) and text:
                evidence = tuple((part, "", "") for part in text.split("; "))
        out.append(Finding(label, str(row.claim), str(row.verdict), counts, evidence, measure))
    return out


def _split_comparisons(comparisons: list[str]) -> tuple[list[str], str]:
    """(setting of each comparison, what they all measure) from labels such as
    ``"conv1_1: Δ gradient − Δ tuning"``; the settings are the labels when nothing is shared."""
    split = [c.split(": ", 1) for c in comparisons]
    if all(len(parts) == 2 for parts in split):
        bare = {re.sub(r"\s*\([^)]*\)", "", parts[1]) for parts in split}
        if len(bare) == 1:
            settings = [parts[0] for parts in split]
            details = [re.findall(r"\(([^)]*)\)", parts[1]) for parts in split]
            if len({parts[1] for parts in split}) > 1:  # the parentheses differ: keep them
                settings = [
                    f"{s} ({'; '.join(d)})" if d else s
                    for s, d in zip(settings, details, strict=True)
                ]
            return settings, bare.pop()
    if len(comparisons) > 1:
        suffix = os.path.commonprefix([c[::-1] for c in comparisons])[::-1]  # noqa: RUF071
        cut = suffix.find(", ")
        if cut >= 0 and len(suffix) - cut > 8:
            tail = suffix[cut:]
            return [c[: -len(tail)] for c in comparisons], tail[2:]
    return comparisons, ""


# --- figures --------------------------------------------------------------------------------
def _curve_table(path: Path) -> tuple[pd.DataFrame, str] | None:
    for name in CURVE_TABLES:
        if (path / name).exists():
            return read_parquet(path / name, _PERF_COLUMNS), name
    pooled = sorted(path.glob("network-*/selection.parquet"))
    if pooled:
        frames = [read_parquet(p, _PERF_COLUMNS) for p in pooled]
        return pd.concat(frames, ignore_index=True), f"{len(pooled)} networks' selection.parquet"
    return None


def _plots(path: Path, tables: dict[str, pd.DataFrame]) -> list[Plot]:
    plots: list[Plot] = []
    layered = tables.get("effects.csv")
    spread = "95 % intervals over networks and categories"
    if layered is not None and "n_networks" in layered.columns and layered["n_networks"].max() == 1:
        spread = "95 % intervals over categories (one network)"
    if layered is None:
        layered = tables.get("summary.csv")
        spread = "mean ± SEM over categories"
    if layered is not None and not layered.empty:
        plots.append(Plot(
            "Performance increase by layer",
            f"Δ performance (percentage points) when attention is applied at each layer, at the "
            f"β chosen per category; {spread}. “all”: every layer at β/10. Hover for values; "
            "click a method in the legend to hide or show it.",
            rf.performance_increase_figure(layered),
        ))  # fmt: skip
        sdt = rf.sdt_by_layer_figure(layered)
        if sdt is not None:
            plots.append(Plot(
                "Sensitivity (d′) and criterion by layer",
                f"Change of d′ (top) and of the criterion c (bottom) at the chosen β; {spread}. "
                "Finding 4: feature attention should mainly move c (negative: more “present”).",
                sdt,
            ))  # fmt: skip
    curves = _curve_table(path)
    if curves is not None:
        table, source = curves
        if "snr" in table.columns:
            plots.append(Plot(
                "Detection in noise: psychometric curves",
                f"Performance, d′ and criterion against the signal-to-noise ratio, mean over "
                f"categories ({source}).",
                rf.curves_figure(table, x="snr"),
            ))  # fmt: skip
        else:
            cue = "cue" if "cueing" in source else "method"
            plots.append(Plot(
                "Performance, d′ and criterion against β",
                f"Mean over categories per {cue} ({source}); the menu picks the attended layer.",
                rf.curves_figure(table),
            ))  # fmt: skip
    mechanisms = tables.get("comparison.csv")
    if mechanisms is not None and {"mechanism", "image_type"} <= set(mechanisms.columns):
        if {"dprime", "dprime_sem"} <= set(mechanisms.columns):
            spread = mechanisms["dprime_sem"]
            mechanisms = mechanisms.assign(
                _low=mechanisms["dprime"] - spread, _high=mechanisms["dprime"] + spread
            )
            plots.append(Plot(
                "Attention mechanisms compared: d′",
                "d′ per mechanism and image type, mean ± SEM over categories; hover for values.",
                rf.grouped_bars_figure(mechanisms, "mechanism", "dprime", "mechanism", "d′",
                                       "_low", "_high"),
            ))  # fmt: skip
        value = next((c for c in ("mean_delta_pp", "delta_pp") if c in mechanisms.columns), None)
        if value is not None:
            plots.append(Plot(
                "Attention mechanisms compared",
                "One bar per mechanism and image type; hover for values.",
                rf.grouped_bars_figure(mechanisms, "mechanism", value, "mechanism",
                                       value.replace("_", " "), *_ci_columns(mechanisms, value)),
            ))  # fmt: skip
    for name, x, title in (
        ("contrast_response.csv", "contrast", "Contrast response"),
        ("summation.csv", None, "Response summation"),
        ("time_course.csv", "time_ms", "Time course"),
    ):
        frame = tables.get(name)
        if frame is None or frame.empty:
            continue
        numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
        x_col = x if x in frame.columns else (numeric[0] if numeric else None)
        ys = [c for c in numeric if c != x_col][:3]
        color = next((c for c in ("condition", "method", "population") if c in frame.columns), None)
        if x_col and ys:
            plots.append(Plot(title, f"From {name}; hover for values.",
                              rf.lines_figure(frame, x_col, ys, color)))  # fmt: skip
    return plots


def _ci_columns(frame: pd.DataFrame, value: str) -> tuple[str | None, str | None]:
    for low, high in (("ci_low_pp", "ci_high_pp"), ("ci_low", "ci_high")):
        if {low, high} <= set(frame.columns):
            return low, high
    return None, None


# --- the folder -----------------------------------------------------------------------------
def _is_results(path: Path) -> bool:
    names = {p.name for p in path.iterdir()}
    return bool(
        names
        & ({"config.json", "findings.json", "figures"} | set(TABLE_TITLES) | set(CURVE_TABLES))
        or any(n.endswith((".csv", ".parquet")) for n in names)
    )


def read_folder(path: str | Path, title: str | None = None, depth: int = 0) -> Section:
    """The :class:`Section` of one results folder (its result sub-folders as children).

    Raises :class:`DataError` for a missing folder, a folder with nothing the report knows, or
    a damaged table or JSON file (naming the file and what it should hold).
    """
    path = Path(path)
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise DataError(f"results folder {path} {what}; give a folder written by a bioattn command")
    config = None
    if (path / "config.json").exists():
        config = read_json(path / "config.json")
        if not isinstance(config, dict):
            raise DataError(f"{path / 'config.json'} should hold a JSON object (bioattn's "
                            f"config.json layout); it holds {type(config).__name__}")  # fmt: skip
    kind = str(config.get("kind", "")) if config else ""
    if title is None:
        title = _KIND_TITLES.get(kind) or _CHILD_TITLES.get(path.name) or path.name
    csvs = sorted(path.glob("*.csv"), key=lambda p: (list(TABLE_TITLES).index(p.name)
                  if p.name in TABLE_TITLES else len(TABLE_TITLES), p.name))  # fmt: skip
    tables = {p.name: read_csv(p) for p in csvs}
    section = Section(path=path, title=title, config=config)
    if "findings.csv" in tables:
        section.findings = _findings(tables["findings.csv"], tables.get("comparisons.csv"))
    section.plots = _plots(path, tables)
    section.effects = tables.get("effects.csv", tables.get("summary.csv"))
    if config is not None:
        section.facts = _facts(config, tables, path)
    for name, frame in tables.items():
        if name == "findings.csv":
            continue
        section.tables.append(Table(TABLE_TITLES.get(name, name), frame, name))
    section.images = sorted(path.glob("*.png")) + sorted((path / "figures").glob("*.png"))
    section.files = sorted(p for p in path.iterdir()
                           if p.suffix in (".parquet", ".nc", ".json") and p.is_file())  # fmt: skip
    networks = sorted(p.name for p in path.glob("network-*") if p.is_dir())
    if networks:
        section.note = (
            f"Pooled over {len(networks)} networks; each has its own results folder "
            f"({', '.join(networks)}); `bioattn report {path.name}/{networks[0]}` writes its "
            "page."
        )
    if depth < 2:
        for child in sorted(p for p in path.iterdir() if p.is_dir()):
            if child.name in ("figures",) or child.name.startswith("network-"):
                continue
            if _is_results(child):
                sub = read_folder(child, depth=depth + 1)
                if not sub.empty():
                    section.children.append(sub)
    return section
