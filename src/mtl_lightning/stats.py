"""The study's statistics: spread over seeds, and paired differences on the same test examples.

- `over_seeds(values)`: mean, sample std and a Student-t 95% interval of one number per seed.
- `bootstrap_replicates` / `bootstrap_correlations`: a paired bootstrap of test accuracy and
  macro-F1 (classes), or of Spearman and Pearson (similarity scores). Every run scored on one test
  split (same task, seed and training-set size: the same examples) is scored on the same resamples
  of its examples, so the difference of two runs' replicates is paired.
- `paired_delta(...)`: the mean over seeds of `metric(a) - metric(b)`, with the percentile 95%
  interval and the two-sided p-value of its bootstrap, resampled within each seed (stratified by
  seed: each seed has its own test split) and pooled over seeds.

numpy only: scipy is not a dependency of the package.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Student t, 97.5% quantile (two-sided 95%), by degrees of freedom 1..30.
_T975 = (
    12.706204736,
    4.302652730,
    3.182446305,
    2.776445105,
    2.570581836,
    2.446911851,
    2.364624252,
    2.306004135,
    2.262157163,
    2.228138852,
    2.200985160,
    2.178812830,
    2.160368656,
    2.144786688,
    2.131449546,
    2.119905299,
    2.109815578,
    2.100922040,
    2.093024054,
    2.085963447,
    2.079613845,
    2.073873068,
    2.068657610,
    2.063898562,
    2.059538553,
    2.055529439,
    2.051830516,
    2.048407142,
    2.045229642,
    2.042272456,
)
_Z975 = 1.959963985
BOOTSTRAP_SAMPLES = 10_000
TEST_NAME = "paired bootstrap over test examples, resampled within each seed and pooled over seeds"


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (exact to 1e-9 up to 30,
    then the Cornish-Fisher expansion around the normal, within 1e-5)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def over_seeds(values: Sequence[float]) -> dict:
    """`mean`, `std` (sample, n - 1), `ci95` (t interval of the mean) and `n`; with one value
    `std` and `ci95` are None (no spread to estimate)."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    if n == 0:
        return {"mean": None, "std": None, "ci95": None, "n": 0, "values": []}
    mean = float(array.mean())
    if n == 1:
        return {"mean": mean, "std": None, "ci95": None, "n": 1, "values": array.tolist()}
    std = float(array.std(ddof=1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return {
        "mean": mean,
        "std": std,
        "ci95": [mean - half, mean + half],
        "n": n,
        "values": array.tolist(),
    }


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(preds)))


def _macro_f1_from_counts(tp: np.ndarray, predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Macro F1 per row of per-class counts, as torchmetrics' MulticlassF1Score(average="macro"):
    F1_c = 2 tp / (predicted + true); a class never true nor predicted leaves the average."""
    denominator = predicted + true
    present = denominator > 0
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp, dtype=float), where=present)
    return f1.sum(-1) / np.maximum(present.sum(-1), 1)


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """Macro F1 over `num_classes` classes (see `_macro_f1_from_counts`)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    classes = np.arange(num_classes)
    true = (labels[:, None] == classes).astype(float)
    predicted = (preds[:, None] == classes).astype(float)
    tp = (true * predicted).sum(0)
    return float(_macro_f1_from_counts(tp, predicted.sum(0), true.sum(0)))


@dataclass
class Replicates:
    """One run's metrics (`values[name]`) on each bootstrap resample of one test split, and on
    the split itself (`point[name]`)."""

    values: dict[str, np.ndarray]
    point: dict[str, float]


def _resample_weights(rng: np.random.Generator, n: int, samples: int, chunk: int):
    """How often each of `n` examples is drawn in each resample (with replacement): `(rows, n)`
    count matrices, `samples` rows in all, `chunk` at a time."""
    for start in range(0, samples, chunk):
        rows = min(chunk, samples - start)
        draws = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
        yield np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n).astype(float)


def bootstrap_replicates(
    labels: np.ndarray,
    preds_by_run: Mapping[str, np.ndarray],
    num_classes: int,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    chunk: int = 1000,
) -> dict[str, Replicates]:
    """Accuracy and macro-F1 of every run on the same `samples` resamples (with replacement) of
    one test split's examples. `preds_by_run[name][i]` is run `name`'s prediction for example `i`
    with true label `labels[i]`: the same example order for every run."""
    labels = np.asarray(labels)
    n = len(labels)
    classes = np.arange(num_classes)
    true = (labels[:, None] == classes).astype(float)
    per_run = {}
    for name, preds in _checked(labels, preds_by_run).items():
        predicted = (preds[:, None] == classes).astype(float)
        per_run[name] = (preds == labels).astype(float), predicted, true * predicted
    acc = {name: [] for name in per_run}
    f1 = {name: [] for name in per_run}
    for weights in _resample_weights(np.random.default_rng(seed), n, samples, chunk):
        true_counts = weights @ true
        for name, (correct, predicted, hits) in per_run.items():
            acc[name].append(weights @ correct / n)
            f1[name].append(_macro_f1_from_counts(weights @ hits, weights @ predicted, true_counts))
    return {
        name: Replicates(
            values={"acc": np.concatenate(acc[name]), "f1": np.concatenate(f1[name])},
            point={
                "acc": accuracy(labels, preds_by_run[name]),
                "f1": macro_f1(labels, preds_by_run[name], num_classes),
            },
        )
        for name in per_run
    }


