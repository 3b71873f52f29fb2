"""Attention as an input current on the SSN-CNN, and the replication of findings 1 and 2
(Lindsay, Rubin & Miller 2019).

* :func:`run_ssn_sweep` is the SSN counterpart of :func:`bioattn.experiments.sweep.run_sweep`:
  attention is an additive input current ``β·v·drive`` to the E and/or I cells of every position
  of each feature map (v: tuning or gradient value of the map for the attended category, drive:
  ``SSNParams.drive``), and the result is the same long-form performance table
  (:data:`~bioattn.experiments.sweep.PERFORMANCE_COLUMNS`), so every summary and figure of
  :mod:`bioattn.analysis` works on it.
* :func:`run_ssn_replication`: build and calibrate the SSN-CNN of the default network, re-fit its
  detectors, compute its tuning and gradient values, sweep with β held out, and compare with the
  plain network, findings' verdicts computed for both.

Neural signatures are in :mod:`bioattn.ssn.signatures`, convergence and cost in
:mod:`bioattn.ssn.convergence`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch
import xarray as xr
from matplotlib.figure import Figure

from bioattn.analysis.figures import method_colors, save_figure
from bioattn.analysis.sdt import choose_betas
from bioattn.attention.rules import parse_rules
from bioattn.attention.values import compute_values, save_values, tuning_values
from bioattn.cache import atomic_write_bytes
from bioattn.data.fashion_mnist import load_fashion_mnist
from bioattn.data.imageset import ImageSet, balanced_subset, resolve_category
from bioattn.data.tasks import TaskSet
from bioattn.experiments.grid import ALL_LAYERS
from bioattn.experiments.replication import write_findings
from bioattn.experiments.runfolder import plot_run, write_run_config, write_tables
from bioattn.experiments.sweep import (
    COARSE_BETAS,
    SweepConfig,
    build_selection_sets,
    resolve_sweep,
    run_sweep,
)
from bioattn.models.detectors import Detectors, evaluate_detectors
from bioattn.models.network import Network
from bioattn.models.train import load_default
from bioattn.ssn.builder import (
    build_ssn_network,
    fit_ssn_detectors,
    ssn_blocks,
    ssn_layer,
)
from bioattn.ssn.evaluate import ATTENTION_TARGETS, CurrentAttention, CurrentEvaluator
from bioattn.ssn.layer import SSNParams

#: Attention strengths of the SSN sweep: current = β·v·drive, so β = 0.1 adds a tenth of a
#: typical unit's feedforward drive to a map with v = 1. (A pilot on two categories found the
#: best β between 0.05 and 0.4; β = 1 lowered performance almost everywhere.)
DEFAULT_SSN_BETAS = (0.0, 0.03, 0.1, 0.2, 0.4)
#: Keys of the networks in ``findings.json`` (subfolder name → what was attended how).
FINDINGS_KEYS = {"ssn": "ssn_input_current", "plain": "plain_fsgm", "ssn_fsgm": "ssn_fsgm"}


def run_ssn_sweep(
    network: Network,
    detectors: Detectors,
    values: xr.Dataset,
    test_images: ImageSet | None,
    config: SweepConfig = SweepConfig(betas=DEFAULT_SSN_BETAS),
    attention: CurrentAttention = CurrentAttention(),
    progress: bool = True,
    tasks: Mapping[tuple[str, str], TaskSet] | None = None,
    chosen_betas: Mapping[tuple[str, str, str, str], float] | None = None,
) -> pd.DataFrame:
    """Sweep attention as input current on an SSN-CNN; returns the performance table.

    Same conditions, test sets, validation and columns as
    :func:`~bioattn.experiments.sweep.run_sweep` (``all_layers`` puts β/10 currents into every
    SSN layer; ``tasks`` and ``chosen_betas`` as there: prebuilt task sets, e.g. selection
    images, and β chosen on them), with the current ``β·v·drive`` of :class:`CurrentAttention`
    in place of the multiplicative gain. Methods: tuning, gradient, uniform and their shuffled /
    positive-only variants; ``response-…`` is refused (a current is already additive). Every
    attended layer must be an SSN layer.

    A condition whose SSN diverges or does not converge is left out of the table (its β row is
    missing) and listed in ``table.attrs["ssn_failures"]`` with the error message.
    """
    evaluator = CurrentEvaluator(network, detectors, attention, config.batch_size)
    ssn_layers = [network.resolve_layer(alias) for alias in ssn_blocks(network)]
    for layer in resolve_sweep(config, network, detectors, values).layers:
        ssn_layer(network, layer)  # raises with the list of SSN layers
    table = run_sweep(
        network,
        detectors,
        values,
        test_images,
        config,
        progress,
        evaluator,
        tasks=tasks,
        every=ssn_layers,
        chosen_betas=chosen_betas,
    )
    table.attrs["ssn_failures"] = table.attrs.pop("failures")
    return table


#: The columns that name a group of the held-out design (one chosen β each).
GROUP = ["image_type", "category", "layer", "method"]


def _lost_groups(
    chosen: Mapping[tuple[str, str, str, str], float], table: pd.DataFrame
) -> set[tuple[str, ...]]:
    """Groups whose chosen β has no row in the test ``table`` (the SSN failed there)."""
    present = set(
        zip(*(table[c].astype(str) for c in GROUP), table["beta"].astype(float), strict=True)
    )
    return {
        tuple(str(k) for k in key)
        for key, beta in chosen.items()
        if (*(str(k) for k in key), float(beta)) not in present
    }


# --- helpers shared by the experiments ---------------------------------------------------------
def write_json(path: Path, data: object) -> None:
    """Write ``data`` as indented JSON, atomically (numbers that JSON lacks become floats)."""
    atomic_write_bytes(path, json.dumps(data, indent=2, default=float).encode())


def build_default_ssn(
    params: SSNParams | None = None,
    layers: Sequence[str] | str | None = "all",
    n_tuning_per_category: int = 500,
    n_reference_per_category: int = 10,
    data_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Network, Network, xr.Dataset]:
    """The trained default network, its calibrated SSN-CNN and the plain tuning values.

    The similarity between maps comes from the plain network's tuning values on
    ``n_tuning_per_category`` training images per category; calibration uses
    ``n_reference_per_category`` training images per category (both subsets seeded). Returns
    (plain network, SSN-CNN, tuning values).
    """
    trained = load_default(data_dir=data_dir, progress=progress)
    train = load_fashion_mnist("train", data_dir)
    values = tuning_values(trained.network, balanced_subset(train, n_tuning_per_category, seed))
    ssn_network = build_ssn_network(
        trained.network,
        layers,
        params,
        similarity=values,
        reference_images=balanced_subset(train, n_reference_per_category, seed).images,
        progress=progress,
    )
    return trained.network, ssn_network, values


# --- the replication ---------------------------------------------------------------------------
def plot_comparison(plain: pd.DataFrame, ssn: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Side by side: performance increase by layer, plain network (FSGM) and SSN-CNN (current).

    ``plain`` and ``ssn`` are layer summaries (:func:`~bioattn.analysis.sdt.layer_summary`).
    """
    panels = [("plain CNN, multiplicative FSGM", plain), ("SSN-CNN, input current", ssn)]
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    colors = method_colors(pd.concat([plain["method"], ssn["method"]]))
    for ax, (title, summary) in zip(axes, panels, strict=True):
        single = summary.loc[summary["layer"].astype(str) != ALL_LAYERS]
        ax.axhline(0.0, color="0.6", linewidth=0.8)
        several = single["image_type"].nunique() > 1
        for (method, image_type), rows in single.groupby(["method", "image_type"]):
            rows = rows.sort_values("layer_number")
            ax.errorbar(
                rows["layer_number"],
                rows["mean_delta_pp"],
                yerr=rows["sem_delta_pp"],
                marker="o",
                capsize=3,
                color=colors[str(method)],
                linestyle="--" if several and image_type != single["image_type"].min() else "-",
                label=f"{method} ({image_type})" if several else str(method),
            )
        labels = single.drop_duplicates("layer_number").sort_values("layer_number")
        ax.set_xticks(labels["layer_number"])
        ax.set_xticklabels(labels["layer"], rotation=45, ha="right")
        ax.set_title(title)
        ax.set_xlabel("attended layer")
    axes[0].set_ylabel("performance increase (pp, mean ± SEM)")
    axes[1].legend(frameon=False)
    kinds = ", ".join(sorted(str(t) for t in ssn["image_type"].unique()))
    count = int(ssn["n_categories"].max()) if "n_categories" in ssn else 0
    fig.suptitle(
        f"Attention by layer: plain network vs SSN-CNN ({kinds} images, {count} categories)"
    )
    return save_figure(fig, stem)


