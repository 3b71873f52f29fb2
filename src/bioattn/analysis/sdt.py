"""Signal-detection metrics and performance-gain summaries.

Conventions (DESIGN.md §1 "Evaluation"):

- A detector says "present" when its logit is > 0.
- TP is the hit rate on positive images, TN the correct-rejection rate on negative images and
  FP = 1 − TN the false-alarm rate. Performance = (TP + TN) / 2.
- For d′ and the criterion the rates are clipped to [0.01, 0.99] so that perfect (or perfectly
  wrong) detectors give finite values: d′ = Φ⁻¹(TP) − Φ⁻¹(FP) and c = −½[Φ⁻¹(TP) + Φ⁻¹(FP)].
  A positive criterion means a conservative detector (few "present" answers).
- The gain of attention for one (category, layer, method) is the best performance over the β
  values tried (β = 0 included, so the gain is never negative) minus the performance at β = 0,
  in percentage points (:func:`performance_gains`). Measured on the images β was chosen on,
  that maximum is biased upwards by noise. :func:`held_out_gains` chooses β on selection
  images and measures the gain on test images: unbiased, and negative when the chosen β hurts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtri  # Φ⁻¹, what scipy.stats.norm.ppf computes, but a light import

from bioattn.errors import BioattnError

__all__ = [
    "GAIN_KEYS",
    "SUMMARY_KEYS",
    "AnalysisError",
    "choose_betas",
    "clip_rate",
    "detection_metrics",
    "detection_metrics_batch",
    "dprime_criterion",
    "format_summary",
    "held_out_gains",
    "layer_summary",
    "performance_gains",
    "sem",
    "sort_layers",
    "with_dprime_criterion",
]

#: Columns that identify one gain (one row of :func:`performance_gains`).
GAIN_KEYS: tuple[str, ...] = ("task", "image_type", "category", "layer", "layer_number", "method")
#: Columns of :func:`performance_gains` besides :data:`GAIN_KEYS`.
GAIN_COLUMNS: tuple[str, ...] = (
    "baseline",
    "best_beta",
    "best_performance",
    "delta_pp",
    "baseline_dprime",
    "best_dprime",
    "delta_dprime",
    "baseline_criterion",
    "best_criterion",
    "delta_criterion",
    "n_betas",
)
#: Columns that identify one row of :func:`layer_summary` (gains averaged over categories).
SUMMARY_KEYS: tuple[str, ...] = ("task", "image_type", "layer", "layer_number", "method")

_RATE_LO = 0.01
_RATE_HI = 0.99
# Performances that differ by less than this count as tied when choosing the best β.
_TIE_TOL = 1e-12


class AnalysisError(BioattnError, ValueError):
    """Inputs that cannot be analysed (empty classes, a group without β = 0, missing columns).

    Subclasses :class:`ValueError` as well as :class:`~bioattn.errors.BioattnError`, so callers
    may catch either.
    """


def clip_rate(rate: Any, lo: float = _RATE_LO, hi: float = _RATE_HI) -> Any:
    """Clip a rate (float or array) to ``[lo, hi]``.

    Returns a float for scalar input and a NumPy array otherwise.
    """
    if lo > hi:
        raise AnalysisError(f"clip_rate needs lo <= hi, got lo={lo}, hi={hi}")
    clipped = np.clip(np.asarray(rate, dtype=float), lo, hi)
    return float(clipped) if clipped.ndim == 0 else clipped


def dprime_criterion(tp: Any, fp: Any) -> tuple[Any, Any]:
    """Sensitivity d′ and criterion c from a hit rate ``tp`` and a false-alarm rate ``fp``.

    Both rates are clipped to [0.01, 0.99] first. d′ = Φ⁻¹(TP) − Φ⁻¹(FP) and
    c = −½[Φ⁻¹(TP) + Φ⁻¹(FP)]. Works element-wise on arrays (broadcasting); returns floats for
    scalar inputs.

    >>> d, c = dprime_criterion(0.84, 0.16)
    >>> round(d, 3), round(c, 3)
    (1.989, 0.0)
    """
    z_tp = ndtri(clip_rate(tp))
    z_fp = ndtri(clip_rate(fp))
    dprime = z_tp - z_fp
    criterion = -0.5 * (z_tp + z_fp)
    if np.ndim(dprime) == 0:
        return float(dprime), float(criterion)
    return np.asarray(dprime, dtype=float), np.asarray(criterion, dtype=float)


def _to_numpy(x: Any) -> np.ndarray:
    """Convert a NumPy array, torch tensor or sequence to NumPy (without importing torch)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def detection_metrics_batch(logits: Any, is_target: Any) -> dict[str, np.ndarray]:
    """Detection metrics for ``M`` conditions evaluated on the same ``N`` images.

    Parameters
    ----------
    logits:
        Detector logits, shape ``(M, N)`` (one row per condition, e.g. per β); NumPy array or
        torch tensor. A 1-D vector is treated as ``M = 1``. The decision is ``logit > 0``.
    is_target:
        Shape ``(N,)``; true for positive images (the attended category is present).

    Returns
    -------
    dict
        ``tp``, ``tn``, ``fp``, ``performance``, ``dprime``, ``criterion`` (float arrays of
        length ``M``) and ``n_pos``, ``n_neg`` (int arrays of length ``M``).

    Raises
    ------
    AnalysisError (a ValueError)
        If there are no positive or no negative images, the shapes disagree, or a logit is NaN.
    """
    scores = _to_numpy(logits).astype(float, copy=False)
    if scores.ndim == 1:
        scores = scores[None, :]
    if scores.ndim != 2:
        raise AnalysisError(
            f"logits must have shape (M, N) or (N,), got an array of shape {scores.shape}"
        )
    target = _to_numpy(is_target)
    if target.ndim != 1 or target.shape[0] != scores.shape[1]:
        raise AnalysisError(
            f"is_target must have shape (N,) = ({scores.shape[1]},) to match logits of shape "
            f"{scores.shape}, got shape {target.shape}"
        )
    if target.dtype != bool:
        values = np.unique(target)
        if not np.all(np.isin(values, [0, 1])):
            raise AnalysisError(
                f"is_target must be boolean (or 0/1), got values {values[:5].tolist()}"
            )
        target = target.astype(bool)
    n_pos = int(target.sum())
    n_neg = int(target.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise AnalysisError(
            "detection metrics need both positive and negative images, got "
            f"{n_pos} positive and {n_neg} negative"
        )
    if np.isnan(scores).any():
        bad = np.flatnonzero(np.isnan(scores).any(axis=1))
        raise AnalysisError(
            f"logits contain NaN in condition(s) {bad[:10].tolist()}; the model or the gain "
            "produced invalid activity"
        )
    present = scores > 0
    tp = present[:, target].mean(axis=1)
    fp = present[:, ~target].mean(axis=1)
    tn = 1.0 - fp
    dprime, criterion = dprime_criterion(tp, fp)
    m = scores.shape[0]
    return {
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "performance": (tp + tn) / 2.0,
        "dprime": np.atleast_1d(dprime),
        "criterion": np.atleast_1d(criterion),
        "n_pos": np.full(m, n_pos, dtype=int),
        "n_neg": np.full(m, n_neg, dtype=int),
    }


def detection_metrics(logits: Any, is_target: Any) -> dict[str, float | int]:
    """Detection metrics for one condition.

    ``logits`` has shape ``(N,)`` (decision: logit > 0) and ``is_target`` shape ``(N,)``. Returns
    a dict with float ``tp``, ``tn``, ``fp``, ``performance``, ``dprime``, ``criterion`` and int
    ``n_pos``, ``n_neg``. Raises :class:`AnalysisError` (a ValueError) if either class is empty.
    """
    scores = _to_numpy(logits)
    if scores.ndim != 1:
        raise AnalysisError(
            f"detection_metrics takes one condition, logits of shape (N,); got shape "
            f"{scores.shape} (use detection_metrics_batch for several conditions)"
        )
    batch = detection_metrics_batch(scores, is_target)
    out: dict[str, float | int] = {}
    for key, value in batch.items():
        out[key] = int(value[0]) if key in ("n_pos", "n_neg") else float(value[0])
    return out


def _require_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise AnalysisError(
            f"{what} needs columns {missing} that the table lacks; it has {list(table.columns)}"
        )


def _describe_group(keys: Sequence[str], values: Any) -> str:
    if not isinstance(values, tuple):
        values = (values,)
    return ", ".join(f"{k}={v!r}" for k, v in zip(keys, values, strict=True))


def with_dprime_criterion(table: pd.DataFrame, what: str) -> pd.DataFrame:
    """``table`` with ``dprime`` and ``criterion`` columns: as it is when it has them, else a
    copy with them computed from ``tp`` and ``fp`` (:func:`dprime_criterion`). ``what`` names
    the caller in the error when ``tp`` or ``fp`` is missing too."""
    if "dprime" in table.columns and "criterion" in table.columns:
        return table
    _require_columns(table, ["tp", "fp"], f"{what} (to compute d′ and criterion)")
    dprime, criterion = dprime_criterion(table["tp"].to_numpy(float), table["fp"].to_numpy(float))
    return table.assign(dprime=dprime, criterion=criterion)


def performance_gains(table: pd.DataFrame) -> pd.DataFrame:
    """Best attention strength and performance gain per (category, layer, method).

    Groups the performance table by ``task, image_type, category, layer, layer_number, method``
    (``layer_number`` is optional) and, in each group, finds the β that maximises performance.
    Ties go to the smallest |β| (then to the positive β), so a gain is only claimed when some
    β ≠ 0 is strictly better than no attention.

    Returns one row per group with the group columns and ``baseline`` (performance at β = 0),
    ``best_beta``, ``best_performance``, ``delta_pp`` = 100·(best − baseline) (≥ 0), the d′ and
    criterion at β = 0 and at the best β (``baseline_dprime``, ``best_dprime``,
    ``baseline_criterion``, ``best_criterion``), their changes ``delta_dprime`` and
    ``delta_criterion``, and ``n_betas`` (the number of β values tried). If ``dprime`` or
    ``criterion`` are absent they are computed from ``tp`` and ``fp``.

    Raises :class:`AnalysisError` (a ValueError) naming the group if a group has no β = 0 row or
    has the same β twice (filter or aggregate repeated runs first).
    """
    keys = [k for k in GAIN_KEYS if k in table.columns]
    _require_columns(table, [*GAIN_KEYS[:4], "method", "beta", "performance"], "performance_gains")
    df = with_dprime_criterion(table, "performance_gains").copy()
    df["beta"] = df["beta"].astype(float)
    if df.empty:
        return pd.DataFrame(columns=[*keys, *GAIN_COLUMNS])

    dup = df.duplicated(subset=[*keys, "beta"], keep=False)
    if dup.any():
        first = df.loc[dup, keys].iloc[0]
        beta = df.loc[dup, "beta"].iloc[0]
        raise AnalysisError(
            f"group ({_describe_group(keys, tuple(first))}) has more than one row for "
            f"beta={beta}; aggregate repeated runs or filter the table before computing gains"
        )

    is_zero = np.isclose(df["beta"].to_numpy(), 0.0, rtol=0.0, atol=1e-12)
    base = df.loc[is_zero, [*keys, "performance", "dprime", "criterion"]].rename(
        columns={
            "performance": "baseline",
            "dprime": "baseline_dprime",
            "criterion": "baseline_criterion",
        }
    )
    groups = df.groupby(keys, dropna=False, sort=True)
    n_betas = groups.size().rename("n_betas").reset_index()
    with_base = n_betas.merge(base, on=keys, how="left")
    lacking = with_base["baseline"].isna()
    if lacking.any():
        row = with_base.loc[lacking, keys].iloc[0]
        raise AnalysisError(
            f"group ({_describe_group(keys, tuple(row))}) has no beta=0 row; the baseline "
            "(no attention) is needed to compute the performance gain"
        )

    # Best β: highest performance; near-ties (within _TIE_TOL) go to smallest |β|, then β > 0.
    group_max = groups["performance"].transform("max")
    candidates = df.loc[df["performance"] >= group_max - _TIE_TOL].copy()
    candidates["_abs_beta"] = candidates["beta"].abs()
    candidates["_neg_beta"] = -candidates["beta"]
    candidates = candidates.sort_values([*keys, "_abs_beta", "_neg_beta"], kind="mergesort")
    best = candidates.drop_duplicates(subset=keys, keep="first")[
        [*keys, "beta", "performance", "dprime", "criterion"]
    ].rename(
        columns={
            "beta": "best_beta",
            "performance": "best_performance",
            "dprime": "best_dprime",
            "criterion": "best_criterion",
        }
    )
    out = with_base.merge(best, on=keys, how="left")
    out["delta_pp"] = 100.0 * (out["best_performance"] - out["baseline"])
    out["delta_dprime"] = out["best_dprime"] - out["baseline_dprime"]
    out["delta_criterion"] = out["best_criterion"] - out["baseline_criterion"]
    return out[[*keys, *GAIN_COLUMNS]].reset_index(drop=True)


def choose_betas(selection_table: pd.DataFrame) -> dict[tuple[str, str, str, str], float]:
    """The best β per (image type, category, layer, method) of a selection sweep.

    The choice is :func:`performance_gains`'s (highest performance; ties to the smallest |β|).
    """
    gains = performance_gains(selection_table)
    return {
        (row.image_type, row.category, row.layer, row.method): float(row.best_beta)
        for row in gains.itertuples()
    }


def held_out_gains(selection_table: pd.DataFrame, test_table: pd.DataFrame) -> pd.DataFrame:
    """Gains with β chosen on selection images and measured on test images.

    For each group (as in :func:`performance_gains`) the β with the best performance on the
    selection images (``selection_table``, e.g. training-split task sets) is looked up in
    ``test_table`` (which needs the β = 0 row and that β's row; other rows are ignored).
    Returns :func:`performance_gains`'s columns, with ``best_beta`` the chosen β,
    ``best_performance`` the test performance at it and ``delta_pp`` = 100·(test performance at
    the chosen β − test performance at β = 0), which can be negative; plus
    ``selection_delta_pp``, the (biased) gain on the selection images themselves.

    Raises :class:`AnalysisError` naming the group when the test table lacks its baseline or
    its chosen β.
    """
    selection = performance_gains(selection_table)
    keys = [k for k in GAIN_KEYS if k in selection.columns and k in test_table.columns]
    _require_columns(test_table, [*keys, "beta", "performance"], "held_out_gains")
    test = with_dprime_criterion(test_table, "held_out_gains").copy()
    test["beta"] = test["beta"].astype(float)
    test = test.drop_duplicates([*keys, "beta"])
    measured = ["performance", "dprime", "criterion"]
    chosen = selection[[*keys, "best_beta", "n_betas", "delta_pp"]].rename(
        columns={"delta_pp": "selection_delta_pp"}
    )
    at_zero = test.loc[test["beta"] == 0.0, [*keys, *measured]].rename(
        columns={"performance": "baseline", "dprime": "baseline_dprime",
                 "criterion": "baseline_criterion"}
    )  # fmt: skip
    at_best = test[[*keys, "beta", *measured]].rename(
        columns={"beta": "best_beta", "performance": "best_performance",
                 "dprime": "best_dprime", "criterion": "best_criterion"}
    )  # fmt: skip
    out = chosen.merge(at_zero, on=keys, how="left").merge(
        at_best, on=[*keys, "best_beta"], how="left"
    )
    lacking = out["baseline"].isna() | out["best_performance"].isna()
    if lacking.any():
        row = out.loc[lacking].iloc[0]
        raise AnalysisError(
            f"the test table has no row for group ({_describe_group(keys, tuple(row[keys]))}) "
            f"at beta=0 or at the chosen beta={row['best_beta']:g}; evaluate the test images "
            "at the β values chosen on the selection images"
        )
    out["delta_pp"] = 100.0 * (out["best_performance"] - out["baseline"])
    out["delta_dprime"] = out["best_dprime"] - out["baseline_dprime"]
    out["delta_criterion"] = out["best_criterion"] - out["baseline_criterion"]
    return out[[*keys, *GAIN_COLUMNS, "selection_delta_pp"]].reset_index(drop=True)


def sem(values: pd.Series) -> float:
    """Standard error of the mean of ``values`` (std with ddof=1 over √n, NaNs skipped); 0 for
    fewer than two values, where there is no spread to estimate."""
    n = int(values.count())
    if n <= 1:
        return 0.0
    return float(values.std(ddof=1) / np.sqrt(n))


def layer_summary(gains: pd.DataFrame) -> pd.DataFrame:
    """Mean ± SEM across categories of the gains from :func:`performance_gains`.

    Groups by ``task, image_type, layer, layer_number, method`` (``layer_number`` optional) and
    returns, per group: ``mean_delta_pp``, ``sem_delta_pp`` (std with ddof=1 over √n; 0 when
    n = 1), ``n_categories``, ``mean_best_beta`` and, when present in ``gains``, the mean and SEM
    of ``delta_dprime`` and ``delta_criterion``. Rows are sorted by image_type, method and
    layer_number, with the all-layers row (layer "all") last within each (image_type, method).
    """
    _require_columns(
        gains, ["image_type", "layer", "method", "delta_pp", "best_beta"], "layer_summary"
    )
    keys = [k for k in SUMMARY_KEYS if k in gains.columns]
    metrics = ["delta_pp"] + [m for m in ("delta_dprime", "delta_criterion") if m in gains]
    rows: list[dict[str, Any]] = []
    for values, group in gains.groupby(keys, dropna=False, sort=False):
        row: dict[str, Any] = dict(zip(keys, values, strict=True))
        for metric in metrics:
            row[f"mean_{metric}"] = float(group[metric].mean())
            row[f"sem_{metric}"] = sem(group[metric])
        row["n_categories"] = (
            int(group["category"].nunique(dropna=False)) if "category" in group else len(group)
        )
        row["mean_best_beta"] = float(group["best_beta"].mean())
        rows.append(row)
    columns = [
        *keys,
        "mean_delta_pp",
        "sem_delta_pp",
        "n_categories",
        "mean_best_beta",
        *[f"{s}_{m}" for m in metrics[1:] for s in ("mean", "sem")],
    ]
    out = pd.DataFrame(rows, columns=columns)
    return sort_layers(out)


def sort_layers(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort a summary by image_type, method and layer order, with layer "all" last."""
    if frame.empty:
        return frame.reset_index(drop=True)
    order = frame.copy()
    order["_is_all"] = order["layer"].astype(str) == "all"
    sort_cols = [c for c in ("task", "image_type", "method") if c in order.columns]
    sort_cols.append("_is_all")
    if "layer_number" in order.columns:
        sort_cols.append("layer_number")
    order = order.sort_values(sort_cols, kind="mergesort")
    return order.drop(columns="_is_all").reset_index(drop=True)


def format_summary(summary: pd.DataFrame) -> str:
    """A text table of the performance increase (pp) per layer, by image type and method:
    mean ± SEM (a :func:`layer_summary`), or mean [95 % interval] (an effects table with
    ``ci_low_pp``/``ci_high_pp``, :func:`bioattn.analysis.findings.effects`)."""
    mean = summary["mean_delta_pp"].map("{:.1f}".format)
    if {"ci_low_pp", "ci_high_pp"} <= set(summary.columns):
        low, high = (summary[c].map("{:.1f}".format) for c in ("ci_low_pp", "ci_high_pp"))
        cell = mean + " [" + low + ", " + high + "]"
    else:
        cell = mean + " ± " + summary["sem_delta_pp"].map("{:.1f}".format)
    cells = summary.assign(
        cell=cell,
        # all-layers mode (layer_number 0) goes last
        order=summary["layer_number"].where(summary["layer_number"] > 0, 10_000),
    )
    pivot = cells.pivot_table(
        index=["order", "layer"], columns=["image_type", "method"], values="cell", aggfunc="first"
    )
    pivot.index = pivot.index.get_level_values("layer")
    return pivot.to_string()
