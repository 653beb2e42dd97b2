"""The study's statistics: spread over seeds, and paired differences on the same test examples.

- `over_seeds(values)`: mean, sample std and a Student-t 95% interval of one number per seed.
- `bootstrap(task_type, ...)`: a paired bootstrap of a task type's metrics (its
  `resampled_metrics`: accuracy and macro-F1 of classes, Spearman and Pearson of scores, ...).
  Every run scored on one test split (same task, seed and training-set size: the same examples)
  is scored on the same resamples of its examples, so the difference of two runs' replicates is
  paired.
- `compare_over_seeds(...)`: one difference `metric(a) - metric(b)`, a mean over seeds, tested
  twice over. Does the scenario differ (training's seed-to-seed variance included)? A paired
  t-test over the per-seed differences and a two-level bootstrap (seeds, then the test examples
  within them); the verdict takes the larger p of the two. Do these trained models differ on this
  test set? `fixed_models_bootstrap`: the test examples resampled, the models held fixed.
- `holm(p_values)`: Holm's step-down adjustment over a family of comparisons.
- `expected_max(scores, n)`: Dodge et al. 2019's expected validation performance, the expected
  best of `n` trials drawn from the observed ones, with its spread.
- `t_cdf`, `t_quantile`: Student's t, through the regularized incomplete beta function.

numpy only: scipy is not a dependency of the package.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

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
ALPHA = 0.05
POWER = 0.8  # the power `seeds_for_power` asks for
TEST_NAME = (
    "seed level: the larger p of a paired t-test over seeds and a two-level bootstrap (seeds, "
    "then test examples; a test split the seeds share, one resample), Holm-adjusted over the "
    "report's family of comparisons"
)
FIXED_MODELS_TEST_NAME = (
    "fixed models: paired bootstrap over test examples with the trained models held fixed, "
    "pooled over seeds (do these models differ on this test set, not does the scenario differ)"
)


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


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), by the modified Lentz method (Numerical Recipes'
    betacf): converges fast for x < (a + 1) / (a + b + 2)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return fraction


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the CDF at `x` of a Beta(a, b) variable, for a, b > 0 and 0 <= x <= 1."""
    if not 0 <= x <= 1:
        raise ValueError(f"the incomplete beta function needs 0 <= x <= 1, not {x}")
    if x in (0, 1):
        return float(x)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1) / (a + b + 2):
        return front * _beta_continued_fraction(a, b, x) / a
    # The symmetry I_x(a, b) = 1 - I_{1-x}(b, a), where the fraction converges.
    return 1 - front * _beta_continued_fraction(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom:
    P(|T| > |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, not {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    if t * t < df:  # near 0, df / (df + t^2) rounds to 1: use I_x(a, b) = 1 - I_{1-x}(b, a)
        tail = (1 - regularized_incomplete_beta(0.5, df / 2, t * t / (df + t * t))) / 2
    else:
        tail = regularized_incomplete_beta(df / 2, 0.5, df / (df + t * t)) / 2
    return 1 - tail if t > 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The `q` quantile of Student's t: `t_cdf` inverted by bisection (to 1e-12)."""
    if not 0 < q < 1:
        raise ValueError(f"a quantile needs 0 < q < 1, not {q}")
    low, high = -1.0, 1.0
    while t_cdf(low, df) > q:
        low *= 2
    while t_cdf(high, df) < q:
        high *= 2
    while high - low > 1e-12 * max(1.0, abs(high)):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < q else (low, middle)
    return (low + high) / 2


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


class ScoresResamples(Protocol):
    """What the bootstrap asks of a task type (`TaskType.resampled_metrics`)."""

    def resampled_metrics(
        self, labels: np.ndarray, preds_by_run: Mapping[str, np.ndarray], weights: np.ndarray
    ) -> dict[str, dict[str, np.ndarray]]: ...


def score(
    task_type: ScoresResamples, labels: Sequence[float], preds: Sequence[float]
) -> dict[str, float]:
    """The task type's report metrics of one run's predictions on the whole test split."""
    labels = np.asarray(labels)
    ones = np.ones((1, len(labels)))
    found = task_type.resampled_metrics(labels, {"run": np.asarray(preds)}, ones)["run"]
    return {metric: float(values[0]) for metric, values in found.items()}


def bootstrap(
    task_type: ScoresResamples,
    labels: Sequence[float],
    preds_by_run: Mapping[str, Sequence[float]],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    chunk: int = 500,
) -> dict[str, Replicates]:
    """The task type's metrics of every run on the same `samples` resamples (with replacement)
    of one test split's examples, and on the split itself. `preds_by_run[name][i]` is run
    `name`'s prediction for example `i` with true label `labels[i]` (the columns of
    `test_predictions/<task>.csv`): the same example order for every run, so the difference of
    two runs' replicates is paired."""
    labels = np.asarray(labels)
    n = len(labels)
    preds = {name: np.asarray(values) for name, values in preds_by_run.items()}
    for name, values in preds.items():
        if values.shape != labels.shape:
            raise ValueError(f"run {name} has {len(values)} predictions for {n} examples")
    found: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in preds}
    for weights in _resample_weights(np.random.default_rng(seed), n, samples, chunk):
        for name, by_metric in task_type.resampled_metrics(labels, preds, weights).items():
            for metric, values in by_metric.items():
                found[name].setdefault(metric, []).append(values)
    point = task_type.resampled_metrics(labels, preds, np.ones((1, n)))
    return {
        name: Replicates(
            values={metric: np.concatenate(rows) for metric, rows in found[name].items()},
            point={metric: float(values[0]) for metric, values in point[name].items()},
        )
        for name in preds
    }


def _percentile_test(replicates: np.ndarray, alpha: float) -> dict:
    """The percentile interval of bootstrap replicates of a difference, and the two-sided p-value
    of "no difference", 2 * min(share of replicates <= 0, share >= 0), each share counted with
    the +1 of Davison & Hinkley so that it is never 0."""
    count = len(replicates)
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    below = (np.sum(replicates <= 0) + 1) / (count + 1)
    above = (np.sum(replicates >= 0) + 1) / (count + 1)
    return {"ci95": [float(low), float(high)], "p": float(min(1.0, 2 * min(below, above)))}


def _differences(pairs: Sequence[tuple[Replicates, Replicates]], metric: str) -> list[float]:
    if not pairs:
        raise ValueError("a difference over seeds needs at least one (a, b) pair")
    return [a.point[metric] - b.point[metric] for a, b in pairs]


def fixed_models_bootstrap(
    pairs: Sequence[tuple[Replicates, Replicates]], metric: str, alpha: float = ALPHA
) -> dict:
    """`a - b` for `(a, b)` pairs, one per seed (each pair scored on the same resamples), with
    the trained models held fixed: it answers "do these models differ on this test set", not
    "does the scenario differ" (no seed-to-seed training variance in it).

    `delta`: the mean over seeds of the observed differences; `ci95` and `p`: the percentile
    interval and two-sided p-value of the mean over seeds of the replicate differences;
    `per_seed`: the observed differences.
    """
    per_seed = _differences(pairs, metric)
    replicates = np.mean([a.values[metric] - b.values[metric] for a, b in pairs], axis=0)
    return {
        "delta": float(np.mean(per_seed)),
        **_percentile_test(replicates, alpha),
        "n": len(pairs),
        "per_seed": per_seed,
    }


def seed_t_test(per_seed: Sequence[float], alpha: float = ALPHA) -> dict | None:
    """The paired t-test over seeds: the per-seed differences as a sample of seeds (each one's
    test-example noise included, where each seed has its own test split). `ci95`: the t-interval
    of their mean; `p`: two-sided, `df` = seeds - 1. None for one seed (no spread to estimate)."""
    values = np.asarray(per_seed, dtype=float)
    n = len(values)
    if n < 2:
        return None
    mean = float(values.mean())
    error = float(values.std(ddof=1)) / math.sqrt(n)
    df = n - 1
    if error == 0:  # every seed the same difference: no spread, a certain sign (or none)
        return {"ci95": [mean, mean], "p": 1.0 if mean == 0 else 0.0, "t": None, "df": df}
    t = mean / error
    half = t_quantile(1 - alpha / 2, df) * error
    p = 2 * t_cdf(-abs(t), df)
    return {"ci95": [mean - half, mean + half], "p": p, "t": t, "df": df}


def two_level_bootstrap(
    pairs: Sequence[tuple[Replicates, Replicates]],
    metric: str,
    splits: Sequence[object],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    alpha: float = ALPHA,
) -> dict:
    """The mean over seeds of `a - b`, resampled at two levels: the seeds (with replacement),
    then the test examples within each drawn seed (a column of its pair's replicates).
    `splits[i]` names pair `i`'s test split: seeds whose test split is the same examples take one
    and the same example resample in a draw (their columns are paired resamples of one split),
    so a shared split's noise is counted once for all of them, not averaged away as if each seed
    had its own. A seed drawn twice keeps its one test split, so it takes that split's resample
    twice. `ci95`, `p` as `fixed_models_bootstrap`'s."""
    _differences(pairs, metric)
    if len(splits) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs need {len(pairs)} test splits, not {len(splits)}")
    differences = np.stack([a.values[metric] - b.values[metric] for a, b in pairs])
    split_ids = {split: i for i, split in enumerate(dict.fromkeys(splits))}
    split_of_seed = np.array([split_ids[split] for split in splits])
    rng = np.random.default_rng(seed)
    n, columns = differences.shape
    drawn_seeds = rng.integers(0, n, size=(samples, n))
    column_of_split = rng.integers(0, columns, size=(samples, len(split_ids)))
    drawn_columns = np.take_along_axis(column_of_split, split_of_seed[drawn_seeds], axis=1)
    replicates = differences[drawn_seeds, drawn_columns].mean(axis=1)
    return _percentile_test(replicates, alpha)


def seeds_for_power(
    per_seed: Sequence[float],
    alpha: float = ALPHA,
    power: float = POWER,
    most: int = 1000,
    spread: float | None = None,
) -> int | None:
    """The fewest seeds with which a paired t-test at `alpha` (two-sided) finds a difference of
    the observed mean size with `power`, if the per-seed differences spread by `spread` (default:
    their sample std): n >= ((t_{1-alpha/2, n-1} + t_{power, n-1}) * spread / |mean|)^2 (the
    usual approximation of the noncentral t). None when it cannot be said: under two seeds, no
    difference, or more than `most` seeds."""
    values = np.asarray(per_seed, dtype=float)
    if len(values) < 2 or values.mean() == 0:
        return None
    if spread is None:
        spread = float(values.std(ddof=1))
    ratio = spread / abs(float(values.mean()))
    for n in range(2, most + 1):
        df = n - 1
        if n >= ((t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * ratio) ** 2:
            return n
    return None


def power_spread(per_seed: Sequence[float], example_noise: Sequence[float]) -> float:
    """The per-seed spread `seeds_for_power` assumes: the larger of the per-seed differences'
    sample std and the test examples' noise within a seed (the root mean square of
    `example_noise`, each seed's bootstrap std of its difference with the models held fixed). A
    seed's difference carries its test examples' noise, so the spread over seeds is at least
    that; a few seeds can come out closer by chance (three close per-seed gaps on a small test
    split), and the t-test alone would then promise power that the test examples do not give."""
    values = np.asarray(per_seed, dtype=float)
    noise = float(np.sqrt(np.mean(np.square(example_noise))))
    return max(float(values.std(ddof=1)), noise)


def compare_over_seeds(
    pairs: Sequence[tuple[Replicates, Replicates]],
    metric: str,
    splits: Sequence[object],
    seed: int = 0,
    alpha: float = ALPHA,
) -> dict:
    """`a - b` over seeds, one `(a, b)` pair per seed scored on the same resamples of that
    seed's test split (`splits` names them, see `two_level_bootstrap`).

    `delta`, `per_seed`, `n`; `ci95` and `p`: the seed-level verdict, the larger p (and the
    union of the intervals) of `t_test` and `two_level_bootstrap`: the t-test's t quantiles are
    honest with few seeds, where a bootstrap over 3 seeds (10 distinct draws) understates their
    spread; the bootstrap counts the noise of a test split the seeds share, which a t-test over
    them cannot see. None (and `within_noise` None) for one seed. `fixed_models`: the
    example-level bootstrap, the models held fixed. `p_holm`, `within_noise` and
    `seeds_for_power_holm` are set over the family (`holm`, and `seeds_for_power` at alpha over
    its size); here they are those of a family of one. The intervals are each comparison's own
    1 - alpha (the key `ci95`: 95% at the default alpha), not adjusted for the family.
    `seeds_for_power`: see `power_spread`.
    """
    fixed = fixed_models_bootstrap(pairs, metric, alpha)
    per_seed = fixed["per_seed"]
    t_test = seed_t_test(per_seed, alpha)
    samples = len(pairs[0][0].values[metric])
    two_level = two_level_bootstrap(pairs, metric, splits, samples, seed, alpha)
    if t_test is None:
        ci95, p, spread, count = None, None, None, None
    else:
        ci95 = [
            min(t_test["ci95"][0], two_level["ci95"][0]),
            max(t_test["ci95"][1], two_level["ci95"][1]),
        ]
        p = max(t_test["p"], two_level["p"])
        spread = power_spread(
            per_seed, [float(np.std(a.values[metric] - b.values[metric])) for a, b in pairs]
        )
        count = seeds_for_power(per_seed, alpha, spread=spread)
    return {
        "delta": fixed["delta"],
        "ci95": ci95,
        "p": p,
        "p_holm": p,
        "within_noise": None if p is None else p >= alpha,
        "n": len(pairs),
        "per_seed": per_seed,
        "shared_test_split": len(set(splits)) < len(splits),
        "t_test": t_test,
        "two_level_bootstrap": two_level,
        "fixed_models": {"ci95": fixed["ci95"], "p": fixed["p"]},
        "power_spread": spread,
        "seeds_for_power": count,
        "seeds_for_power_holm": count,  # a family of one; `holm`'s caller sets it for its own
    }


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the given order: the k-th smallest of m p-values
    is multiplied by m - k + 1, capped at 1, and made no smaller than the one before it. Valid
    under any dependence between the comparisons. None (no test) stays None, outside the family."""
    known = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        adjusted[i] = running
    return adjusted


def delta_m(
    model: Mapping[tuple[str, str], float],
    baseline: Mapping[tuple[str, str], float],
    lower_is_better: Sequence[str] = (),
) -> float:
    """Δm in percent (Maninis et al. 2019, as LibMTL): the mean over every (task, metric) of
    `model` of `(-1)^l (M_m - M_b) / M_b * 100`, `l = 1` for a metric named in `lower_is_better`
    (by its metric name, e.g. "loss", or as a `(task, metric)` pair), else 0. Positive: better
    than the baselines."""
    if not model:
        raise ValueError("Δm needs at least one (task, metric)")
    terms = []
    for (task, metric), value in model.items():
        reference = baseline[(task, metric)]
        sign = -1.0 if metric in lower_is_better or (task, metric) in lower_is_better else 1.0
        terms.append(sign * (value - reference) / reference * 100)
    return float(np.mean(terms))


def delta_m_over_seeds(
    model: Mapping[int | None, Mapping[tuple[str, str], float]],
    baseline: Mapping[int | None, Mapping[tuple[str, str], float]],
    lower_is_better: Sequence[str] = (),
) -> dict:
    """Δm of each seed against the same seed's baselines (the same test split), then
    `over_seeds` of those (mean, std, t-interval), with the seeds used under `seeds`. A seed
    counts where the baselines have every (task, metric) the model has."""
    seeds = [seed for seed in model if seed in baseline and set(model[seed]) <= set(baseline[seed])]
    values = [delta_m(model[seed], baseline[seed], lower_is_better) for seed in seeds]
    return {**over_seeds(values), "seeds": seeds}


def expected_max(scores: Sequence[float], n: int) -> dict:
    """The expected best validation score of `n` trials, and its std (Dodge et al. 2019, "Show
    your work": expected validation performance), from the `N` trial scores observed.

    With the scores sorted v_(1) <= ... <= v_(N) and `n` trials drawn from them with
    replacement (as the paper does), P(max <= v_(i)) = (i/N)^n, so
    E[max_n] = sum_i v_(i) ((i/N)^n - ((i-1)/N)^n), and the variance is
    sum_i v_(i)^2 ((i/N)^n - ((i-1)/N)^n) - E[max_n]^2.
    """
    if n < 1:
        raise ValueError(f"n={n}: the expected best of at least one trial.")
    values = np.sort(np.asarray(scores, dtype=float))
    if values.size == 0:
        return {"n": n, "mean": None, "std": None}
    ranks = np.arange(1, values.size + 1) / values.size
    weights = ranks**n - (ranks - 1 / values.size) ** n
    mean = float(np.sum(weights * values))
    variance = float(np.sum(weights * values**2)) - mean**2
    return {"n": n, "mean": mean, "std": math.sqrt(max(variance, 0.0))}


def expected_max_curve(scores: Sequence[float], up_to: int | None = None) -> list[dict]:
    """`expected_max(scores, n)` for n = 1 .. `up_to` (default: the number of scores)."""
    return [expected_max(scores, n) for n in range(1, (up_to or len(scores)) + 1)]
