"""Tests for bioattn.analysis: signal detection, performance gains, layer summaries, figures."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtri

from bioattn.analysis import (
    AnalysisError,
    clip_rate,
    detection_metrics,
    detection_metrics_batch,
    dprime_criterion,
    layer_summary,
    performance_gains,
    plot_dprime_criterion_vs_beta,
    plot_performance_increase,
    plot_rates_vs_beta,
    save_figure,
)
from bioattn.errors import BioattnError

Z99 = 2.3263478740408408  # Φ⁻¹(0.99)


# --- d′ and criterion -------------------------------------------------------------------------


def test_clip_rate_scalar_and_array() -> None:
    assert clip_rate(0.0) == 0.01
    assert clip_rate(1.0) == 0.99
    assert clip_rate(0.3) == 0.3
    assert isinstance(clip_rate(0.5), float)
    np.testing.assert_allclose(clip_rate(np.array([-1.0, 0.5, 2.0])), [0.01, 0.5, 0.99])
    assert clip_rate(0.05, lo=0.1, hi=0.9) == 0.1


def test_dprime_criterion_hand_values() -> None:
    d, c = dprime_criterion(0.84, 0.16)
    assert isinstance(d, float) and isinstance(c, float)
    assert d == pytest.approx(1.98892, abs=1e-4)
    assert c == pytest.approx(0.0, abs=1e-12)

    # Perfect detector: both rates clipped to 0.99 / 0.01.
    d, c = dprime_criterion(1.0, 0.0)
    assert d == pytest.approx(2 * Z99, abs=1e-9)
    assert c == pytest.approx(0.0, abs=1e-12)

    # Liberal detector (says "present" a lot): negative criterion.
    d, c = dprime_criterion(0.9, 0.5)
    assert d == pytest.approx(ndtri(0.9), abs=1e-12)
    assert c == pytest.approx(-0.5 * ndtri(0.9), abs=1e-12)
    assert c < 0


def test_dprime_criterion_arrays() -> None:
    tp = np.array([0.84, 1.0, 0.5])
    fp = np.array([0.16, 0.0, 0.5])
    d, c = dprime_criterion(tp, fp)
    np.testing.assert_allclose(d, [1.98892, 2 * Z99, 0.0], atol=1e-4)
    np.testing.assert_allclose(c, [0.0, 0.0, 0.0], atol=1e-12)


# --- detection metrics --------------------------------------------------------------------------


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    # 4 positives: 3 say present (logit > 0; exactly 0 is "absent"); 4 negatives: 1 false alarm.
    logits = np.array([2.0, 0.5, 0.1, 0.0, -1.0, -0.2, 0.3, -3.0])
    is_target = np.array([True, True, True, True, False, False, False, False])
    return logits, is_target


def test_detection_metrics_hand_built() -> None:
    logits, is_target = _hand_case()
    m = detection_metrics(logits, is_target)
    assert m["tp"] == pytest.approx(0.75)
    assert m["fp"] == pytest.approx(0.25)
    assert m["tn"] == pytest.approx(0.75)
    assert m["performance"] == pytest.approx(0.75)
    assert m["dprime"] == pytest.approx(2 * ndtri(0.75))
    assert m["criterion"] == pytest.approx(0.0, abs=1e-12)
    assert m["n_pos"] == 4 and m["n_neg"] == 4
    assert isinstance(m["n_pos"], int)


def test_detection_metrics_batch_equals_single() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 30))
    is_target = np.arange(30) % 3 == 0
    batch = detection_metrics_batch(logits, is_target)
    assert set(batch) == {"tp", "tn", "fp", "performance", "dprime", "criterion", "n_pos", "n_neg"}
    for i in range(5):
        single = detection_metrics(logits[i], is_target)
        for key, value in single.items():
            assert batch[key].shape == (5,)
            assert batch[key][i] == pytest.approx(value)


def test_detection_metrics_accepts_torch_and_int_targets() -> None:
    torch = pytest.importorskip("torch")
    logits, is_target = _hand_case()
    batch = detection_metrics_batch(
        torch.tensor(np.stack([logits, -logits]), requires_grad=True),
        torch.tensor(is_target.astype(int)),
    )
    assert batch["tp"][0] == pytest.approx(0.75)
    # Negated logits: positives 2.0, 0.5, 0.1 now negative, 0.0 stays "absent".
    assert batch["tp"][1] == pytest.approx(0.0)
    assert batch["fp"][1] == pytest.approx(0.75)


def test_detection_metrics_errors() -> None:
    with pytest.raises(ValueError, match="positive"):
        detection_metrics(np.array([1.0, -1.0]), np.array([False, False]))
    with pytest.raises(ValueError, match="negative"):
        detection_metrics(np.array([1.0, -1.0]), np.array([True, True]))
    with pytest.raises(AnalysisError, match="shape"):
        detection_metrics_batch(np.zeros((2, 3)), np.array([True, False]))
    with pytest.raises(AnalysisError, match="NaN"):
        detection_metrics(np.array([np.nan, -1.0]), np.array([True, False]))
    with pytest.raises(AnalysisError, match="detection_metrics_batch"):
        detection_metrics(np.zeros((2, 2)), np.array([True, False]))
    assert issubclass(AnalysisError, BioattnError)


# --- performance gains ------------------------------------------------------------------------


def _row(category: str, method: str, beta: float, tp: float, fp: float, **kw: object) -> dict:
    d, c = dprime_criterion(tp, fp)
    row = {
        "task": "category",
        "image_type": "merged",
        "category": category,
        "layer": "conv2_1",
        "layer_number": 3,
        "method": method,
        "beta": beta,
        "tp": tp,
        "tn": 1 - fp,
        "fp": fp,
        "performance": (tp + 1 - fp) / 2,
        "dprime": d,
        "criterion": c,
        "n_pos": 10,
        "n_neg": 10,
    }
    row.update(kw)
    return row


def _gain_table() -> pd.DataFrame:
    rows = [
        # cat A, tuning: best at β=1 (0.8 vs baseline 0.6)
        _row("A", "tuning", 0.0, 0.6, 0.4),
        _row("A", "tuning", 0.5, 0.7, 0.3),
        _row("A", "tuning", 1.0, 0.9, 0.3),
        _row("A", "tuning", 2.0, 0.9, 0.5),
        # cat A, gradient: -0.5 and 1.0 tie (0.7); the smaller |β| wins
        _row("A", "gradient", 0.0, 0.6, 0.4),
        _row("A", "gradient", -0.5, 0.8, 0.4),
        _row("A", "gradient", 1.0, 0.7, 0.3),
        # cat B, tuning: attention never helps, baseline tied by β=0.5 -> β=0, Δ=0
        _row("B", "tuning", 0.5, 0.7, 0.3),
        _row("B", "tuning", 0.0, 0.7, 0.3),
        _row("B", "tuning", 1.0, 0.6, 0.3),
        # cat B, gradient: ±1 tie -> positive β wins
        _row("B", "gradient", 0.0, 0.5, 0.5),
        _row("B", "gradient", 1.0, 0.8, 0.4),
        _row("B", "gradient", -1.0, 0.7, 0.3),
    ]
    return pd.DataFrame(rows)


def test_performance_gains_hand_built() -> None:
    gains = performance_gains(_gain_table())
    assert len(gains) == 4
    g = gains.set_index(["category", "method"])

    a_tun = g.loc[("A", "tuning")]
    assert a_tun["baseline"] == pytest.approx(0.6)
    assert a_tun["best_beta"] == 1.0
    assert a_tun["best_performance"] == pytest.approx(0.8)
    assert a_tun["delta_pp"] == pytest.approx(20.0)
    d0, c0 = dprime_criterion(0.6, 0.4)
    d1, c1 = dprime_criterion(0.9, 0.3)
    assert a_tun["delta_dprime"] == pytest.approx(d1 - d0)
    assert a_tun["delta_criterion"] == pytest.approx(c1 - c0)
    assert a_tun["n_betas"] == 4

    a_grad = g.loc[("A", "gradient")]
    assert a_grad["best_beta"] == -0.5
    assert a_grad["delta_pp"] == pytest.approx(10.0)

    b_tun = g.loc[("B", "tuning")]
    assert b_tun["best_beta"] == 0.0
    assert b_tun["delta_pp"] == pytest.approx(0.0, abs=1e-9)
    assert b_tun["delta_dprime"] == pytest.approx(0.0)

    b_grad = g.loc[("B", "gradient")]
    assert b_grad["best_beta"] == 1.0
    assert b_grad["delta_pp"] == pytest.approx(20.0)

    assert (gains["delta_pp"] >= -1e-9).all()
    for col in ("task", "image_type", "layer", "layer_number"):
        assert col in gains.columns


def test_performance_gains_computes_dprime_when_absent() -> None:
    table = _gain_table().drop(columns=["dprime", "criterion"])
    with_cols = performance_gains(_gain_table())
    without = performance_gains(table)
    np.testing.assert_allclose(without["delta_dprime"], with_cols["delta_dprime"])


def test_performance_gains_missing_baseline_names_group() -> None:
    table = _gain_table()
    table = table.loc[~((table["category"] == "B") & (table["beta"] == 0.0))]
    with pytest.raises(ValueError, match=r"category='B'.*beta=0"):
        performance_gains(table)


def test_performance_gains_duplicate_beta_is_an_error() -> None:
    table = pd.concat([_gain_table(), _gain_table().iloc[[1]]])
    with pytest.raises(ValueError, match="more than one row"):
        performance_gains(table)


# --- layer summary ----------------------------------------------------------------------------


def test_layer_summary_mean_and_sem() -> None:
    gains = pd.DataFrame(
        [
            {"task": "category", "image_type": "merged", "category": c, "layer": layer,
             "layer_number": n, "method": "tuning", "delta_pp": d, "best_beta": b,
             "delta_dprime": 0.1, "delta_criterion": -0.2}
            for c, layer, n, d, b in [
                ("A", "conv2_1", 3, 2.0, 0.5),
                ("B", "conv2_1", 3, 4.0, 1.5),
                ("C", "conv2_1", 3, 9.0, 1.0),
                ("A", "all", 0, 5.0, 2.0),
                ("A", "conv1_1", 1, 1.0, 0.5),
                ("B", "conv1_1", 1, 1.0, 0.5),
            ]
        ]
    )  # fmt: skip
    summary = layer_summary(gains)
    assert list(summary["layer"]) == ["conv1_1", "conv2_1", "all"]
    row = summary.set_index("layer").loc["conv2_1"]
    assert row["mean_delta_pp"] == pytest.approx(5.0)
    # std(ddof=1) of [2, 4, 9] = sqrt(13); sem = sqrt(13)/sqrt(3)
    assert row["sem_delta_pp"] == pytest.approx(math.sqrt(13) / math.sqrt(3))
    assert row["n_categories"] == 3
    assert row["mean_best_beta"] == pytest.approx(1.0)
    assert row["mean_delta_criterion"] == pytest.approx(-0.2)
    one = summary.set_index("layer").loc["all"]
    assert one["sem_delta_pp"] == 0.0 and one["n_categories"] == 1
    same = summary.set_index("layer").loc["conv1_1"]
    assert same["sem_delta_pp"] == pytest.approx(0.0)


def test_layer_summary_sort_order() -> None:
    gains = performance_gains(_synthetic_table())
    summary = layer_summary(gains)
    assert len(summary) == 2 * 2 * 4
    for (_, _), group in summary.groupby(["image_type", "method"], sort=False):
        assert list(group["layer"]) == ["conv1_1", "conv2_1", "conv3_1", "all"]
    assert list(summary["image_type"]) == sorted(summary["image_type"])
    assert (summary["n_categories"] == 2).all()


# --- figures ----------------------------------------------------------------------------------


def _synthetic_table() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    layers = [("conv1_1", 1), ("conv2_1", 3), ("conv3_1", 5), ("all", 0)]
    rows = []
    for image_type, method, (layer, number), category, beta in itertools.product(
        ["merged", "array"], ["tuning", "gradient"], layers, ["shirt", "boot"], [0.0, 0.5, 1.0]
    ):
        tp = float(np.clip(0.6 + 0.05 * beta * number / 5 + rng.normal(0, 0.02), 0, 1))
        fp = float(np.clip(0.3 - 0.02 * beta + rng.normal(0, 0.02), 0, 1))
        rows.append(
            _row(category, method, beta, tp, fp, image_type=image_type, layer=layer,
                 layer_number=number)
        )  # fmt: skip
    return pd.DataFrame(rows)


def _assert_files(paths: list, stem) -> None:
    assert [p.name for p in paths] == [f"{stem.name}.png", f"{stem.name}.svg"]
    for path in paths:
        assert path.exists() and path.stat().st_size > 1000
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()[:2000]


def test_save_figure_creates_parent_and_strips_suffix(tmp_path) -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    stem = tmp_path / "deep" / "dir" / "fig"
    paths = save_figure(fig, stem.with_suffix(".png"))
    _assert_files(paths, stem)


def test_plot_performance_increase(tmp_path) -> None:
    summary = layer_summary(performance_gains(_synthetic_table()))
    stem = tmp_path / "figs" / "performance_increase"
    _assert_files(plot_performance_increase(summary, stem), stem)
    # A gains table is summarised automatically.
    stem2 = tmp_path / "figs" / "from_gains"
    _assert_files(plot_performance_increase(performance_gains(_synthetic_table()), stem2), stem2)


def test_plot_rates_and_dprime_vs_beta(tmp_path) -> None:
    table = _synthetic_table()
    stem = tmp_path / "rates"
    _assert_files(plot_rates_vs_beta(table, stem, layer="all"), stem)
    stem = tmp_path / "dprime"
    _assert_files(plot_dprime_criterion_vs_beta(table, stem, layer=3), stem)
    stem = tmp_path / "dprime_default"
    _assert_files(plot_dprime_criterion_vs_beta(table.drop(columns=["dprime"]), stem), stem)
    with pytest.raises(ValueError, match=r"conv9_9.*conv1_1"):
        plot_rates_vs_beta(table, tmp_path / "bad", layer="conv9_9")