def _checked(labels: np.ndarray, preds_by_run: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    found = {name: np.asarray(preds) for name, preds in preds_by_run.items()}
    for name, preds in found.items():
        if preds.shape != labels.shape:
            raise ValueError(f"run {name} has {len(preds)} predictions for {len(labels)} examples")
    return found


def _weighted_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each example's average rank (from 1) in each resample, the resample being `weights[r, i]`
    copies of example `i`: ties, within the data or between the copies, share their mean rank.
    So the Pearson correlation of these ranks, weighted alike, is the resample's Spearman."""
    order = np.argsort(values, kind="stable")
    _, start, counts = np.unique(values[order], return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(start)), counts)  # tie group of each sorted position
    cumulative = np.cumsum(weights[:, order], axis=1)
    end = cumulative[:, start + counts - 1]  # weight up to and including each tie group
    below = np.concatenate([np.zeros((len(weights), 1)), end[:, :-1]], axis=1)  # weight before
    total = end - below
    ranks = np.empty_like(weights)
    ranks[:, order] = below[:, group] + (total[:, group] + 1) / 2
    return ranks


def _weighted_pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pearson's r of each resample (row of `weights`); `x`, `y` per example or per resample."""
    total = weights.sum(1, keepdims=True)
    dx = x - (weights * x).sum(1, keepdims=True) / total
    dy = y - (weights * y).sum(1, keepdims=True) / total
    covariance = (weights * dx * dy).sum(1)
    spread = np.sqrt((weights * dx**2).sum(1) * (weights * dy**2).sum(1))
    return np.divide(covariance, spread, out=np.zeros_like(covariance), where=spread > 0)


def pearson(labels: np.ndarray, preds: np.ndarray) -> float:
    ones = np.ones((1, len(labels)))
    return float(_weighted_pearson(np.asarray(labels, float), np.asarray(preds, float), ones)[0])


def spearman(labels: np.ndarray, preds: np.ndarray) -> float:
    """Spearman's rho with ties at their mean rank (as scipy.stats.spearmanr)."""
    ones = np.ones((1, len(labels)))
    ranks = [_weighted_ranks(np.asarray(v, float), ones) for v in (labels, preds)]
    return float(_weighted_pearson(*ranks, ones)[0])


def bootstrap_correlations(
    labels: np.ndarray,
    preds_by_run: Mapping[str, np.ndarray],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    chunk: int = 500,
) -> dict[str, Replicates]:
    """Spearman and Pearson correlation of every run's scores with the true scores `labels`, on
    the same `samples` resamples of one test split's examples (as `bootstrap_replicates`)."""
    labels = np.asarray(labels, dtype=float)
    n = len(labels)
    per_run = {name: preds.astype(float) for name, preds in _checked(labels, preds_by_run).items()}
    found = {name: {"spearman": [], "pearson": []} for name in per_run}
    for weights in _resample_weights(np.random.default_rng(seed), n, samples, chunk):
        label_ranks = _weighted_ranks(labels, weights)
        for name, preds in per_run.items():
            found[name]["pearson"].append(_weighted_pearson(labels, preds, weights))
            ranks = _weighted_ranks(preds, weights)
            found[name]["spearman"].append(_weighted_pearson(label_ranks, ranks, weights))
    return {
        name: Replicates(
            values={metric: np.concatenate(rows) for metric, rows in found[name].items()},
            point={"spearman": spearman(labels, preds), "pearson": pearson(labels, preds)},
        )
        for name, preds in per_run.items()
    }


def paired_delta(
    pairs: Sequence[tuple[Replicates, Replicates]], metric: str, alpha: float = 0.05
) -> dict:
    """`a - b` for `(a, b)` pairs, one per seed (each pair scored on the same resamples).

    `delta`: the mean over seeds of the observed differences; `ci95`: the percentile interval of
    the mean over seeds of the replicate differences; `p`: two-sided bootstrap p-value of "no
    difference", 2 * min(share of replicates <= 0, share >= 0), each counted with the +1 of
    Davison & Hinkley so it is never 0; `per_seed`: the observed differences.
    """
    if not pairs:
        raise ValueError("paired_delta needs at least one (a, b) pair")
    per_seed = [a.point[metric] - b.point[metric] for a, b in pairs]
    replicates = np.mean([a.values[metric] - b.values[metric] for a, b in pairs], axis=0)
    count = len(replicates)
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    below = (np.sum(replicates <= 0) + 1) / (count + 1)
    above = (np.sum(replicates >= 0) + 1) / (count + 1)
    return {
        "delta": float(np.mean(per_seed)),
        "ci95": [float(low), float(high)],
        "p": float(min(1.0, 2 * min(below, above))),
        "n": len(pairs),
        "per_seed": per_seed,
    }


def within_noise(delta: Mapping, alpha: float = 0.05) -> bool:
    """True when the difference is not significant at `alpha` (its 95% interval holds 0)."""
    low, high = delta["ci95"]
    return delta["p"] >= alpha or low <= 0 <= high
