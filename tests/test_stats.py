"""The study's statistics on known answers: Student's t, macro-F1, the bootstraps, Holm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassF1Score
from torchmetrics.regression import SpearmanCorrCoef

from mtl_lightning.study import stats
from mtl_lightning.study.stats import Replicates
from mtl_lightning.tasks.classification import Classification
from mtl_lightning.tasks.similarity import Similarity

SCORES = Similarity("sts")  # Spearman and Pearson


def classes(n: int) -> Classification:
    return Classification("task", [str(i) for i in range(n)])  # accuracy and macro-F1


def spearman(labels, preds) -> float:
    return stats.score(SCORES, labels, preds)["spearman"]


def pearson(labels, preds) -> float:
    return stats.score(SCORES, labels, preds)["pearson"]


# Published 97.5% quantiles of Student's t (any t table).
T_TABLE = {1: 12.7062, 2: 4.3027, 4: 2.7764, 9: 2.2622, 29: 2.0452, 40: 2.0211, 60: 2.0003}


@pytest.mark.parametrize(("df", "quantile"), sorted(T_TABLE.items()))
def test_t_quantile_matches_the_table(df, quantile):
    assert stats.t_quantile_975(df) == pytest.approx(quantile, abs=1e-4)


def test_t_quantile_beyond_the_table_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (31, 35, 50, 100, 1000):
        assert stats.t_quantile_975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-5)


def test_over_seeds_mean_std_and_t_interval():
    two = stats.over_seeds([0.8, 0.9])
    assert two["mean"] == pytest.approx(0.85) and two["n"] == 2
    assert two["std"] == pytest.approx(math.sqrt(0.005))  # sample std, n - 1
    half = 12.7062 * math.sqrt(0.005) / math.sqrt(2)
    assert two["ci95"] == pytest.approx([0.85 - half, 0.85 + half], abs=1e-4)
    three = stats.over_seeds([1.0, 2.0, 3.0])
    assert three["std"] == pytest.approx(1.0)
    half = 4.3027 / math.sqrt(3)
    assert three["ci95"] == pytest.approx([2 - half, 2 + half], abs=1e-4)
    one = stats.over_seeds([0.7])
    assert one == {"mean": 0.7, "std": None, "ci95": None, "n": 1, "values": [0.7]}


def test_macro_f1_is_torchmetrics_macro_f1():
    """Including a class that is neither true nor predicted (torchmetrics leaves it out)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=50)  # class 3 of 4 never occurs
    preds = np.where(rng.random(50) < 0.6, labels, rng.integers(0, 3, size=50))
    expected = MulticlassF1Score(4, average="macro")(torch.tensor(preds), torch.tensor(labels))
    found = stats.score(classes(4), labels, preds)
    assert found["f1"] == pytest.approx(float(expected))
    assert found["acc"] == pytest.approx(float(np.mean(labels == preds)))


