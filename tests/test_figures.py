"""Figure conventions: builders return Figures, one colour per method, error bars on every mean,
labelled axes and reference lines, captions that say what is plotted."""

from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from bioattn.analysis.figures import (
    METHOD_COLORS,
    dprime_criterion_vs_beta_figure,
    performance_increase_figure,
    rates_vs_beta_figure,
)
from bioattn.analysis.neural_figures import modulation_index_figure, vector_angle_figure
from bioattn.analysis.sdt import layer_summary, performance_gains
from bioattn.experiments.psychophysics import PERFORMANCE_THRESHOLD, psychometric_figure


def _curves(task: str = "category") -> pd.DataFrame:
    """A sweep table: 2 methods × 2 layers × 3 categories × 3 β, random rates."""
    rng = np.random.default_rng(3)
    rows = []
    for method, (layer, number), category, beta in itertools.product(
        ["tuning", "gradient"], [("conv1", 1), ("conv2", 2)], ["a", "b", "c"], [0.0, 0.5, 1.0]
    ):
        rows.append(
            {
                "task": task,
                "image_type": "merged",
                "category": category,
                "layer": layer,
                "layer_number": number,
                "method": method,
                "beta": beta,
                "tp": float(rng.uniform(0.5, 0.9)),
                "fp": float(rng.uniform(0.1, 0.4)),
            }
        )
    table = pd.DataFrame(rows)
    table["tn"] = 1 - table["fp"]
    table["performance"] = (table["tp"] + table["tn"]) / 2
    return table


def _errorbars(fig: Figure) -> list[ErrorbarContainer]:
    return [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]


def _caption(fig: Figure) -> str:
    return fig.get_suptitle()


def _assert_axes_labelled(fig: Figure) -> None:
    for ax in fig.axes:
        if ax.get_visible():  # a shared x axis is labelled on its bottom panel
            siblings = ax.get_shared_x_axes().get_siblings(ax)
            assert any(a.get_xlabel() for a in siblings), f"panel {ax.get_title()!r}: no x label"
    # a shared y axis is labelled on its first panel
    assert fig.axes[0].get_ylabel(), "the first panel has no y label"


def test_builders_return_figures_and_write_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    table = _curves()
    summary = layer_summary(performance_gains(table))
    figures = [
        performance_increase_figure(summary),
        rates_vs_beta_figure(table),
        dprime_criterion_vs_beta_figure(table),
    ]
    assert all(isinstance(f, Figure) for f in figures)
    assert list(tmp_path.iterdir()) == []
    for fig in figures:
        _assert_axes_labelled(fig)


def test_rate_curves_show_the_sem_over_categories() -> None:
    table = _curves()
    fig = rates_vs_beta_figure(table, layer="conv2")
    bars = _errorbars(fig)
    assert len(bars) == 4  # (tuning, gradient) × (TP, FP)
    rows = table[(table["layer"] == "conv2") & (table["method"] == "tuning")]
    expected = rows.groupby("beta")["tp"].agg(lambda v: v.std(ddof=1) / np.sqrt(len(v)))
    tuning_tp = next(
        b
        for b in bars
        if matplotlib.colors.to_hex(b.lines[0].get_color()) == METHOD_COLORS["tuning"]
        and b.lines[0].get_linestyle() == "-"
    )
    segments = tuning_tp.lines[2][0].get_segments()
    half_widths = [(seg[1][1] - seg[0][1]) / 2 for seg in segments]
    assert half_widths == pytest.approx(expected.to_numpy())
    assert "mean ± SEM across categories" in _caption(fig)


def test_dprime_curves_have_error_bars_and_a_labelled_criterion_line() -> None:
    fig = dprime_criterion_vs_beta_figure(_curves())
    assert len(_errorbars(fig)) == 4  # (tuning, gradient) × (d′, c)
    assert "c = 0: no bias" in _caption(fig)
    assert "SEM" in fig.axes[0].get_ylabel()


