"""The findings of Lindsay & Miller (2018), each with a verdict computed from the measurements.

Input: held-out gains (:func:`bioattn.analysis.sdt.held_out_gains`: β chosen on selection
images, Δ measured on test images) of one or more trained networks, with a ``network`` column
(the training seed; absent for one network). Every comparison is a difference per unit (one
network × one attended category), estimated with its two-level bootstrap interval
(:mod:`bioattn.analysis.stats`: networks, then categories) and paired t-tests over networks
and over categories. The verdicts use the intervals (they generalise over both); the tests
are reported beside them.

A comparison **supports** its finding when the 95 % interval lies on the finding's side,
**contradicts** it when the interval lies on the other side, and is **inconclusive** otherwise.
A finding **holds** when every comparison measured for it supports it, **does not hold** when
none does (it is not reproduced; ``contradicting`` counts the comparisons that show the
opposite, the others were inconclusive), and is **mixed** otherwise; **not run** when the run
measured nothing for it.

The comparisons (layers ordered by depth; "early" and "late" are the first and last
⌊n/2⌋ single layers; every comparison is made per image type):

1. *Gradient values beat tuning values at early layers*: Δ(gradient) − Δ(tuning) at each
   early layer; the finding's side is > 0.
2. *Gains are largest at later layers*: mean Δ over the late layers − mean Δ over the early
   layers, per method; side > 0.
3. *All layers at β/10 is about as good as the best single layer*: Δ(all layers) −
   (1 − :data:`ABOUT_AS_GOOD`) × Δ(best single layer) per unit, the best layer chosen per
   network on the selection images (ties to the shallower layer); side > 0 (all layers keep
   at least three quarters of the best layer's gain).
4. *Feature attention mainly shifts the criterion*: |Δc| − |Δd′| at the chosen β, mean over
   every layer setting, per method; side > 0. (Spatial attention's half is measured by
   ``bioattn orientation``, not here.)
5. *Downstream activity follows the FSGM*: not measured by a performance sweep (``bioattn
   record`` + ``bioattn analyze neural``).
6. *The SSN-CNN reproduces 1 and 2*: decided only in ``bioattn ssn replicate``'s SSN folder, by
   the SSN-CNN's own finding 1 and 2 comparisons taken together (:func:`with_reproduction`).

Control: *values beat shuffled values* — Δ(method) − Δ(shuffled-method), mean over the
single layers, for each method whose shuffled control was run; side > 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from bioattn.analysis.sdt import SUMMARY_KEYS, AnalysisError, sort_layers
from bioattn.analysis.stats import DEFAULT_BOOTSTRAP, estimate, paired_test, unit_matrix

__all__ = [
    "ABOUT_AS_GOOD",
    "CLAIMS",
    "FEATURE_METHODS",
    "comparisons",
    "effects",
    "format_findings",
    "method_tests",
    "verdicts",
    "with_reproduction",
]

#: Finding 3's tolerance: all layers at β/10 is "about as good" as the best single layer when
#: it keeps at least 1 − ABOUT_AS_GOOD of that layer's gain.
ABOUT_AS_GOOD = 0.25
#: The value-based feature-attention methods the findings compare.
FEATURE_METHODS = ("gradient", "tuning")

#: The six findings (DESIGN.md §1) and the control, as stated in the paper.
CLAIMS: dict[str, str] = {
    "1": "attention by gradient values beats tuning values at early layers",
    "2": "gains are largest when attention is applied at later layers",
    "3": "all layers at β/10 is about as good as the best single layer",
    "4": "feature attention mainly shifts the criterion (spatial attention mainly raises d′)",
    "5": "downstream activity follows the FSGM and effects grow at later layers",
    "6": "the SSN-CNN reproduces findings 1 and 2",
    "control": "attention by values beats attention by shuffled values",
}
_NOT_RUN = {
    "5": "not measured by a performance sweep: `bioattn record` + `bioattn analyze neural`",
    "6": "measured on the SSN-CNN only: `bioattn ssn replicate` (its ssn/ folder)",
}

_COMPARISON_COLUMNS = [
    "finding",
    "image_type",
    "comparison",
    "unit",
    "mean",
    "ci_low",
    "ci_high",
    "outcome",
    "n_networks",
    "n_categories",
    "test",
    "test_units",
    "n",
    "statistic",
    "df",
    "p_value",
    "effect_size_dz",
    "p_value_over_categories",
    "effect_size_dz_over_categories",
]


def _with_network(gains: pd.DataFrame) -> pd.DataFrame:
    if "network" in gains.columns:
        return gains
    return gains.assign(network=0)


def _single_layers(gains: pd.DataFrame) -> list[str]:
    layers = gains.loc[gains["layer"] != "all", ["layer", "layer_number"]].drop_duplicates()
    return list(layers.sort_values("layer_number")["layer"])


def effects(gains: pd.DataFrame, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> pd.DataFrame:
    """Mean held-out Δ (pp), Δd′ and Δc per (image type, layer, method), with 95 % intervals
    over networks and categories, the mean chosen β and the mean (biased) selection-image Δ."""
    gains = _with_network(gains)
    keys = [k for k in SUMMARY_KEYS if k in gains.columns]
    rows: list[dict[str, Any]] = []
    for values, group in gains.groupby(keys, sort=False):
        row: dict[str, Any] = dict(zip(keys, values, strict=True))
        # column names of each metric's mean and interval in the effects table
        for metric, (mean, low, high) in (
            ("delta_pp", ("mean_delta_pp", "ci_low_pp", "ci_high_pp")),
            ("delta_dprime", ("dprime_mean", "dprime_ci_low", "dprime_ci_high")),
            ("delta_criterion", ("criterion_mean", "criterion_ci_low", "criterion_ci_high")),
        ):
            found = estimate(unit_matrix(group, metric), n_boot, seed)
            row.update({mean: found.mean, low: found.ci_low, high: found.ci_high})
            if metric == "delta_pp":
                row["n_networks"], row["n_categories"] = found.n_networks, found.n_categories
        row["mean_best_beta"] = float(group["best_beta"].mean())
        if "selection_delta_pp" in group:
            row["mean_selection_delta_pp"] = float(group["selection_delta_pp"].mean())
        rows.append(row)
    return sort_layers(pd.DataFrame(rows))


def _compare(
    finding: str,
    image_type: str,
    label: str,
    differences: pd.DataFrame,
    unit: str,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """One comparison: the bootstrap interval and paired test of per-unit ``differences``
    (columns network, category, diff) against 0."""
    matrix = unit_matrix(differences, "diff")
    found = estimate(matrix, n_boot, seed)
    if found.n_networks < 2 and found.n_categories < 2:
        outcome = "inconclusive"  # one unit: no spread, no interval to speak of
    elif found.ci_low > 0.0:
        outcome = "supports"
    elif found.ci_high < 0.0:
        outcome = "contradicts"
    else:
        outcome = "inconclusive"
    test = paired_test(matrix)
    by_category = paired_test(matrix, over="categories")
    return {
        "finding": finding,
        "image_type": image_type,
        "comparison": label,
        "unit": unit,
        "mean": found.mean,
        "ci_low": found.ci_low,
        "ci_high": found.ci_high,
        "outcome": outcome,
        "n_networks": found.n_networks,
        "n_categories": found.n_categories,
        "test": test.test,
        "test_units": test.units,
        "n": test.n,
        "statistic": test.statistic,
        "df": test.df,
        "p_value": test.p_value,
        "effect_size_dz": test.effect_size_dz,
        "p_value_over_categories": by_category.p_value,
        "effect_size_dz_over_categories": by_category.effect_size_dz,
    }


def _per_unit(frame: pd.DataFrame, value: str | Callable[[pd.DataFrame], pd.Series]) -> pd.Series:
    """Mean over the rows of each (network, category) of a column or of a computed series."""
    series = frame[value] if isinstance(value, str) else value(frame)
    return series.groupby([frame["network"], frame["category"]]).mean()


def _difference(a: pd.Series, b: pd.Series) -> pd.DataFrame:
    """a − b per (network, category), for units present in both."""
    diff = (a - b).dropna().rename("diff")
    return diff.reset_index()


def comparisons(
    gains: pd.DataFrame,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    methods: Sequence[str] = FEATURE_METHODS,
) -> pd.DataFrame:
    """Every comparison of the findings (see the module docstring), one row each.

    ``gains`` are held-out gains (with ``selection_delta_pp`` for finding 3's choice of the
    best layer) of one or more networks (``network`` column). Comparisons whose methods or
    layers the gains lack are left out.
    """
    gains = _with_network(gains)
    required = {"image_type", "category", "layer", "layer_number", "method", "delta_pp"}
    missing = sorted(required - set(gains.columns))
    if missing:
        raise AnalysisError(f"findings need gains with columns {missing}; run held_out_gains")
    rows: list[dict[str, Any]] = []
    for image_type, frame in gains.groupby("image_type", sort=True):
        singles = _single_layers(frame)
        half = len(singles) // 2
        early, late = singles[:half], singles[len(singles) - half :]
        present = set(frame["method"])
        by_method = {m: frame[frame["method"] == m] for m in present}

        def at(method: str, layers: Sequence[str], groups=by_method) -> pd.Series:
            rows_ = groups[method]
            return _per_unit(rows_[rows_["layer"].isin(layers)], "delta_pp")

        if all(m in present for m in ("gradient", "tuning")):
            for layer in early:
                diff = _difference(at("gradient", [layer]), at("tuning", [layer]))
                label = f"{layer}: Δ gradient − Δ tuning"
                rows.append(_compare("1", image_type, label, diff, "pp", n_boot, seed))
        for method in methods:
            if method not in present or not early:
                continue
            diff = _difference(at(method, late), at(method, early))
            label = f"{method}: mean Δ late ({', '.join(late)}) − early ({', '.join(early)})"
            rows.append(_compare("2", image_type, label, diff, "pp", n_boot, seed))
        for method in methods:
            if method not in present or "all" not in set(by_method[method]["layer"]):
                continue
            rows.append(_about_as_good(image_type, method, by_method[method], n_boot, seed))
        for method in methods:
            if method not in present:
                continue
            diff = _per_unit(
                by_method[method],
                lambda f: f["delta_criterion"].abs() - f["delta_dprime"].abs(),
            )
            label = f"{method}: |Δc| − |Δd′| at the chosen β, mean over layer settings"
            rows.append(_compare("4", image_type, label, diff.rename("diff").reset_index(),
                                 "z", n_boot, seed))  # fmt: skip
        for method in methods:
            control = f"shuffled-{method}"
            if method not in present or control not in present:
                continue
            diff = _difference(at(method, singles), at(control, singles))
            label = f"Δ {method} − Δ {control}, mean over single layers"
            rows.append(_compare("control", image_type, label, diff, "pp", n_boot, seed))
    return pd.DataFrame(rows, columns=_COMPARISON_COLUMNS)


def _about_as_good(
    image_type: str, method: str, frame: pd.DataFrame, n_boot: int, seed: int
) -> dict[str, Any]:
    """Finding 3: Δ(all layers) − (1 − ABOUT_AS_GOOD)·Δ(best single layer), per unit, the best
    layer chosen per network on the selection images (on the test images themselves, and so
    labelled, for gains without selection images)."""
    singles = frame[frame["layer"] != "all"]
    held_out = "selection_delta_pp" in frame
    choice = "selection_delta_pp" if held_out else "delta_pp"
    best_layer = (
        singles.groupby(["network", "layer_number", "layer"])[choice].mean().reset_index()
        .sort_values(["network", choice, "layer_number"], ascending=[True, False, True],
                     kind="mergesort")
        .drop_duplicates("network")
        .set_index("network")["layer"]
    )  # fmt: skip
    chosen = singles[singles["layer"] == singles["network"].map(best_layer)]
    best = _per_unit(chosen, "delta_pp")
    every = _per_unit(frame[frame["layer"] == "all"], "delta_pp")
    diff = _difference(every, (1 - ABOUT_AS_GOOD) * best)
    layers = ", ".join(sorted(set(best_layer)))
    where = "chosen on selection images" if held_out else "chosen on these images: biased"
    keep = f"{1 - ABOUT_AS_GOOD:g}"
    label = f"{method}: Δ all layers − {keep} × Δ best single layer ({layers}, {where})"
    return _compare("3", image_type, label, diff, "pp", n_boot, seed)


def with_reproduction(table: pd.DataFrame) -> pd.DataFrame:
    """The comparisons of an SSN-CNN's run plus finding 6's: its finding 1 and 2 comparisons
    again, under finding 6 ("the SSN-CNN reproduces findings 1 and 2"), so 6 holds when every
    one of them supports its finding and does not hold when none does."""
    again = table[table["finding"].isin(["1", "2"])].copy()
    again["comparison"] = "finding " + again["finding"] + ": " + again["comparison"]
    again["finding"] = "6"
    return pd.concat([table[table["finding"] != "6"], again], ignore_index=True)


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """One row per finding: its claim, verdict and the evidence (each comparison's numbers)."""
    rows = []
    for finding, claim in CLAIMS.items():
        measured = table[table["finding"] == finding]
        if measured.empty:
            evidence = _NOT_RUN.get(finding, "not run")
            rows.append({"finding": finding, "claim": claim, "verdict": "not run",
                         "supporting": "", "contradicting": 0, "evidence": evidence})  # fmt: skip
            continue
        support = int((measured["outcome"] == "supports").sum())
        against = int((measured["outcome"] == "contradicts").sum())
        total = len(measured)
        verdict = "holds" if support == total else "does not hold" if support == 0 else "mixed"
        evidence = "; ".join(
            f"{r.image_type}, {r.comparison}: {r.mean:+.2f} {r.unit} "
            f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}] ({r.outcome})"
            for r in measured.itertuples()
        )
        rows.append({"finding": finding, "claim": claim, "verdict": verdict,
                     "supporting": f"{support} of {total}", "contradicting": against,
                     "evidence": evidence})  # fmt: skip
    columns = ["finding", "claim", "verdict", "supporting", "contradicting", "evidence"]
    return pd.DataFrame(rows, columns=columns)