def test_bootstrap_of_classes_is_the_metrics_of_resamples():
    """A replicate is the metric on one resample (drawn with replacement), the same for all runs."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=30)
    preds = {"a": rng.integers(0, 3, size=30), "b": labels.copy()}
    reps = stats.bootstrap(classes(3), labels, preds, samples=5, seed=7)
    draws = np.random.default_rng(7).integers(0, 30, size=(5, 30))  # the generator's own draws
    for row, sample in enumerate(draws):
        for name in preds:
            found = stats.score(classes(3), labels[sample], preds[name][sample])
            assert reps[name].values["acc"][row] == pytest.approx(found["acc"])
            assert reps[name].values["f1"][row] == pytest.approx(found["f1"])
    assert reps["b"].point == {"acc": 1.0, "f1": 1.0}
    assert np.all(reps["b"].values["acc"] == 1.0)


def _pair(labels, preds_a, preds_b, seed=0, samples=4000):
    reps = stats.bootstrap(classes(2), labels, {"a": preds_a, "b": preds_b}, samples, seed)
    return reps["a"], reps["b"]


def test_fixed_models_bootstrap_of_identical_runs_is_zero():
    labels = np.arange(40) % 2
    preds = labels.copy()
    preds[:10] = 1 - preds[:10]
    delta = stats.fixed_models_bootstrap([_pair(labels, preds, preds)], "acc")
    assert delta["delta"] == 0 and delta["ci95"] == [0, 0] and delta["p"] == 1


def test_fixed_models_bootstrap_interval_matches_the_normal_approximation():
    """Paired accuracy differences d in {-1, 0, 1}: the standard error is std(d) / sqrt(n)."""
    rng = np.random.default_rng(3)
    n = 2000
    labels = rng.integers(0, 2, size=n)
    correct_a = rng.random(n) < 0.80
    correct_b = rng.random(n) < 0.75
    preds_a = np.where(correct_a, labels, 1 - labels)
    preds_b = np.where(correct_b, labels, 1 - labels)
    delta = stats.fixed_models_bootstrap([_pair(labels, preds_a, preds_b)], "acc")
    d = correct_a.astype(float) - correct_b.astype(float)
    assert delta["delta"] == pytest.approx(d.mean())
    half = 1.96 * d.std() / math.sqrt(n)
    low, high = delta["ci95"]
    assert low == pytest.approx(d.mean() - half, abs=0.2 * half)
    assert high == pytest.approx(d.mean() + half, abs=0.2 * half)
    assert delta["p"] < 0.01 and low > 0


def test_fixed_models_bootstrap_pools_seeds_and_sees_balanced_differences_as_noise():
    labels = np.arange(100) % 2
    flipped = 1 - labels
    # Seed 1: a beats b on 10 examples; seed 2: b beats a on 10. The mean difference is 0.
    a1, b1 = labels.copy(), labels.copy()
    b1[:10] = flipped[:10]
    a2, b2 = labels.copy(), labels.copy()
    a2[:10] = flipped[:10]
    pairs = [_pair(labels, a1, b1, seed=1), _pair(labels, a2, b2, seed=2)]
    delta = stats.fixed_models_bootstrap(pairs, "acc")
    assert delta["per_seed"] == pytest.approx([0.1, -0.1])
    assert delta["delta"] == pytest.approx(0.0, abs=1e-12) and delta["n"] == 2
    assert delta["p"] > 0.5 and delta["ci95"][0] < 0 < delta["ci95"][1]
    # One seed alone: a clear gap (10 of 100 discordant, all one way).
    alone = stats.fixed_models_bootstrap(pairs[:1], "acc")
    assert alone["delta"] == pytest.approx(0.1) and alone["p"] < 0.01
    assert 0 < alone["ci95"][0] < 0.1 < alone["ci95"][1]


def test_spearman_and_pearson_known_answers():
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/120
    # Ties at their mean rank: x ranks 1, 2.5, 2.5, 4.
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # ranks, not values
    # As the metric training logs (torchmetrics), ties included.
    labels, preds = [0.2, 0.4, 0.4, 0.8, 1.0, 0.0], [0.1, 0.5, 0.3, 0.3, 0.9, 0.2]
    logged = SpearmanCorrCoef()(torch.tensor(preds), torch.tensor(labels))
    assert spearman(labels, preds) == pytest.approx(float(logged), abs=1e-6)


def test_bootstrap_of_scores_is_the_correlations_of_resamples():
    """Each replicate equals Spearman (ties, and the resample's own repeats, at their mean rank)
    and Pearson of the resample written out example by example."""
    rng = np.random.default_rng(2)
    labels = np.round(rng.uniform(0, 1, 25), 1)  # many ties
    preds = {"a": labels + rng.normal(0, 0.3, 25), "b": np.round(labels * 3)}
    reps = stats.bootstrap(SCORES, labels, preds, samples=6, seed=5)
    draws = np.random.default_rng(5).integers(0, 25, size=(6, 25))
    for row, sample in enumerate(draws):
        for name in preds:
            assert reps[name].values["spearman"][row] == pytest.approx(
                spearman(labels[sample], preds[name][sample]), abs=1e-12
            )
            assert reps[name].values["pearson"][row] == pytest.approx(
                pearson(labels[sample], preds[name][sample]), abs=1e-12
            )
    assert reps["a"].point["spearman"] == pytest.approx(spearman(labels, preds["a"]))


def test_t_cdf_matches_closed_forms_and_the_table():
    # One degree of freedom is the Cauchy distribution, two have F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
    for t in (-30.0, -2.0, -1e-9, 0.0, 0.3, 1.0, 12.706204736):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-14)
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-14)
    for df, quantile in T_TABLE.items():
        assert stats.t_cdf(quantile, df) == pytest.approx(0.975, abs=2e-6)  # 4-decimal table
        assert stats.t_cdf(-quantile, df) == pytest.approx(0.025, abs=2e-6)
    assert stats.t_cdf(math.inf, 3) == 1 and stats.t_cdf(-math.inf, 3) == 0


def test_incomplete_beta_known_values():
    assert stats.regularized_incomplete_beta(1, 1, 0.3) == pytest.approx(0.3)  # uniform
    assert stats.regularized_incomplete_beta(2, 3, 0.4) == pytest.approx(0.5248)  # 1 - sum
    arcsine = 2 / math.pi * math.asin(math.sqrt(0.01))
    assert stats.regularized_incomplete_beta(0.5, 0.5, 0.01) == pytest.approx(arcsine)
    with pytest.raises(ValueError, match="needs 0 <= x <= 1"):
        stats.regularized_incomplete_beta(1, 1, 1.5)


def test_t_quantile_inverts_the_cdf():
    for df in (1, 2, 4, 9, 29):
        assert stats.t_quantile(0.975, df) == pytest.approx(stats.t_quantile_975(df), abs=1e-8)
    # Published 80% quantiles.
    assert stats.t_quantile(0.8, 2) == pytest.approx(1.060660, abs=1e-6)
    assert stats.t_quantile(0.8, 10) == pytest.approx(0.879058, abs=1e-6)
    assert stats.t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)


def test_seed_t_test_known_answers():
    # Three seeds, all above zero: mean 0.2, std 0.1, t = 0.2 / (0.1 / sqrt 3) = 3.4641 on 2 df.
    agree = stats.seed_t_test([0.1, 0.2, 0.3])
    t = 0.2 / (0.1 / math.sqrt(3))
    assert agree["t"] == pytest.approx(t) and agree["df"] == 2
    assert agree["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t))  # 2 (1 - F(t)), 2 df
    half = 4.302652730 * 0.1 / math.sqrt(3)
    assert agree["ci95"] == pytest.approx([0.2 - half, 0.2 + half])
    assert agree["p"] > 0.05  # three seeds, all one way, and still not significant
    # Seeds that disagree in sign: mean 1/30, std 0.11547, t = 0.5: p = 1 - 0.5 / 1.5 = 2/3.
    disagree = stats.seed_t_test([0.1, -0.1, 0.1])
    assert disagree["t"] == pytest.approx(0.5) and disagree["p"] == pytest.approx(2 / 3)
    assert disagree["ci95"][0] < 0 < disagree["ci95"][1]
    assert stats.seed_t_test([0.05]) is None  # one seed: no spread to test against
    same = stats.seed_t_test([0.02, 0.02])
    assert same["p"] == 0 and same["ci95"] == pytest.approx([0.02, 0.02])
    assert stats.seed_t_test([0.0, 0.0])["p"] == 1


def _fixed(value: float, noise: np.ndarray | None = None, samples: int = 4000) -> Replicates:
    """A run whose metric is `value`, and on each resample `value + noise` (none: `value`)."""
    values = np.full(samples, value) if noise is None else value + noise
    return stats.Replicates(values={"acc": values}, point={"acc": value})


def _seed_pairs(differences, noise=None):
    zero = _fixed(0.0)
    return [
        (_fixed(d, noise[i] if noise is not None else None), zero)
        for i, d in enumerate(differences)
    ]


def test_two_level_bootstrap_without_example_noise_is_the_bootstrap_of_seeds():
    """No example noise: each replicate is the mean of 3 seeds drawn with replacement. From
    [0.1, 0.2, 0.3] the mean is 0.1 with probability 1/27 > 2.5%: the interval is [0.1, 0.3],
    and never below 0. From [0.1, -0.1, 0.1] it is <= 0 when two or three draws are -0.1:
    (3 * 2 + 1) / 27, so p = 2 * 7/27 = 0.519."""
    agree = stats.two_level_bootstrap(_seed_pairs([0.1, 0.2, 0.3]), "acc", [1, 2, 3], 20_000)
    assert agree["ci95"] == pytest.approx([0.1, 0.3]) and agree["p"] < 0.001
    disagree = stats.two_level_bootstrap(_seed_pairs([0.1, -0.1, 0.1]), "acc", [1, 2, 3], 20_000)
    assert disagree["p"] == pytest.approx(14 / 27, abs=0.02)
    assert disagree["ci95"] == pytest.approx([-0.1, 0.1])


def test_two_level_bootstrap_shares_the_resample_of_a_shared_test_split():
    """Two seeds, equal differences, example noise of std 0.01 that is the same on both (one
    test split, paired resamples): the mean over seeds keeps all of it, half-width 1.96 * 0.01.
    Taken as two splits, two distinct seeds drawn (half the draws) take a column each and the
    noise shrinks by sqrt 2; one seed drawn twice keeps it whole: a half-and-half mixture of
    N(0, s^2) and N(0, s^2 / 2), whose 97.5% quantile is 1.7218 s (solved numerically)."""
    noise = np.random.default_rng(0).normal(0, 0.01, 4000)
    pairs = _seed_pairs([0.05, 0.05], [noise, noise])
    shared = stats.two_level_bootstrap(pairs, "acc", ["split", "split"], 20_000, seed=1)
    apart = stats.two_level_bootstrap(pairs, "acc", ["split 1", "split 2"], 20_000, seed=1)
    width = 2 * 1.96 * 0.01
    assert shared["ci95"][1] - shared["ci95"][0] == pytest.approx(width, rel=0.04)
    assert apart["ci95"][1] - apart["ci95"][0] == pytest.approx(2 * 1.7218 * 0.01, rel=0.04)
    with pytest.raises(ValueError, match="2 pairs need 2 test splits, not 1"):
        stats.two_level_bootstrap(pairs, "acc", ["split"])


def test_compare_over_seeds_takes_the_larger_p_and_both_intervals():
    pairs = _seed_pairs([0.1, 0.2, 0.3])
    found = stats.compare_over_seeds(pairs, "acc", [1, 2, 3])
    t_test = stats.seed_t_test([0.1, 0.2, 0.3])
    assert found["p"] == pytest.approx(t_test["p"])  # the bootstrap's p is tiny
    assert found["ci95"] == pytest.approx(t_test["ci95"])  # and its interval [0.1, 0.3] inside
    assert found["within_noise"] and found["fixed_models"]["p"] < 0.001
    assert found["seeds_for_power"] == 5 and not found["shared_test_split"]
    assert found["power_spread"] == pytest.approx(0.1)  # no example noise: the seeds' std
    assert found["seeds_for_power_holm"] == found["seeds_for_power"]  # a family of one
    # At another alpha both intervals are at that level: at 0.5 the bootstrap's (about [0.167,
    # 0.233]) sits inside the t-test's 0.2 +- 0.8165 * 0.1 / sqrt(3), which is the verdict's.
    half = stats.compare_over_seeds(pairs, "acc", [1, 2, 3], alpha=0.5)
    assert half["ci95"] == pytest.approx(stats.seed_t_test([0.1, 0.2, 0.3], 0.5)["ci95"])
    assert half["ci95"] == pytest.approx([0.2 - 0.04714, 0.2 + 0.04714], abs=1e-4)
    alone = stats.compare_over_seeds(pairs[:1], "acc", [1])
    assert alone["p"] is None and alone["within_noise"] is None


def test_seeds_for_power_hand_worked():
    """[0.1, 0.2, 0.3]: std / mean = 0.5; n = 4 needs (3.182 + 0.978) * 0.5 = 2.08, squared
    4.33 > 4; n = 5: (2.776 + 0.941) * 0.5 = 1.86, squared 3.45 <= 5."""
    assert stats.seeds_for_power([0.1, 0.2, 0.3]) == 5
    assert stats.seeds_for_power([0.1, -0.1, 0.1]) == 97  # std / mean = 3.46: n ~ 8 * 12
    assert stats.seeds_for_power([0.1]) is None and stats.seeds_for_power([0.1, -0.1]) is None
    # At alpha 0.05 / 36 (Holm's strictest step over 36 comparisons) the same gap needs more.
    assert stats.seeds_for_power([0.1, 0.2, 0.3], alpha=0.05 / 36) > 5
    assert stats.seeds_for_power([0.1, 0.2, 0.3], spread=0.2) > 5  # twice the spread: more


def test_power_counts_the_test_examples_noise_that_close_seeds_hide():
    """Three seeds one point apart (-0.013, -0.010, -0.007: std 0.003) on test splits whose
    paired example noise has std 0.008 each: the t-test alone would call 3 seeds enough, but
    each seed's difference carries 0.008 of example noise, so the spread assumed per seed is
    0.008, and the count rises to what that noise needs: n >= ((t975 + t80, n - 1 df) * 0.8)^2,
    8 (at n = 7: (2.447 + 0.906) * 0.8 = 2.68, squared 7.19 > 7; at 8: 2.61, squared 6.81)."""
    rng = np.random.default_rng(0)
    noise = [rng.normal(0, 0.008, size=4000) for _ in range(3)]
    found = stats.compare_over_seeds(_seed_pairs([-0.013, -0.010, -0.007], noise), "acc", [1, 2, 3])
    assert stats.seeds_for_power([-0.013, -0.010, -0.007]) == 3
    assert found["power_spread"] == pytest.approx(0.008, rel=0.03)
    assert stats.seeds_for_power([-0.013, -0.010, -0.007], spread=0.008) == 8
    assert 7 <= found["seeds_for_power"] <= 9
    assert found["p"] > 0.05  # the two-level bootstrap sees the example noise too


def test_holm_against_a_hand_worked_table():
    """p: 0.01, 0.04, 0.03, 0.005, none (m = 4). Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03,
    0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> 0.06 (no smaller than the one before)."""
    assert stats.holm([0.01, 0.04, 0.03, 0.005, None]) == pytest.approx(
        [0.03, 0.06, 0.06, 0.02, None]
    )
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([0.02]) == [0.02] and stats.holm([]) == []


def test_delta_m_on_fixture_numbers_with_a_lower_is_better_metric():
    # (0.80 - 0.75) / 0.75 = +6.667%, (0.60 - 0.50) / 0.50 = +20%, and RMSE, better when lower:
    # -(2.0 - 2.5) / 2.5 = +20%; the mean: 46.667 / 3 = +15.556%.
    model = {("a", "acc"): 0.80, ("a", "f1"): 0.60, ("b", "rmse"): 2.0}
    baseline = {("a", "acc"): 0.75, ("a", "f1"): 0.50, ("b", "rmse"): 2.5}
    assert stats.delta_m(model, baseline, lower_is_better=["rmse"]) == pytest.approx(15.5556, 1e-4)
    # Read as higher-is-better, RMSE's term flips to -20%: (6.667 + 20 - 20) / 3.
    assert stats.delta_m(model, baseline) == pytest.approx(2.2222, abs=1e-4)
    # Over seeds: seed 2 equals its baselines (0%); seed 3 has no baseline and does not count.
    numbers = stats.delta_m_over_seeds(
        {1: model, 2: dict(baseline), 3: model}, {1: baseline, 2: baseline}, ["rmse"]
    )
    std = 15.5556 / math.sqrt(2)
    half = 12.7062 * std / math.sqrt(2)
    assert numbers["seeds"] == [1, 2] and numbers["n"] == 2
    assert numbers["values"] == pytest.approx([15.5556, 0.0], abs=1e-4)
    assert numbers["mean"] == pytest.approx(7.7778, abs=1e-4)
    assert numbers["ci95"] == pytest.approx([7.7778 - half, 7.7778 + half], abs=1e-3)
