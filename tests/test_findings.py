"""Statistics over networks and categories, held-out gains, the selection split and verdicts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from bioattn.analysis.findings import (
    CLAIMS,
    comparisons,
    effects,
    method_tests,
    verdicts,
    with_reproduction,
)
from bioattn.analysis.sdt import AnalysisError, choose_betas, held_out_gains, performance_gains
from bioattn.analysis.stats import (
    bootstrap_means,
    estimate,
    expanded_tail,
    paired_test,
    unit_matrix,
)
from bioattn.errors import DataError
from bioattn.experiments import replication
from bioattn.experiments.sweep import (
    SweepConfig,
    build_selection_sets,
    build_test_sets,
    run_sweep,
)
from bioattn.models.train import TrainSettings
from tests.conftest import make_image_set

# --- the two-level bootstrap -------------------------------------------------------------


def test_bootstrap_is_deterministic_and_constant_effects_have_no_spread():
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(5, 10))
    assert np.array_equal(bootstrap_means(matrix, 500, seed=1), bootstrap_means(matrix, 500, 1))
    assert not np.array_equal(bootstrap_means(matrix, 500, 1), bootstrap_means(matrix, 500, 2))
    flat = estimate(np.full((5, 10), 2.5), n_boot=200)
    assert (flat.mean, flat.ci_low, flat.ci_high) == (2.5, 2.5, 2.5)
    assert (flat.n_networks, flat.n_categories) == (5, 10)


def test_expanded_interval_covers_the_true_mean_at_its_level():
    """Five networks × ten categories with network and category effects: the 95 % interval
    contains the true mean in about 95 % of simulated replications (a plain percentile
    interval, too narrow for five networks, would not)."""
    rng = np.random.default_rng(0)
    covered = plain_covered = 0
    trials = 300
    for _ in range(trials):
        matrix = (
            rng.normal(0, 1.0, size=(5, 1))
            + rng.normal(0, 1.0, size=(1, 10))
            + rng.normal(0, 0.5, size=(5, 10))
        )
        found = estimate(matrix, n_boot=2000, seed=int(rng.integers(1 << 30)))
        covered += found.ci_low <= 0.0 <= found.ci_high
        means = bootstrap_means(matrix, 2000, seed=1)
        low, high = np.percentile(means, [2.5, 97.5])
        plain_covered += low <= 0.0 <= high
    assert 0.90 <= covered / trials <= 0.995
    assert plain_covered < covered


def test_expanded_tail_matches_the_usual_percentiles_for_many_units():
    assert expanded_tail(0.95, 1) == pytest.approx(0.025)
    assert expanded_tail(0.95, 5) == pytest.approx(0.00095, abs=5e-5)
    assert expanded_tail(0.95, 100_000) == pytest.approx(0.025, abs=1e-4)


def test_network_variability_widens_the_interval():
    rng = np.random.default_rng(1)
    within = rng.normal(0, 1.0, size=(5, 10))
    shifted = within + np.array([[-3.0], [-1.5], [0.0], [1.5], [3.0]])
    narrow, wide = estimate(within, 4000), estimate(shifted, 4000)
    assert (wide.ci_high - wide.ci_low) > 2 * (narrow.ci_high - narrow.ci_low)


def test_few_networks_give_a_stable_interval():
    """With three networks the expansion by the networks' count is beyond any bootstrap;
    the interval then uses the categories' count and does not grow with the replicates."""
    rng = np.random.default_rng(5)
    matrix = rng.normal(2.0, 1.0, size=(3, 10))
    small, large = estimate(matrix, 2000, seed=1), estimate(matrix, 50_000, seed=1)
    assert small.ci_low == pytest.approx(large.ci_low, abs=0.15)
    assert small.ci_high == pytest.approx(large.ci_high, abs=0.15)
    assert small.ci_low > matrix.min() and small.ci_high < matrix.max()


def test_two_units_give_their_range_not_an_impossible_replicate_count():
    found = estimate(np.array([[1.0, 3.0]]), n_boot=1000)
    assert (found.ci_low, found.ci_high) == (1.0, 3.0)


