"""Statistics over trained networks and categories: bootstrap intervals and paired tests.

A replication measures one effect (a performance increase, a difference between two methods)
per *unit*: one trained network and one attended category. Two sources of variability matter:
another network trained the same way (another seed) and another category. The intervals here
resample both levels (a two-level bootstrap over networks and categories). Every network is
tested on the same categories (the design is crossed, not nested), so each replicate draws
networks and, independently, one set of categories that serves every network drawn; with a
single network only the categories vary. Intervals are *expanded* percentile intervals of
the bootstrapped mean (Hesterberg 2015, "What teachers should know about the bootstrap",
§5): with few top-level units (five networks, ten categories) the plain percentile interval
is too narrow (it uses the normal quantile and the biased spread of a small sample), so the
percentiles are taken at α′/2 = Φ(−√(n/(n−1)) · t₁₋α/₂,ₙ₋₁), n the number of top-level units
(networks; categories when there are fewer than :data:`MIN_NETWORKS_FOR_EXPANSION`
networks). For five networks a 95 % interval uses the 0.1 % and 99.9 % bootstrap
percentiles (the replicate count is raised so that at least :data:`MIN_TAIL_REPLICATES` lie
beyond each); as n grows it becomes the usual 2.5 % and 97.5 %.

Paired tests compare two methods unit by unit (e.g. gradient minus tuning values at one layer).
The independent units are the networks when there are at least :data:`MIN_NETWORKS_FOR_TEST`
of them (the test runs on each network's mean over categories, so it speaks of other networks
tested on these categories); with fewer networks, or on request, the test runs over categories
(it then speaks of other categories on these networks). The bootstrap interval generalises
over both, so it can include 0 where either test alone rejects. Each test reports its
name, statistic, degrees of freedom, p-value, the effect size d_z (mean difference over the
standard deviation of the differences, at the level tested) and n.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from bioattn.analysis.sdt import AnalysisError

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "MAX_BOOTSTRAP",
    "MIN_NETWORKS_FOR_EXPANSION",
    "MIN_NETWORKS_FOR_TEST",
    "MIN_TAIL_REPLICATES",
    "Estimate",
    "PairedTest",
    "bootstrap_means",
    "estimate",
    "expanded_tail",
    "paired_test",
    "unit_matrix",
]

#: Bootstrap replicates by default: enough for stable bounds at the 0.1 % percentiles.
DEFAULT_BOOTSTRAP = 20_000
#: Fewest networks for a paired test over networks (below it, the test is over categories).
MIN_NETWORKS_FOR_TEST = 3
#: Fewest networks for an interval expanded by the networks' count. With 2–3 networks the
#: expanded percentiles lie beyond anything a bootstrap of them can resolve (α′/2 = 7e-8 for
#: three), so below this the expansion uses the categories' count (the networks are still
#: resampled); such an interval can be too narrow for the variability between networks.
MIN_NETWORKS_FOR_EXPANSION = 4
#: Bootstrap replicates expected beyond each bound; ``n_boot`` is raised to reach it, up to
#: MAX_BOOTSTRAP (with 2–3 top-level units the interval is then nearly their range).
MIN_TAIL_REPLICATES = 10
MAX_BOOTSTRAP = 200_000


@dataclass(frozen=True)
class Estimate:
    """A mean over units with its two-level bootstrap interval."""

    mean: float
    ci_low: float
    ci_high: float
    n_networks: int
    n_categories: int
    level: float = 0.95


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of differences (one method minus another), with its effect size."""

    test: str
    units: str
    n: int
    mean_difference: float
    statistic: float
    df: int
    p_value: float
    effect_size_dz: float


def unit_matrix(
    frame: pd.DataFrame,
    value: str,
    network: str = "network",
    category: str = "category",
) -> np.ndarray:
    """``frame[value]`` as a (networks × categories) array, NaN where a unit is missing.

    A frame without a ``network`` column is one network. Raises :class:`AnalysisError` when a
    unit appears twice (aggregate or filter first) or the column is missing.
    """
    for column in (value, category):
        if column not in frame.columns:
            raise AnalysisError(
                f"unit_matrix needs column {column!r}; the table has {list(frame.columns)}"
            )
    data = frame if network in frame.columns else frame.assign(**{network: 0})
    if data.duplicated([network, category]).any():
        row = data.loc[data.duplicated([network, category], keep=False)].iloc[0]
        raise AnalysisError(
            f"unit (network={row[network]!r}, category={row[category]!r}) appears more than "
            f"once for {value!r}; select one layer/method/image type before estimating"
        )
    pivot = data.pivot(index=network, columns=category, values=value)
    return pivot.to_numpy(dtype=float)