def method_tests(
    gains: pd.DataFrame,
    a: str = "gradient",
    b: str = "tuning",
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired comparison of two methods at every layer setting: Δ(a) − Δ(b) per unit, its
    interval and paired test (columns as :func:`comparisons`, finding ``"a vs b"``)."""
    gains = _with_network(gains)
    rows = []
    for (image_type, layer), frame in gains.groupby(["image_type", "layer"], sort=False):
        methods = set(frame["method"])
        if a not in methods or b not in methods:
            continue
        diff = _difference(
            _per_unit(frame[frame["method"] == a], "delta_pp"),
            _per_unit(frame[frame["method"] == b], "delta_pp"),
        )
        row = _compare(f"{a} vs {b}", image_type, f"{layer}: Δ {a} − Δ {b}", diff, "pp",
                       n_boot, seed)  # fmt: skip
        row["layer"], row["layer_number"] = layer, int(frame["layer_number"].iloc[0])
        rows.append(row)
    out = pd.DataFrame(rows)
    return out if out.empty else sort_layers(out)


def format_findings(verdict_table: pd.DataFrame) -> str:
    """The verdicts as text, one finding per line with its tally."""
    lines = []
    for row in verdict_table.itertuples():
        tally = ""
        if row.supporting:
            tally = f" ({row.supporting} comparisons support it, {row.contradicting} contradict)"
        lines.append(f"{row.finding:>7}. {row.verdict.upper():<13} {row.claim}{tally}")
    return "\n".join(lines)
