"""Plug-ins defined outside the package, chosen by `_target_` from a config (test_plugins.py)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.regression import MeanSquaredError, R2Score

from mtl_lightning.core.rules import int_at_least
from mtl_lightning.data.sampling.modes import SamplingMode
from mtl_lightning.data.sampling.sampler import TaskSequenceBatchSampler
from mtl_lightning.scenarios.base import Plan, Scenario
from mtl_lightning.scenarios.readout import CentroidReadout
from mtl_lightning.tasks import ReportMetric, TaskType
from mtl_lightning.tasks.pair_classification import pair_features
from mtl_lightning.weighting import LossWeighting


class ProbeThenFinetune(Scenario):
    """LP-FT (Kumar et al. 2022): the heads train on the frozen encoder for `probe_epochs`,
    then everything trains, so fine-tuning starts from trained heads."""

    name = "probe_then_finetune"
    RULES = {**Scenario.RULES, "probe_epochs": int_at_least(1)}

    def __init__(self, probe_epochs: int = 1, keep_frozen_layers: int = 0) -> None:
        super().__init__(keep_frozen_layers)
        self.check_values(probe_epochs=probe_epochs)
        self.probe_epochs = probe_epochs

    def trainable(self, epoch, heads, num_groups, step):
        return Plan(heads, 0 if epoch < self.probe_epochs else num_groups)


class TaskBlocks(SamplingMode):
    """One task per step, each task's steps in one block (the first task's, then the next's):
    the opposite of interleaving, as a curriculum would order them."""

    name = "task_blocks"

    def schedule(self, samplers, sizes):
        return BlockSampler(samplers)


class BlockSampler(TaskSequenceBatchSampler):
    """The epoch's N * M steps (the base class's length) as N blocks of M: a task that runs out
    within its block starts over with a fresh order."""

    def task_sequence(self) -> list[int]:
        steps = max(len(sampler) for sampler in self.samplers)
        return [t for t in range(len(self.samplers)) for _ in range(steps)]


class LastTaskCounted(LossWeighting):
    """The last task's loss counts 3 times (a fixed weighting, by `combine`)."""

    def combine(self, losses):
        weights = {task: 3.0 if task == self.tasks[-1] else 1.0 for task in losses}
        return sum(weights[t] * loss for t, loss in losses.items()), weights


class FarthestCentroid(nn.Module):
    """A readout that picks the class whose centroid is *least* similar: a wrong readout on
    purpose, so that a test can tell it was used."""

    def __init__(self, embeddings, labels, num_classes):
        super().__init__()
        self.centroid = CentroidReadout(embeddings, labels, num_classes)

    def forward(self, embedding):
        return torch.log_softmax(-self.centroid(embedding), dim=-1)


class PairRegression(TaskType):
    """Two sentences, a real-valued score regressed from (u, v, |u - v|, u * v) with squared
    error: R² (primary) and RMSE, a metric better when lower."""

    name = "pair_regression"
    columns = ("text", "text_pair")
    categorical = False
    primary = "r2"
    architecture = "score = [u, v, |u - v|, u * v] @ regressor.weight.T + regressor.bias"
    hub_task = "sentence-similarity"
    report_metrics = {
        "r2": ReportMetric("R²", "R²", hub="r_squared", card="R²"),
        "rmse": ReportMetric("RMSE", "RMSE", hub="rmse", card="RMSE", higher_is_better=False),
    }

    @classmethod
    def label_problem(cls, task, label, options):
        try:
            float(label)
        except ValueError:
            return f"score {label!r}, which is not a number"
        return None

    def encode_labels(self, labels, split):
        return [float(label) for label in labels]

    def build_head(self, hidden_size, dropout):
        head = nn.Module()
        head.regressor = nn.Linear(4 * hidden_size, 1)
        return head

    def outputs(self, head, embeddings):
        return head.regressor(pair_features(*embeddings)).squeeze(-1).float()

    def loss(self, outputs, labels):
        return nn.functional.mse_loss(outputs, labels.to(outputs.dtype))

    def metrics(self):
        return MetricCollection({"r2": R2Score(), "rmse": MeanSquaredError(squared=False)})

    def predictions(self, outputs):
        return [{"score": value} for value in outputs.float().cpu().tolist()]

    def resampled_metrics(self, labels, preds_by_run, weights):
        labels = np.asarray(labels, dtype=float)
        total = weights.sum(1)
        mean = weights @ labels / total
        spread = (weights * (labels - mean[:, None]) ** 2).sum(1)
        found = {}
        for name, preds in preds_by_run.items():
            squared = weights @ (labels - np.asarray(preds, dtype=float)) ** 2
            found[name] = {"r2": 1 - squared / spread, "rmse": np.sqrt(squared / total)}
        return found

    def loss_in_words(self):
        return "squared error of the regressed score"

    def usage_lines(self, head):
        task = self.task
        return [
            f"# {task}: the regressed score",
            f'w, b = heads["{task}.regressor.weight"], heads["{task}.regressor.bias"]',
            f'out["{task}"] = np.concatenate([u, v, np.abs(u - v), u * v], -1) @ w.T + b',
        ]