def test_one_colour_per_method_in_every_figure() -> None:
    table = _curves()
    summary = layer_summary(performance_gains(table))
    noise = pd.DataFrame(
        [
            {
                "method": m,
                "snr": snr,
                "category": c,
                "layer": "conv2",
                "performance": p,
                "dprime": d,
            }
            for m, snr, c, p, d in zip(
                ["none", "tuning", "gradient"] * 4,
                [0.1] * 6 + [1.0] * 6,
                ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3,
                np.linspace(0.5, 0.95, 12),
                np.linspace(0.0, 2.0, 12),
                strict=True,
            )
        ]
    )
    for fig in (
        performance_increase_figure(summary),
        dprime_criterion_vs_beta_figure(table),
        psychometric_figure(noise),
    ):
        colours = {matplotlib.colors.to_hex(b.lines[0].get_color()) for b in _errorbars(fig)}
        assert METHOD_COLORS["tuning"] in colours
        assert METHOD_COLORS["gradient"] in colours
        assert colours <= set(METHOD_COLORS.values()), colours


def test_psychometric_figure_labels_the_threshold_and_shows_error_bars() -> None:
    rows = []
    for method, snr, category in itertools.product(["none", "tuning"], [0.1, 1.0], "abc"):
        rows.append(
            {
                "method": method,
                "snr": snr,
                "category": category,
                "layer": "conv2",
                "performance": 0.6 + 0.2 * snr + 0.01 * "abc".index(category),
                "dprime": snr,
            }
        )
    fig = psychometric_figure(pd.DataFrame(rows))
    assert len(_errorbars(fig)) == 4
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"threshold (performance {PERFORMANCE_THRESHOLD:g})" in legend
    assert "SEM" in _caption(fig)


def test_orientation_captions_say_orientations() -> None:
    table = _curves(task="orientation")
    summary = layer_summary(performance_gains(table))
    for fig in (
        performance_increase_figure(summary),
        rates_vs_beta_figure(table),
        dprime_criterion_vs_beta_figure(table),
    ):
        text = " ".join([_caption(fig), *(ax.get_ylabel() for ax in fig.axes)])
        assert "orientations" in text
        assert "categories" not in text


def _settings(**columns) -> dict:
    return {"method": "tuning", "beta": 1.0, "attended_layer": "conv1", **columns}


def test_modulation_index_boxes_define_whiskers_and_terms() -> None:
    values = np.linspace(-0.5, 0.5, 101)
    units = pd.DataFrame(
        [
            _settings(recorded_layer=layer, relation=rel, modulation_index=v)
            for layer, rel in (("conv1", "attended"), ("conv2", "downstream"))
            for v in values
        ]
    )
    fig = modulation_index_figure(units)
    caption = _caption(fig)
    assert "a, u = a map's mean activity with and without attention" in caption
    assert "whiskers: 5th–95th percentiles" in caption
    whisker_ends = sorted(
        {round(float(y), 6) for line in fig.axes[0].lines for y in line.get_ydata()}
    )
    assert round(float(np.percentile(values, 95)), 6) in whisker_ends
    assert round(float(np.percentile(values, 5)), 6) in whisker_ends


def test_vector_angle_figure_has_error_bars_on_every_mean() -> None:
    summary = pd.DataFrame(
        [
            _settings(
                recorded_layer=layer,
                relation=rel,
                mean_angle_unattended=50.0,
                sem_angle_unattended=2.0,
                mean_angle_attended=45.0,
                sem_angle_attended=1.5,
                mean_delta_angle=-5.0,
                sem_delta_angle=0.5,
            )
            for layer, rel in (("conv1", "attended"), ("conv2", "downstream"))
        ]
    )
    fig = vector_angle_figure(summary)
    bars = _errorbars(fig)
    assert len(bars) == 3  # unattended baseline, attended, change
    assert all(b.has_yerr for b in bars)
    assert "mean ± SEM over categories" in _caption(fig)