def test_one_category_or_one_unit_gives_no_verdict_but_no_crash():
    gains = _gains(_paper_like, networks=1, categories=1)
    table = comparisons(gains, n_boot=200)
    assert (table["outcome"] == "inconclusive").all()
    assert table["p_value"].isna().all()
    assert (verdicts(table).set_index("finding").loc[["1", "2", "3"], "verdict"]
            == "does not hold").all()  # fmt: skip
    several = comparisons(_gains(_paper_like, networks=5, categories=1), n_boot=200)
    assert several["p_value_over_categories"].isna().all()
    assert several["p_value"].notna().all()


def test_one_network_resamples_categories_only():
    values = np.arange(10.0)[None, :]
    found = estimate(values, n_boot=4000)
    assert found.n_networks == 1 and found.n_categories == 10
    assert found.ci_low < 4.5 < found.ci_high


def test_unit_matrix_refuses_duplicates_and_missing_columns():
    frame = pd.DataFrame({"network": [0, 0, 1], "category": ["a", "b", "a"], "d": [1.0, 2, 3]})
    matrix = unit_matrix(frame, "d")
    assert matrix.shape == (2, 2) and np.isnan(matrix[1, 1])
    with pytest.raises(AnalysisError, match="appears more than once"):
        unit_matrix(pd.concat([frame, frame]), "d")
    with pytest.raises(AnalysisError, match="needs column 'x'"):
        unit_matrix(frame, "x")


def test_paired_test_is_over_networks_when_there_are_enough():
    rng = np.random.default_rng(2)
    differences = rng.normal(0.5, 1.0, size=(5, 10))
    result = paired_test(differences)
    reference = scipy_stats.ttest_1samp(differences.mean(axis=1), 0.0)
    assert result.units == "networks" and result.n == 5 and result.df == 4
    assert result.p_value == pytest.approx(reference.pvalue)
    by_network = differences.mean(axis=1)
    assert result.effect_size_dz == pytest.approx(by_network.mean() / by_network.std(ddof=1))
    single = paired_test(differences[:1])
    assert single.units == "categories" and single.n == 10
    over_categories = paired_test(differences, over="categories")
    reference = scipy_stats.ttest_1samp(differences.mean(axis=0), 0.0)
    assert over_categories.n == 10 and over_categories.p_value == pytest.approx(reference.pvalue)
    with pytest.raises(AnalysisError, match="'networks' or 'categories'"):
        paired_test(differences, over="images")


# --- held-out gains -----------------------------------------------------------------------


def _table(performance: dict[float, float], category: str = "a") -> pd.DataFrame:
    rows = []
    for beta, perf in performance.items():
        rows.append({"task": "category", "image_type": "merged", "category": category,
                     "layer": "conv1", "layer_number": 1, "method": "tuning", "beta": beta,
                     "performance": perf, "tp": perf, "fp": 1 - perf})  # fmt: skip
    return pd.DataFrame(rows)


def test_held_out_gain_uses_the_selection_beta_even_when_the_test_peaks_elsewhere():
    selection = _table({0.0: 0.6, 0.5: 0.8, 2.0: 0.7})
    test = _table({0.0: 0.6, 0.5: 0.55, 2.0: 0.9})
    gains = held_out_gains(selection, test)
    row = gains.iloc[0]
    assert row["best_beta"] == 0.5
    assert row["delta_pp"] == pytest.approx(-5.0)  # the chosen β hurts on the test images
    assert row["selection_delta_pp"] == pytest.approx(20.0)
    assert performance_gains(test).iloc[0]["delta_pp"] == pytest.approx(30.0)  # the biased max


def test_no_test_image_takes_part_in_choosing_beta():
    selection = _table({0.0: 0.6, 0.5: 0.8, 2.0: 0.7})
    for test_perf in ({0.0: 0.5, 0.5: 0.6, 2.0: 0.99}, {0.0: 0.9, 0.5: 0.1, 2.0: 0.2}):
        assert held_out_gains(selection, _table(test_perf)).iloc[0]["best_beta"] == 0.5


def test_held_out_gain_names_the_group_without_its_chosen_beta():
    with pytest.raises(AnalysisError, match=r"category='a'.*chosen beta=0.5"):
        held_out_gains(_table({0.0: 0.6, 0.5: 0.8}), _table({0.0: 0.6, 2.0: 0.9}))


# --- the selection split on a tiny network -------------------------------------------------


