"""Neural signatures of the SSN-CNN: sublinear summation (normalisation), attention versus
contrast (response gain vs contrast gain) and the time course of E and I rates.

:func:`run_ssn_signatures` measures all three at one SSN layer of the default SSN-CNN and writes
numbers, tables and a figure; the pieces (:func:`summation_ratios`, :func:`contrast_responses`,
:func:`time_course`, :func:`two_population_time_courses`, :func:`fit_naka_rushton`) work on any
:class:`~bioattn.ssn.layer.SSNLayer`. Contrast is a multiplier of the calibrated feedforward
drive (1: the images as they are).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from matplotlib.figure import Figure

from bioattn.analysis.figures import save_figure
from bioattn.attention.values import layer_values
from bioattn.data.fashion_mnist import load_fashion_mnist
from bioattn.errors import ConfigError
from bioattn.models.network import Network
from bioattn.ssn.builder import conv_output, ssn_layer
from bioattn.ssn.experiments import CurrentAttention, build_default_ssn, write_json
from bioattn.ssn.layer import SSNLayer, SSNParams, layer_currents

__all__ = [
    "contrast_responses",
    "fit_naka_rushton",
    "naka_rushton",
    "run_ssn_signatures",
    "summation_ratios",
    "time_course",
    "two_population_time_courses",
]


def naka_rushton(
    contrast: np.ndarray, r_max: float, c50: float, exponent: float, base: float
) -> np.ndarray:
    """R(c) = r_max·cⁿ / (cⁿ + c50ⁿ) + base."""
    c = np.asarray(contrast, dtype=float)
    return r_max * c**exponent / (c**exponent + c50**exponent) + base


def fit_naka_rushton(contrast: np.ndarray, response: np.ndarray) -> dict[str, float]:
    """Least-squares Naka–Rushton fit; returns r_max, c50, exponent, base and the R²."""
    from scipy.optimize import curve_fit

    c = np.asarray(contrast, dtype=float)
    r = np.asarray(response, dtype=float)
    guess = [max(r.max() - r.min(), 1e-6), float(np.median(c)), 2.0, float(r.min())]
    bounds = ([0.0, 1e-4, 0.3, -np.inf], [np.inf, 1e3, 8.0, np.inf])
    try:
        params, _ = curve_fit(naka_rushton, c, r, p0=guess, bounds=bounds, maxfev=20_000)
    except (RuntimeError, ValueError):
        nan = float("nan")
        return {"r_max": nan, "c50": nan, "exponent": nan, "base": nan, "r2": nan}
    fitted = naka_rushton(c, *params)
    residual = float(((r - fitted) ** 2).sum())
    total = float(((r - r.mean()) ** 2).sum())
    return {
        "r_max": float(params[0]),
        "c50": float(params[1]),
        "exponent": float(params[2]),
        "base": float(params[3]),
        "r2": 1.0 - residual / total if total > 0 else 1.0,
    }


def summation_ratios(
    ssn: SSNLayer, x_a: torch.Tensor, x_b: torch.Tensor, contrasts: Sequence[float]
) -> pd.DataFrame:
    """Response to two stimuli together vs the sum of the responses to each, per contrast.

    The stimuli are feedforward inputs (conv outputs) ``x_a`` and ``x_b`` of equal shape; at
    contrast c the SSN gets drives c·x_a, c·x_b and c·(x_a + x_b). Over the E cells that both
    stimuli drive (both single responses > 0.1 Hz at that contrast), the table gives the median
    of r_AB / (r_A + r_B) and the ratio of the summed responses; 1 is linear summation, < 1
    sublinear (normalisation), > 1 supralinear.
    """
    rows = []
    for c in contrasts:
        r_a = ssn.simulate(c * x_a).r_e
        r_b = ssn.simulate(c * x_b).r_e
        r_ab = ssn.simulate(c * (x_a + x_b)).r_e
        both = (r_a > 0.1) & (r_b > 0.1)
        if not bool(both.any()):
            rows.append({"contrast": c, "n_cells": 0})
            continue
        ratio = r_ab[both] / (r_a[both] + r_b[both])
        rows.append(
            {
                "contrast": c,
                "n_cells": int(both.sum()),
                "median_ratio": float(ratio.median()),
                "q25_ratio": float(ratio.quantile(0.25)),
                "q75_ratio": float(ratio.quantile(0.75)),
                "pooled_ratio": float(r_ab[both].sum() / (r_a[both] + r_b[both]).sum()),
                "mean_single_drive": float((c * ssn.drive_scale * 0.5 * (x_a + x_b))[both].mean()),
            }
        )
    return pd.DataFrame(rows)


def contrast_responses(
    ssn: SSNLayer,
    x: torch.Tensor,
    maps: torch.Tensor,
    currents: tuple[torch.Tensor | None, torch.Tensor | None],
    contrasts: Sequence[float],
) -> pd.DataFrame:
    """Mean E rate of the chosen ``maps`` (bool (C,)) vs contrast, without and with attention.

    At contrast c the drive is c·x (x: conv output); attention adds ``currents`` (to E, to I).
    The response is averaged over images and over the positions the stimulus drives (x > 0).
    """
    driven = (x > 0) & maps.view(1, -1, 1, 1)
    rows = []
    for c in contrasts:
        plain = ssn.simulate(c * x).r_e
        with layer_currents(ssn, *currents):
            attended = ssn.simulate(c * x).r_e
        rows.append(
            {
                "contrast": c,
                "unattended_hz": float(plain[driven].mean()),
                "attended_hz": float(attended[driven].mean()),
            }
        )
    table = pd.DataFrame(rows)
    table["ratio"] = table["attended_hz"] / table["unattended_hz"].clip(lower=1e-9)
    return table


def time_course(
    ssn: SSNLayer,
    x: torch.Tensor,
    cells: torch.Tensor,
    currents: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    dt: float = 0.5,
    record_every: int = 4,
) -> pd.DataFrame:
    """Mean E and I rates of the chosen ``cells`` (bool, shaped like x) after stimulus onset.

    The SSN starts at rest (r = 0) and gets the drive x (and ``currents``) as a step at t = 0;
    it is integrated with Euler step ``dt`` (finer than the default, for a smooth path) and
    recorded every ``record_every`` steps.
    """
    if cells.shape != x.shape or not bool(cells.any()):
        raise ConfigError("time_course needs a non-empty boolean cell mask shaped like x")
    saved = ssn.params
    try:
        ssn.params = replace(saved, dt=dt)
        with layer_currents(ssn, *currents):
            result = ssn.simulate(x, return_trace=True, record_every=record_every)
    finally:
        ssn.params = saved
    if result.trace_e is None or result.trace_i is None or result.times is None:
        raise ConfigError("the SSN returned no time course")
    return pd.DataFrame(
        {
            "time_ms": result.times.numpy(),
            "e_hz": [float(t[cells].mean()) for t in result.trace_e],
            "i_hz": [float(t[cells].mean()) for t in result.trace_i],
        }
    )


def two_population_time_courses(
    params: SSNParams, drives: Sequence[float], dt: float = 0.25
) -> dict[float, pd.DataFrame]:
    """Time courses of one isolated E–I pair (the two-population SSN) for step drives h.

    The same drive goes to E and, times ``input_ratio_i``, to I. Strong drives put the pair in
    the inhibition-stabilised regime, where E overshoots before settling.
    """
    layer = SSNLayer(1, replace(params, dt=dt), name="E–I pair")
    out = {}
    for drive in drives:
        h = torch.full((1, 1, 1, 1), float(drive))
        result = layer.steady_state(h, h * params.input_ratio_i, return_trace=True)
        if result.trace_e is None or result.trace_i is None or result.times is None:
            raise ConfigError("the SSN returned no time course")
        out[float(drive)] = pd.DataFrame(
            {
                "time_ms": result.times.numpy(),
                "e_hz": result.trace_e.reshape(-1).numpy(),
                "i_hz": result.trace_i.reshape(-1).numpy(),
            }
        )
    return out


def _transient(course: pd.DataFrame, column: str) -> dict[str, float]:
    values = course[column].to_numpy()
    steady = float(values[-1])
    peak_index = int(values.argmax())
    settled = np.nonzero(np.abs(values - steady) > 0.05 * max(abs(steady), 1e-9))[0]
    return {
        "peak_hz": float(values[peak_index]),
        "peak_time_ms": float(course["time_ms"].iloc[peak_index]),
        "steady_hz": steady,
        "peak_over_steady": float(values[peak_index] / steady) if steady > 0 else float("nan"),
        "time_to_within_5pct_ms": float(course["time_ms"].iloc[settled[-1] + 1])
        if settled.size and settled[-1] + 1 < len(values)
        else 0.0,
    }


def _plot_signatures(
    summation: pd.DataFrame,
    contrast: pd.DataFrame,
    fits: dict[str, dict[str, float]],
    courses: dict[str, pd.DataFrame],
    pair: dict[float, pd.DataFrame],
    layer: str,
    stem: Path,
) -> list[Path]:
    fig = Figure(figsize=(21.0, 3.8), layout="constrained")
    axes = fig.subplots(1, 6)
    ax = axes[0]
    ax.axhline(1.0, color="0.6", linewidth=0.8)
    ax.errorbar(
        summation["contrast"],
        summation["median_ratio"],
        yerr=[
            summation["median_ratio"] - summation["q25_ratio"],
            summation["q75_ratio"] - summation["median_ratio"],
        ],
        marker="o",
        color="black",
        capsize=3,
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("contrast (drive multiplier)")
    ax.set_ylabel("r(A+B) / (r(A) + r(B))")
    ax.set_title("summation of two stimuli\n(median, IQR over E cells)")
    ax = axes[1]
    grid = np.geomspace(contrast["contrast"].min(), contrast["contrast"].max(), 200)
    for column, color, label in (
        ("unattended_hz", "0.3", "unattended"),
        ("attended_hz", "#d62728", "attended"),
    ):
        ax.plot(contrast["contrast"], contrast[column], "o", color=color, label=label)
        fit = fits[column]
        ax.plot(
            grid,
            naka_rushton(grid, fit["r_max"], fit["c50"], fit["exponent"], fit["base"]),
            color=color,
            linewidth=1,
        )
    ax.set_xscale("log")
    ax.set_xlabel("contrast (drive multiplier)")
    ax.set_ylabel("mean E rate, attended maps (Hz)")
    ax.set_title("contrast response (Naka–Rushton fits)")
    ax.legend(frameon=False, fontsize="small")
    ax = axes[2]
    ax.axhline(1.0, color="0.6", linewidth=0.8)
    ax.plot(contrast["contrast"], contrast["ratio"], "o-", color="#d62728")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("contrast (drive multiplier)")
    ax.set_ylabel("attended / unattended")
    ax.set_title("attention modulation vs contrast")
    for ax, group in ((axes[3], ""), (axes[4], ", strongest")):
        for state, style in (("unattended", "-"), ("attended", "--")):
            course = courses[f"{state}{group}"]
            ax.plot(course["time_ms"], course["e_hz"], style, color="#1f77b4", label=f"E, {state}")
            ax.plot(course["time_ms"], course["i_hz"], style, color="#ff7f0e", label=f"I, {state}")
        ax.set_xlabel("time after onset (ms)")
        ax.set_ylabel("mean rate (Hz)")
        ax.set_title("time course, " + ("all driven cells" if not group else "strongest cells"))
        ax.legend(frameon=False, fontsize="small")
    ax = axes[5]
    ax.axhline(1.0, color="0.6", linewidth=0.8)
    shades = ("#9ecae1", "#4292c6", "#08519c", "#08306b")
    for (drive, course), shade in zip(pair.items(), shades, strict=False):
        ax.plot(
            course["time_ms"],
            course["e_hz"] / course["e_hz"].iloc[-1],
            color=shade,
            label=f"E, h = {drive:g}",
        )
        ax.plot(course["time_ms"], course["i_hz"] / course["i_hz"].iloc[-1], ":", color=shade)
    ax.set_xlim(0, 150)
    ax.set_xlabel("time after onset (ms)")
    ax.set_ylabel("rate / steady rate (E solid, I dotted)")
    ax.set_title("isolated E–I pair (2-population SSN)")
    ax.legend(frameon=False, fontsize="small")
    fig.suptitle(f"SSN signatures at {layer}")
    return save_figure(fig, stem)


def run_ssn_signatures(
    out_dir: str | Path,
    layer: str = "conv2_1",
    category: str = "Trouser",
    beta: float = 0.15,
    attention: CurrentAttention | None = None,
    params: SSNParams | None = None,
    n_images: int = 16,
    contrasts: Sequence[float] = (0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0),
    strongest: float = 0.02,
    pair_drives: Sequence[float] = (20.0, 80.0, 160.0),
    data_dir: str | Path | None = None,
    ssn_network: Network | None = None,
    values: xr.Dataset | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Neural signatures of one SSN layer of the default SSN-CNN, as numbers and a figure.

    * **Summation**: test images of two different categories give feedforward inputs x_A and
      x_B at ``layer``; :func:`summation_ratios` compares r(A+B) with r(A) + r(B) per contrast.
    * **Contrast response**: the drive c·x of ``n_images`` test images of ``category``, with and
      without the attention current (``beta``, tuning values of ``category``), averaged over
      the maps with positive tuning value (the attended maps); Naka–Rushton fits of both curves.
      Response gain scales r_max; contrast gain lowers c50. Contrast is a multiplier of the
      calibrated feedforward drive (1: the images as they are); far above 2 the strongest cells
      get drives beyond ~40× ``SSNParams.drive`` and the first Euler steps pass ``rate_cap``.
    * **Time course**: mean E and I rates of the attended maps after stimulus onset (c = 1), over
      all the cells the stimulus drives and over the ``strongest`` share most strongly driven
      (strong drive puts the SSN in its inhibition-stabilised regime, where E overshoots).

    Builds (and calibrates) the default SSN-CNN unless ``ssn_network`` (with ``values`` for its
    tuning) is given. Writes ``signatures.json``, CSV tables and ``signatures.png``/``.svg``
    under ``out_dir`` and returns the numbers.
    """
    attention = CurrentAttention() if attention is None else attention
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = load_fashion_mnist("test", data_dir)
    k = test.category_index(category)  # unknown names fail before the long work
    if ssn_network is None or values is None:
        _plain, ssn_network, values = build_default_ssn(
            params, data_dir=data_dir, seed=seed, progress=progress
        )
    info = ssn_network.resolve_layer(layer)
    ssn = ssn_layer(ssn_network, info)
    category = test.categories[k]
    own = test.subset(torch.nonzero(test.labels == k).view(-1)[:n_images])
    others = test.subset(torch.nonzero(test.labels != k).view(-1)[: 2 * n_images])
    generator = torch.Generator().manual_seed(seed)
    # pairs of different categories for summation
    first = others.subset(torch.arange(n_images))
    second_pool = others.subset(torch.arange(n_images, 2 * n_images))
    second_order = torch.randperm(n_images, generator=generator)
    second = second_pool.subset(second_order)
    clash = first.labels == second.labels
    if bool(clash.any()):
        second = second_pool.subset(torch.roll(second_order, 1))
    x_a = conv_output(ssn_network, info, first.images)
    x_b = conv_output(ssn_network, info, second.images)
    summation = summation_ratios(ssn, x_a, x_b, contrasts)

    v = layer_values(values, "tuning", category, info)
    maps = v > 0
    currents = attention.currents(ssn, v, beta)
    x = conv_output(ssn_network, info, own.images)
    contrast = contrast_responses(ssn, x, maps, currents, contrasts)
    fits = {
        column: fit_naka_rushton(contrast["contrast"].to_numpy(), contrast[column].to_numpy())
        for column in ("unattended_hz", "attended_hz")
    }
    probe = x[: min(4, len(x))]
    driven = (probe > 0) & maps.view(1, -1, 1, 1)
    cutoff = torch.quantile(probe[driven], 1.0 - strongest)
    strong = driven & (probe >= cutoff)
    courses = {
        "unattended": time_course(ssn, probe, driven),
        "attended": time_course(ssn, probe, driven, currents),
        "unattended, strongest": time_course(ssn, probe, strong),
        "attended, strongest": time_course(ssn, probe, strong, currents),
    }
    pair = two_population_time_courses(ssn.params, pair_drives)
    figure = _plot_signatures(
        summation, contrast, fits, courses, pair, info.alias, out_dir / "signatures"
    )
    low, high = contrast.iloc[0], contrast.iloc[-1]
    numbers = {
        "layer": info.alias,
        "category": category,
        "beta": beta,
        "strongest_share": strongest,
        "strongest_cutoff_drive": float(cutoff * ssn.drive_scale),
        "attention": asdict(attention),
        "params": ssn.params.to_dict(),
        "summation": summation.to_dict(orient="records"),
        "contrast_response": contrast.to_dict(orient="records"),
        "naka_rushton": fits,
        "r_max_ratio_attended_over_unattended": fits["attended_hz"]["r_max"]
        / max(fits["unattended_hz"]["r_max"], 1e-12),
        "c50_ratio_attended_over_unattended": fits["attended_hz"]["c50"]
        / max(fits["unattended_hz"]["c50"], 1e-12),
        "modulation_ratio_lowest_contrast": float(low["ratio"]),
        "modulation_ratio_highest_contrast": float(high["ratio"]),
        "time_course": {
            name: {"E": _transient(course, "e_hz"), "I": _transient(course, "i_hz")}
            for name, course in courses.items()
        },
        "two_population_time_course": {
            f"h={drive:g}": {"E": _transient(course, "e_hz"), "I": _transient(course, "i_hz")}
            for drive, course in pair.items()
        },
        "figure": [str(p) for p in figure],
    }
    summation.to_csv(out_dir / "summation.csv", index=False)
    contrast.to_csv(out_dir / "contrast_response.csv", index=False)
    pd.concat({k: c for k, c in courses.items()}, names=["condition"]).to_csv(
        out_dir / "time_course.csv"
    )
    write_json(out_dir / "signatures.json", numbers)
    return numbers
