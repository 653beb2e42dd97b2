"""Metrics of weighted examples, for task types' `resampled_metrics` (numpy only).

A bootstrap resample of a test split is a weight per example: how often it was drawn. These
compute a metric on each row of a `(resamples, examples)` weight matrix at once, so that ten
thousand resamples cost a few matrix products, not ten thousand passes; a row of ones is the
split itself.
"""

from __future__ import annotations

import numpy as np


def macro_f1_from_counts(tp: np.ndarray, predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Macro F1 per row of per-class counts, as torchmetrics' MulticlassF1Score(average="macro"):
    F1_c = 2 tp / (predicted + true); a class never true nor predicted leaves the average."""
    denominator = predicted + true
    present = denominator > 0
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp, dtype=float), where=present)
    return f1.sum(-1) / np.maximum(present.sum(-1), 1)


def class_metrics(
    labels: np.ndarray, preds_by_run: dict, weights: np.ndarray, num_classes: int
) -> dict[str, dict[str, np.ndarray]]:
    """Accuracy (`acc`) and macro-F1 (`f1`) of each run's class ids on each weighted resample."""
    labels = np.asarray(labels)
    seen = [labels, *(np.asarray(preds) for preds in preds_by_run.values())]
    # Class ids past the label names (a run folder that did not record them) still count.
    num_classes = max([num_classes] + [int(ids.max()) + 1 for ids in seen if ids.size])
    classes = np.arange(num_classes)
    true = (labels[:, None] == classes).astype(float)
    true_counts = weights @ true
    total = weights.sum(1)
    found = {}
    for name, preds in preds_by_run.items():
        preds = np.asarray(preds)
        predicted = (preds[:, None] == classes).astype(float)
        found[name] = {
            "acc": weights @ (preds == labels).astype(float) / total,
            "f1": macro_f1_from_counts(
                weights @ (true * predicted), weights @ predicted, true_counts
            ),
        }
    return found


def weighted_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
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


def weighted_pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pearson's r of each resample (row of `weights`); `x`, `y` per example or per resample."""
    total = weights.sum(1, keepdims=True)
    dx = x - (weights * x).sum(1, keepdims=True) / total
    dy = y - (weights * y).sum(1, keepdims=True) / total
    covariance = (weights * dx * dy).sum(1)
    spread = np.sqrt((weights * dx**2).sum(1) * (weights * dy**2).sum(1))
    return np.divide(covariance, spread, out=np.zeros_like(covariance), where=spread > 0)


def correlation_metrics(
    labels: np.ndarray, preds_by_run: dict, weights: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Spearman (ties at their mean rank, as scipy.stats.spearmanr) and Pearson correlation of
    each run's scores with the true scores `labels`, on each weighted resample."""
    labels = np.asarray(labels, dtype=float)
    label_ranks = weighted_ranks(labels, weights)
    found = {}
    for name, preds in preds_by_run.items():
        preds = np.asarray(preds, dtype=float)
        found[name] = {
            "spearman": weighted_pearson(label_ranks, weighted_ranks(preds, weights), weights),
            "pearson": weighted_pearson(labels, preds, weights),
        }
    return found
