"""`classification` (the default): one sentence, one class; cross-entropy, accuracy, macro-F1."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.tasks.base import ReportMetric, TaskType
from mtl_lightning.tasks.heads import ClassificationHead
from mtl_lightning.tasks.resampling import class_metrics


def class_names(
    task: str, train_labels: Sequence[str], label_names: Sequence[str] | None
) -> list[str]:
    """The label set in class-id order: `label_names`, or the training labels, sorted (as
    numbers when all are integers, so that class ids follow the integers: 2 before 10; then as
    text, so that the order never depends on the set's, which varies between processes)."""
    present = set(train_labels)
    numeric = all(label.removeprefix("-").isdecimal() for label in present)
    names = list(label_names or sorted(present, key=(lambda x: (int(x), x)) if numeric else None))
    if len(present) < 2:
        raise ConfigError(
            f"data.tasks.{task} has a single class {sorted(present)} in its training "
            "data: a classifier needs at least two, so add examples of another class "
            "or check which column holds the labels."
        )
    return names


class Classification(TaskType):
    name = "classification"
    primary = "acc"
    architecture = "dropout, then linear: logits = embedding @ weight.T + bias"
    hub_task = "text-classification"
    report_metrics = {
        "acc": ReportMetric("accuracy", "acc", hub="accuracy", card="Accuracy"),
        "f1": ReportMetric("macro-F1", "F1", hub="f1", card="Macro F1"),
    }

    @classmethod
    def from_data(
        cls,
        task: str,
        train_labels: Sequence[str],
        label_names: Sequence[str] | None,
        options: Mapping[str, Any],
    ) -> TaskType:
        return cls(task, class_names(task, train_labels, label_names), **options)

    def encode_labels(self, labels: Sequence[str], split: str) -> list[int]:
        ids = {name: i for i, name in enumerate(self.labels)}
        unknown = sorted(set(labels) - set(ids))
        if unknown:
            raise ConfigError(
                f"data.tasks.{self.task} has labels {unknown[:5]} outside its label_names "
                f"{self.labels}: add them to data.tasks.{self.task}.label_names or fix the data."
            )
        return [ids[label] for label in labels]

    def build_head(self, hidden_size: int, dropout: float) -> nn.Module:
        return ClassificationHead(hidden_size, len(self.labels), dropout)

    def outputs(self, head: nn.Module, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        return head(embeddings[0])

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, labels)

    def metrics(self) -> MetricCollection:
        n = len(self.labels)
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(n, average="micro"),
                "f1": MulticlassF1Score(n, average="macro"),
            }
        )

    def resampled_metrics(
        self,
        labels: np.ndarray,
        preds_by_run: Mapping[str, np.ndarray],
        weights: np.ndarray,
    ) -> dict[str, dict[str, np.ndarray]]:
        return class_metrics(labels, preds_by_run, weights, len(self.labels))

    def loss_in_words(self) -> str:
        return "cross-entropy on the head's logits"

    def usage_lines(self, head: nn.Module) -> list[str]:
        return self._logits_lines("embeddings")

    def _logits_lines(self, features: str) -> list[str]:
        task = self.task
        return [
            f"# {task}: logits over {', '.join(self.labels)} (argmax: the class)",
            f'w, b = heads["{task}.classifier.weight"], heads["{task}.classifier.bias"]',
            f'out["{task}"] = {features} @ w.T + b',
        ]

    def class_ids(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(-1)

    def predictions(self, outputs: torch.Tensor) -> list[dict[str, Any]]:
        probs = outputs.float().softmax(-1).cpu().tolist()
        return [
            {
                "label": self.labels[max(range(len(row)), key=row.__getitem__)],
                "probs": dict(zip(self.labels, row, strict=True)),
            }
            for row in probs
        ]