def test_selection_sets_come_from_training_images_and_differ_from_test_sets():
    train = make_image_set(n_per_category=10, split="train")
    test = make_image_set(n_per_category=10, split="test")
    config = SweepConfig(image_types=("merged",), n_pos=4, n_neg=4)
    selection = build_selection_sets(train, ["b"], config)[("merged", "b")]
    assert selection.split == "train"
    with pytest.raises(DataError, match="training split"):
        build_selection_sets(test, ["b"], config)
    with pytest.raises(DataError, match="must not be built from training images"):
        build_test_sets(train, ["b"], config)
    other = build_test_sets(replace(train, split="test"), ["b"], config)
    assert selection.seed != other[("merged", "b")].seed


def test_test_sweep_evaluates_only_the_chosen_betas(tiny_network, tiny_detectors, values):
    train = make_image_set(n_per_category=10, split="train")
    test = make_image_set(n_per_category=10, split="test")
    config = SweepConfig(image_types=("merged",), betas=(0.0, 0.5, 2.0), n_pos=6, n_neg=6,
                         methods=("tuning", "gradient"))  # fmt: skip
    categories = list(tiny_detectors.categories)
    selection = run_sweep(tiny_network, tiny_detectors, values, None, config, progress=False,
                          tasks=build_selection_sets(train, categories, config))  # fmt: skip
    chosen = choose_betas(selection)
    table = run_sweep(tiny_network, tiny_detectors, values, test, config, progress=False,
                      chosen_betas=chosen)  # fmt: skip
    full = run_sweep(tiny_network, tiny_detectors, values, test, config, progress=False)
    keys = ["image_type", "category", "layer", "method"]
    for key, group in table.groupby(keys):
        assert set(group["beta"]) == {0.0, chosen[key]}
    # the rows at the chosen β are the full sweep's rows at that β
    merged = table.merge(full, on=[*keys, "beta"], suffixes=("", "_full"))
    assert len(merged) == len(table)
    assert np.allclose(merged["performance"], merged["performance_full"])
    gains = held_out_gains(selection, table)
    assert len(gains) == len(performance_gains(selection))
    bad = {**chosen, next(iter(chosen)): 0.7}
    with pytest.raises(Exception, match="not in the sweep's β grid"):
        run_sweep(tiny_network, tiny_detectors, values, test, config, progress=False,
                  chosen_betas=bad)  # fmt: skip


# --- findings and verdicts ----------------------------------------------------------------

LAYERS = ["conv1", "conv2", "conv3", "conv4"]


def _gains(effect, networks: int = 5, categories: int = 8, seed: int = 0) -> pd.DataFrame:
    """Synthetic held-out gains: ``effect(method, layer_index)`` gives the mean Δ (pp)."""
    rng = np.random.default_rng(seed)
    rows = []
    for network in range(networks):
        for c in range(categories):
            for method in ("gradient", "tuning", "shuffled-gradient"):
                for i, layer in enumerate([*LAYERS, "all"]):
                    delta = effect(method, i) + rng.normal(0, 0.5)
                    rows.append({"network": network, "task": "category", "image_type": "array",
                                 "category": f"c{c}", "layer": layer,
                                 "layer_number": 0 if layer == "all" else i + 1,
                                 "method": method, "delta_pp": delta,
                                 "selection_delta_pp": delta + 1.0,
                                 "delta_dprime": 0.1, "delta_criterion": -0.5,
                                 "best_beta": 0.5})  # fmt: skip
    return pd.DataFrame(rows)


def _paper_like(method: str, i: int) -> float:
    if method == "shuffled-gradient":
        return 0.0
    depth = min(i, 3)  # "all" (i = 4) is as good as the deepest layer
    return 5.0 * depth + (4.0 if method == "gradient" and i < 2 else 0.0) + 2.0


def test_verdicts_hold_on_data_shaped_like_the_paper():
    table = comparisons(_gains(_paper_like), n_boot=2000)
    found = verdicts(table).set_index("finding")["verdict"]
    assert found["1"] == "holds" and found["2"] == "holds" and found["3"] == "holds"
    assert found["4"] == "holds"  # |Δc| 0.5 > |Δd′| 0.1
    assert found["control"] == "holds"
    assert found["5"] == "not run" and found["6"] == "not run"
    assert list(verdicts(table)["finding"]) == list(CLAIMS)


