"""The study's statistics on numbers with known answers: t interval, macro-F1, paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassF1Score
from torchmetrics.regression import SpearmanCorrCoef

from mtl_lightning import stats

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
    assert stats.macro_f1(labels, preds, 4) == pytest.approx(float(expected))
    assert stats.accuracy(labels, preds) == pytest.approx(float(np.mean(labels == preds)))


def test_bootstrap_replicates_are_the_metrics_of_resamples():
    """A replicate is the metric on one resample (drawn with replacement), the same for all runs."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=30)
    preds = {"a": rng.integers(0, 3, size=30), "b": labels.copy()}
    reps = stats.bootstrap_replicates(labels, preds, 3, samples=5, seed=7)
    draws = np.random.default_rng(7).integers(0, 30, size=(5, 30))  # the generator's own draws
    for row, sample in enumerate(draws):
        for name in preds:
            assert reps[name].values["acc"][row] == pytest.approx(
                stats.accuracy(labels[sample], preds[name][sample])
            )
            assert reps[name].values["f1"][row] == pytest.approx(
                stats.macro_f1(labels[sample], preds[name][sample], 3)
            )
    assert reps["b"].point == {"acc": 1.0, "f1": 1.0}
    assert np.all(reps["b"].values["acc"] == 1.0)


def _pair(labels, preds_a, preds_b, seed=0, samples=4000):
    reps = stats.bootstrap_replicates(labels, {"a": preds_a, "b": preds_b}, 2, samples, seed)
    return reps["a"], reps["b"]


def test_paired_delta_of_identical_runs_is_zero_and_within_noise():
    labels = np.arange(40) % 2
    preds = labels.copy()
    preds[:10] = 1 - preds[:10]
    delta = stats.paired_delta([_pair(labels, preds, preds)], "acc")
    assert delta["delta"] == 0 and delta["ci95"] == [0, 0] and delta["p"] == 1
    assert stats.within_noise(delta)


def test_paired_delta_interval_matches_the_normal_approximation():
    """Paired accuracy differences d in {-1, 0, 1}: the standard error is std(d) / sqrt(n)."""
    rng = np.random.default_rng(3)
    n = 2000
    labels = rng.integers(0, 2, size=n)
    correct_a = rng.random(n) < 0.80
    correct_b = rng.random(n) < 0.75
    preds_a = np.where(correct_a, labels, 1 - labels)
    preds_b = np.where(correct_b, labels, 1 - labels)
    delta = stats.paired_delta([_pair(labels, preds_a, preds_b)], "acc")
    d = correct_a.astype(float) - correct_b.astype(float)
    assert delta["delta"] == pytest.approx(d.mean())
    half = 1.96 * d.std() / math.sqrt(n)
    low, high = delta["ci95"]
    assert low == pytest.approx(d.mean() - half, abs=0.2 * half)
    assert high == pytest.approx(d.mean() + half, abs=0.2 * half)
    assert delta["p"] < 0.01 and not stats.within_noise(delta)


def test_paired_delta_pools_seeds_and_sees_balanced_differences_as_noise():
    labels = np.arange(100) % 2
    flipped = 1 - labels
    # Seed 1: a beats b on 10 examples; seed 2: b beats a on 10. The mean difference is 0.
    a1, b1 = labels.copy(), labels.copy()
    b1[:10] = flipped[:10]
    a2, b2 = labels.copy(), labels.copy()
    a2[:10] = flipped[:10]
    pairs = [_pair(labels, a1, b1, seed=1), _pair(labels, a2, b2, seed=2)]
    delta = stats.paired_delta(pairs, "acc")
    assert delta["per_seed"] == pytest.approx([0.1, -0.1])
    assert delta["delta"] == pytest.approx(0.0, abs=1e-12) and delta["n"] == 2
    assert delta["p"] > 0.5 and stats.within_noise(delta)
    # One seed alone: a clear gap (10 of 100 discordant, all one way).
    alone = stats.paired_delta(pairs[:1], "acc")
    assert alone["delta"] == pytest.approx(0.1) and alone["p"] < 0.01
    assert 0 < alone["ci95"][0] < 0.1 < alone["ci95"][1]


def test_spearman_and_pearson_known_answers():
    assert stats.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/120
    # Ties at their mean rank: x ranks 1, 2.5, 2.5, 4.
    assert stats.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert stats.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert stats.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert stats.spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # ranks, not values
    # As the metric training logs (torchmetrics), ties included.
    labels, preds = [0.2, 0.4, 0.4, 0.8, 1.0, 0.0], [0.1, 0.5, 0.3, 0.3, 0.9, 0.2]
    logged = SpearmanCorrCoef()(torch.tensor(preds), torch.tensor(labels))
    assert stats.spearman(labels, preds) == pytest.approx(float(logged), abs=1e-6)


def test_bootstrap_correlations_are_the_correlations_of_resamples():
    """Each replicate equals Spearman (ties, and the resample's own repeats, at their mean rank)
    and Pearson of the resample written out example by example."""
    rng = np.random.default_rng(2)
    labels = np.round(rng.uniform(0, 1, 25), 1)  # many ties
    preds = {"a": labels + rng.normal(0, 0.3, 25), "b": np.round(labels * 3)}
    reps = stats.bootstrap_correlations(labels, preds, samples=6, seed=5)
    draws = np.random.default_rng(5).integers(0, 25, size=(6, 25))
    for row, sample in enumerate(draws):
        for name in preds:
            assert reps[name].values["spearman"][row] == pytest.approx(
                stats.spearman(labels[sample], preds[name][sample]), abs=1e-12
            )
            assert reps[name].values["pearson"][row] == pytest.approx(
                stats.pearson(labels[sample], preds[name][sample]), abs=1e-12
            )
    assert reps["a"].point["spearman"] == pytest.approx(stats.spearman(labels, preds["a"]))