def run_ssn_replication(
    out_dir: str | Path,
    categories: Sequence[str] | None = None,
    image_types: Sequence[str] = ("merged", "array"),
    layers: Sequence[str] | str | None = "all",
    ssn_betas: Sequence[float] = DEFAULT_SSN_BETAS,
    methods: Sequence[str] = ("tuning", "gradient"),
    n_pos: int = 75,
    n_neg: int = 75,
    params: SSNParams | None = None,
    attention: CurrentAttention = CurrentAttention(),
    n_reference_per_category: int = 10,
    n_detector_per_category: int = 100,
    n_tuning_per_category: int = 100,
    gradient_set_size: int = 40,
    n_check_per_category: int = 100,
    fsgm_on_ssn: bool = False,
    data_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Findings 1 and 2 on the SSN-CNN of the default network, next to the plain network.

    1. Load the trained default network; its tuning values (500 training images per category)
       give the SSN similarity; its gradient values (task sets from those images) serve the
       plain sweep.
    2. Build the SSN-CNN (SSN at ``layers``), calibrate it on ``n_reference_per_category``
       training images per category, re-fit detectors on its features of
       ``n_detector_per_category`` training images per category.
    3. Its own tuning values (``n_tuning_per_category`` training images per category) and
       gradient values (``gradient_set_size`` positives and negatives per category, training
       images). Classifier and detector accuracy of both networks on
       ``n_check_per_category`` test images per category.
    4. Sweep attention as input current (:func:`run_ssn_sweep`, β in ``ssn_betas``) and the
       plain network's multiplicative FSGM (:func:`~bioattn.experiments.sweep.run_sweep`,
       β in :data:`~bioattn.experiments.sweep.COARSE_BETAS`), each with the held-out design of
       :func:`~bioattn.experiments.replication.run_replication`: β chosen per (image type,
       category, layer, method) on selection images of the training split, Δ measured on the
       test images at that β; with ``fsgm_on_ssn`` also multiplicative FSGM on the SSN-CNN.
    5. Effects with intervals over categories and the findings' verdicts per network
       (:func:`~bioattn.experiments.replication.write_findings`).

    Writes under ``out_dir``: ``ssn/`` and ``plain/`` (and ``ssn_fsgm/``) results folders
    (selection.parquet, performance.parquet, gains.csv, summary.csv, effects.csv,
    comparisons.csv, method_tests.csv, findings.csv, figures), ``ssn_values.nc``,
    ``comparison.png``/``.svg``, ``findings.json`` (verdicts per network) and ``config.json``.
    Returns the summaries, the verdicts and the timings.
    """
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    train = load_fashion_mnist("train", data_dir)
    test = load_fashion_mnist("test", data_dir)
    # names are checked before the long work starts
    if categories is not None:
        categories = [train.categories[resolve_category(c, train.categories)] for c in categories]
    parse_rules(methods)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained = load_default(data_dir=data_dir, progress=progress)
    network, detectors = trained.network, trained.detectors
    plain_values = compute_values(
        network,
        detectors,
        balanced_subset(train, 500, seed),
        image_types,
        seed=seed,
        progress=progress,
    )
    timings["plain_values"] = time.perf_counter() - started

    step = time.perf_counter()
    ssn_network = build_ssn_network(
        network,
        layers,
        params,
        similarity=plain_values,
        reference_images=balanced_subset(train, n_reference_per_category, seed + 1).images,
        progress=progress,
    )
    calibration = {
        alias: {
            "drive_scale": float(block.ssn.drive_scale),
            "output_scale_mean": float(block.ssn.output_scale.mean()),
        }
        for alias, block in ssn_blocks(ssn_network).items()
    }
    detector_images = balanced_subset(train, n_detector_per_category, seed + 2)
    ssn_detectors = fit_ssn_detectors(ssn_network, detector_images)
    timings["ssn_build_and_detectors"] = time.perf_counter() - step

    step = time.perf_counter()
    check = balanced_subset(test, n_check_per_category, seed + 3)
    accuracy = {}
    for name, net, det in (
        ("plain", network, detectors),
        ("ssn", ssn_network, ssn_detectors),
    ):
        features = net.readout_features(check.images)
        with torch.no_grad():
            head = net.submodule(net.readout)(features).argmax(1)
        table = evaluate_detectors(det, features, check.labels)
        accuracy[name] = {
            "classifier_accuracy": float((head == check.labels).float().mean()),
            "mean_detector_balanced_accuracy": float(table["balanced_accuracy"].mean()),
        }
    timings["accuracy"] = time.perf_counter() - step

    step = time.perf_counter()
    ssn_values = compute_values(
        ssn_network,
        ssn_detectors,
        train,
        image_types,
        gradient_set_size=gradient_set_size,
        seed=seed,
        progress=progress,
        tuning_images=balanced_subset(train, n_tuning_per_category, seed),
    )
    save_values(ssn_values, out_dir / "ssn_values.nc")
    timings["ssn_values"] = time.perf_counter() - step

    base = SweepConfig(
        image_types=tuple(image_types),
        categories=None if categories is None else tuple(categories),
        layers=None if layers in (None, "all") else tuple(layers),
        all_layers=False,
        betas=COARSE_BETAS,
        methods=tuple(methods),
        n_pos=n_pos,
        n_neg=n_neg,
        seed=seed,
    )
    selection_sets = build_selection_sets(
        train, list(ssn_detectors.categories) if categories is None else categories, base
    )

    def held_out(name: str, sweep, config: SweepConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
        """β chosen on the selection images, Δ on the test images; tables and findings."""
        step = time.perf_counter()
        selection = sweep(None, config, tasks=selection_sets)
        chosen = choose_betas(selection)
        table = sweep(test, config, chosen_betas=chosen)
        for stage, part in (("selection", selection), ("test", table)):
            for failure in part.attrs.get("ssn_failures", part.attrs.get("failures", [])):
                failures.append({"network": name, "images": stage, "failure": failure})
        lost = _lost_groups(chosen, table)
        if lost:
            # the SSN settled on the selection images at that β but not on a test image:
            # the group has no held-out gain (listed), the others keep theirs
            keys = selection[GROUP].astype(str).apply(tuple, axis=1)
            selection = selection.loc[~keys.isin(lost)]
            failures.extend(
                {"network": name, "images": "test", "failure": f"group {key} lost: no test "
                 "row at its chosen β"} for key in sorted(lost)
            )  # fmt: skip
        gains, summary = write_tables(table, out_dir / name, selection=selection)
        verdicts[name] = write_findings(gains, out_dir / name, seed=seed, ssn=name == "ssn")
        figures.extend(plot_run(out_dir / name))
        timings[f"{name}_sweeps"] = time.perf_counter() - step
        return gains, summary

    failures: list = []
    verdicts: dict[str, pd.DataFrame] = {}
    figures: list[Path] = []
    _, ssn_summary = held_out(
        "ssn",
        lambda images, config, **kw: run_ssn_sweep(
            ssn_network, ssn_detectors, ssn_values, images, config, attention, progress, **kw
        ),
        replace(base, betas=tuple(ssn_betas)),
    )
    _, plain_summary = held_out(
        "plain",
        lambda images, config, **kw: run_sweep(
            network, detectors, plain_values, images, config, progress, **kw
        ),
        base,
    )
    fsgm_summary = None
    if fsgm_on_ssn:
        _, fsgm_summary = held_out(
            "ssn_fsgm",
            lambda images, config, **kw: run_sweep(
                ssn_network, ssn_detectors, ssn_values, images, config, progress, **kw
            ),
            base,
        )
    findings = {
        FINDINGS_KEYS.get(name, name): {
            str(row.finding): str(row.verdict) for row in table.itertuples()
        }
        for name, table in verdicts.items()
    }
    figures += plot_comparison(plain_summary, ssn_summary, out_dir / "comparison")
    timings["total"] = time.perf_counter() - started
    write_json(out_dir / "findings.json", findings)
    first_ssn = next(iter(ssn_blocks(ssn_network).values())).ssn
    write_run_config(
        out_dir,
        "ssn-replication",
        {
            "sweep": base.to_dict(),
            "ssn_betas": list(ssn_betas),
            "attention": asdict(attention),
            "ssn_params": first_ssn.params.to_dict(),
            "ssn_layers": list(ssn_blocks(ssn_network)),
            "n_check_per_category": n_check_per_category,
            "n_reference_per_category": n_reference_per_category,
            "n_detector_per_category": n_detector_per_category,
            "n_tuning_per_category": n_tuning_per_category,
            "gradient_set_size": gradient_set_size,
        },
        model={"name": ssn_network.name, "calibration": calibration},
        results={"accuracy_on_test_images": accuracy, "ssn_failures": failures},
        timings=timings,
    )
    return {
        "ssn_summary": ssn_summary,
        "plain_summary": plain_summary,
        "ssn_fsgm_summary": fsgm_summary,
        "findings": findings,
        "verdicts": verdicts,
        "accuracy": accuracy,
        "failures": failures,
        "figures": figures,
        "timings": timings,
        "ssn_network": ssn_network,
        "ssn_values": ssn_values,
    }


def summary_table(summary: pd.DataFrame) -> str:
    """Markdown table of mean ± SEM increase (pp) by layer (rows) and method (columns)."""
    single = summary.loc[summary["layer"].astype(str) != ALL_LAYERS]
    cells = single.assign(
        cell=single["mean_delta_pp"].map("{:.1f}".format)
        + " ± "
        + single["sem_delta_pp"].map("{:.1f}".format)
    )
    pivot = cells.pivot_table(
        index=["layer_number", "layer"], columns="method", values="cell", aggfunc="first"
    )
    header = "| layer | " + " | ".join(pivot.columns) + " |"
    rule = "|---|" + "---|" * len(pivot.columns)
    lines = [header, rule]
    for (_number, layer), row in pivot.iterrows():
        lines.append(f"| {layer} | " + " | ".join(str(v) for v in row.to_numpy()) + " |")
    return "\n".join(lines)


__all__ = [
    "ATTENTION_TARGETS",
    "DEFAULT_SSN_BETAS",
    "FINDINGS_KEYS",
    "CurrentAttention",
    "build_default_ssn",
    "plot_comparison",
    "run_ssn_replication",
    "run_ssn_sweep",
    "summary_table",
    "write_json",
]