def test_verdicts_do_not_hold_on_the_opposite_data():
    def opposite(method: str, i: int) -> float:
        if method == "shuffled-gradient":
            return 20.0
        depth = 3 - min(i, 3)
        return (
            5.0 * depth + (4.0 if method == "tuning" and i < 2 else 0.0) - (15.0 if i == 4 else 0.0)
        )

    table = verdicts(comparisons(_gains(opposite), n_boot=2000)).set_index("finding")
    found = table["verdict"]
    assert table.loc["1", "contradicting"] == 2  # tuning ahead at both early layers
    assert found["1"] == "does not hold"
    assert found["2"] == "does not hold"
    assert found["3"] == "does not hold"
    assert found["control"] == "does not hold"


def test_an_ssn_run_decides_finding_6_from_its_findings_1_and_2():
    paper = verdicts(with_reproduction(comparisons(_gains(_paper_like), n_boot=2000)))
    paper = paper.set_index("finding")
    assert paper.loc["6", "verdict"] == "holds"
    assert paper.loc["6", "supporting"] == "4 of 4"  # 2 early layers (1) + 2 methods (2)
    assert "finding 1: " in paper.loc["6", "evidence"]
    flat = verdicts(with_reproduction(comparisons(_gains(lambda m, i: 3.0, seed=4), n_boot=2000)))
    assert flat.set_index("finding").loc["6", "verdict"] == "does not hold"


def test_pure_noise_gives_no_supported_comparison():
    table = comparisons(_gains(lambda m, i: 3.0, seed=4), n_boot=2000)
    assert (table.loc[table["finding"].isin(["1", "2", "control"]), "outcome"] != "supports").all()
    found = verdicts(table).set_index("finding")
    assert found.loc["1", "verdict"] == "does not hold"  # not reproduced …
    assert found.loc["1", "contradicting"] == 0  # … and not contradicted either


def test_effects_and_method_tests_have_one_row_per_setting():
    gains = _gains(_paper_like)
    table = effects(gains, n_boot=500)
    assert len(table) == 3 * 5
    row = table[(table["method"] == "gradient") & (table["layer"] == "conv1")].iloc[0]
    assert row["ci_low_pp"] < row["mean_delta_pp"] < row["ci_high_pp"]
    assert row["n_networks"] == 5 and row["n_categories"] == 8
    tests = method_tests(gains, n_boot=500)
    assert list(tests["layer"]) == [*LAYERS, "all"]
    assert (tests.loc[tests["layer"].isin(["conv1", "conv2"]), "outcome"] == "supports").all()


# --- several networks: resuming and refusing ----------------------------------------------


def fake_replication(ran: list[int]):
    """A stand-in for :func:`run_replication` (no training): synthetic paper-like gains of
    one network, written as a finished run folder; records the seeds it ran."""

    def run(out_dir, config=SweepConfig(), settings=TrainSettings(), data_dir=None, progress=True):
        ran.append(settings.seed)
        gains = _gains(_paper_like, networks=1, seed=settings.seed).drop(columns="network")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        gains.to_csv(Path(out_dir) / "gains.csv", index=False)
        replication.write_run_config(out_dir, "replication",
                                     replication._settings(config, settings),
                                     model={"metrics": {"test_accuracy": 0.9}})  # fmt: skip
        return {"gains": gains, "metrics": {"test_accuracy": 0.9}, "verdicts": verdicts(
            comparisons(gains, n_boot=200))}  # fmt: skip

    return run


def test_replicate_resumes_finished_networks_and_refuses_other_settings(tmp_path, monkeypatch):
    ran: list[int] = []
    monkeypatch.setattr(replication, "run_replication", fake_replication(ran))
    result = replication.run_replicate(tmp_path, seeds=[0, 1, 2], progress=False)
    assert ran == [0, 1, 2]
    assert set(result["gains"]["network"]) == {0, 1, 2}
    assert (tmp_path / "findings.csv").exists() and (tmp_path / "effects.csv").exists()
    assert json.loads((tmp_path / "config.json").read_text())["settings"]["seeds"] == [0, 1, 2]

    (tmp_path / "network-1" / "config.json").unlink()  # network 1 was interrupted
    replication.run_replicate(tmp_path, seeds=[0, 1, 2], progress=False)
    assert ran == [0, 1, 2, 1]

    with pytest.raises(DataError, match=r"other settings \(sweep.n_pos: 75 there, 10 now"):
        replication.run_replicate(tmp_path, seeds=[0], config=SweepConfig(n_pos=10))
