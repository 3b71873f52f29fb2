"""Analysis of attention sweeps: signal detection, performance gains and figures."""

from __future__ import annotations

from bioattn.analysis.figures import (
    METHOD_COLORS,
    dprime_criterion_vs_beta_figure,
    method_colors,
    performance_increase_figure,
    plot_dprime_criterion_vs_beta,
    plot_performance_increase,
    plot_rates_vs_beta,
    rates_vs_beta_figure,
    save_figure,
)
from bioattn.analysis.sdt import (
    GAIN_KEYS,
    SUMMARY_KEYS,
    AnalysisError,
    clip_rate,
    detection_metrics,
    detection_metrics_batch,
    dprime_criterion,
    layer_summary,
    performance_gains,
    sort_layers,
)

__all__ = [
    "GAIN_KEYS",
    "METHOD_COLORS",
    "SUMMARY_KEYS",
    "AnalysisError",
    "clip_rate",
    "detection_metrics",
    "detection_metrics_batch",
    "dprime_criterion",
    "dprime_criterion_vs_beta_figure",
    "layer_summary",
    "method_colors",
    "performance_gains",
    "performance_increase_figure",
    "plot_dprime_criterion_vs_beta",
    "plot_performance_increase",
    "plot_rates_vs_beta",
    "rates_vs_beta_figure",
    "save_figure",
    "sort_layers",
]