def _as_matrix(values: Any) -> np.ndarray:
    matrix = np.asarray(values, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.size == 0:
        raise AnalysisError(
            f"expected a (networks × categories) array of effects, got shape {matrix.shape}"
        )
    if np.isnan(matrix).all():
        raise AnalysisError("every unit's effect is missing (NaN); nothing to estimate")
    return matrix


def bootstrap_means(values: Any, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """Bootstrapped means of a (networks × categories) array: networks, then categories.

    Each replicate draws networks with replacement, then categories with replacement (one
    draw shared by the networks, as every network saw the same categories), and averages the
    drawn cells (missing cells are skipped). Deterministic given ``seed``.
    """
    matrix = _as_matrix(values)
    if n_boot < 1:
        raise AnalysisError(f"n_boot must be at least 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    n_networks, n_categories = matrix.shape
    networks = rng.integers(n_networks, size=(n_boot, n_networks))
    categories = rng.integers(n_categories, size=(n_boot, n_categories))
    drawn = matrix[networks[:, :, None], categories[:, None, :]]
    with np.errstate(invalid="ignore"):
        means = np.nanmean(drawn.reshape(n_boot, -1), axis=1)
    # a replicate that drew only missing cells has no mean; leave it out
    return means[np.isfinite(means)]


def expanded_tail(level: float, n: int) -> float:
    """The lower tail probability α′/2 of the expanded percentile interval for ``n`` top-level
    units (see the module docstring); ``(1 − level)/2`` for large ``n``, and for ``n < 2`` (no
    spread to correct) as well."""
    if n < 2:
        return (1 - level) / 2
    t = scipy_stats.t.ppf(1 - (1 - level) / 2, n - 1)
    return float(scipy_stats.norm.cdf(-np.sqrt(n / (n - 1)) * t))


def estimate(
    values: Any, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, level: float = 0.95
) -> Estimate:
    """Mean of a (networks × categories) array with its two-level (expanded percentile)
    bootstrap interval."""
    if not 0 < level < 1:
        raise AnalysisError(f"level must lie in (0, 1), got {level}")
    matrix = _as_matrix(values)
    present = ~np.isnan(matrix)
    n_networks = int(present.any(axis=1).sum())
    n_categories = int(present.any(axis=0).sum())
    top = n_networks if n_networks >= MIN_NETWORKS_FOR_EXPANSION else n_categories
    tail = expanded_tail(level, top)
    # enough replicates beyond each bound for the percentile to be a bound, not the extreme;
    # with 2–3 units that would take astronomically many, and the interval is the range of
    # MAX_BOOTSTRAP replicates (but MIN_TAIL_REPLICATES) instead
    n_boot = min(max(n_boot, int(min(np.ceil(MIN_TAIL_REPLICATES / tail), 2**62))), MAX_BOOTSTRAP)
    tail = max(tail, MIN_TAIL_REPLICATES / n_boot)
    means = bootstrap_means(matrix, n_boot, seed)
    low, high = np.percentile(means, [100 * tail, 100 * (1 - tail)])
    return Estimate(
        mean=float(np.nanmean(matrix)),
        ci_low=float(low),
        ci_high=float(high),
        n_networks=n_networks,
        n_categories=n_categories,
        level=level,
    )


def paired_test(differences: Any, over: str | None = None) -> PairedTest:
    """Paired t-test that the mean of (networks × categories) differences is zero.

    ``over="networks"``: the units are the networks (each network's mean over categories; the
    categories are held fixed); ``over="categories"``: the categories (each one's mean over
    networks; the networks held fixed). By default over networks when there are at least
    :data:`MIN_NETWORKS_FOR_TEST`, else over categories. ``effect_size_dz`` is the mean
    difference over the standard deviation of the tested units' differences (0 when they are
    all equal and zero; ±inf when equal and non-zero).
    """
    if over not in (None, "networks", "categories"):
        raise AnalysisError(f"over must be 'networks' or 'categories', got {over!r}")
    matrix = _as_matrix(differences)
    with np.errstate(invalid="ignore"):
        by_network = np.nanmean(matrix, axis=1)
        by_category = np.nanmean(matrix, axis=0)
    enough = np.isfinite(by_network).sum() >= MIN_NETWORKS_FOR_TEST
    if over == "networks" or (over is None and enough):
        units, name = by_network[np.isfinite(by_network)], "networks"
    else:
        units, name = by_category[np.isfinite(by_category)], "categories"
    n = len(units)
    if n < 2:  # no spread to test against: report the mean, no test
        return PairedTest("paired t-test", name, n, float(units.mean()) if n else float("nan"),
                          float("nan"), max(n - 1, 0), float("nan"), float("nan"))  # fmt: skip
    mean = float(units.mean())
    spread = float(units.std(ddof=1))
    if spread <= 1e-12 * max(abs(mean), 1.0):  # equal units (up to float rounding)
        spread = 0.0
    if spread == 0.0:
        zero = abs(mean) <= 1e-12
        statistic = 0.0 if zero else float(np.sign(mean) * np.inf)
        p_value = 1.0 if zero else 0.0
    else:
        result = scipy_stats.ttest_1samp(units, 0.0)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    effect = statistic / np.sqrt(n) if spread == 0.0 else mean / spread
    return PairedTest(
        test="paired t-test",
        units=name,
        n=n,
        mean_difference=mean,
        statistic=statistic,
        df=n - 1,
        p_value=p_value,
        effect_size_dz=float(effect),
    )
