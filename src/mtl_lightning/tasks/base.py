"""What a task type owns: its columns, collate, head, loss, metrics and prediction output.

A task type is one class here and one line in `mtl_lightning.tasks.TASK_TYPES`. The datamodule
asks it how to read and batch a task's examples, the LightningModule how to score, train and
evaluate the task; neither branches on the type. `data.tasks.<task>.type` names it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torchmetrics import MetricCollection

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.tasks.collate import pad

# (task, index, token ids of each column, label value)
Item = tuple[str, int, tuple[list[int], ...], Any]


# The batch keys of each sentence column: the first column is the encoder's usual input.
COLUMN_KEYS = {
    "text": ("input_ids", "attention_mask"),
    "text_pair": ("pair_input_ids", "pair_attention_mask"),
}


class TaskType(ABC):
    """One task of one type: built from its training labels, then asked by data and model.

    `spec()` is what the model stores in its checkpoint to rebuild the same object (type name
    and resolved options), so prediction needs no data.
    """

    name: ClassVar[str]
    columns: ClassVar[tuple[str, ...]] = ("text",)  # the sentence columns, in batch order
    categorical: ClassVar[bool] = True  # labels are classes (stratified splits, confusion)
    primary: ClassVar[str]  # the metric that the monitored mean over tasks averages
    direction: ClassVar[str] = "max"  # whether the primary metric is better higher or lower
    architecture: ClassVar[str]  # the head in words, for exported heads (heads.json)
    hub_task: ClassVar[str]  # the Hugging Face task id, for the model card's model-index
    # Metric (as `metrics()` names it) -> (its Hub metric type, its name in the model card).
    card_metrics: ClassVar[dict[str, tuple[str, str]]]

    def __init__(self, task: str, labels: Sequence[str] = (), **options: Any) -> None:
        self.task = task
        self.labels = list(labels)  # class names in class-id order; empty for a score
        unknown = sorted(set(options) - set(self.option_names()))
        if unknown:
            raise ConfigError(
                f"data.tasks.{task}.type_options has unknown keys {unknown} for "
                f"type={self.name}: use some of {sorted(self.option_names())}."
            )
        self.options = dict(options)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ()

    @classmethod
    def from_data(
        cls,
        task: str,
        train_labels: Sequence[str],
        label_names: Sequence[str] | None,
        options: Mapping[str, Any],
    ) -> TaskType:
        """The task type for this training data (class names, a score's range, ...)."""
        return cls(task, list(label_names or []), **options)

    @classmethod
    def label_problem(cls, task: str, label: str, options: Mapping[str, Any]) -> str | None:
        """Why a source's label cannot be one of this type's (with the task's `type_options`),
        for an error that names its line; None when it can."""
        return None

    def spec(self) -> dict[str, Any]:
        return {"type": self.name, **self.options}

    @property
    def pair(self) -> bool:
        return len(self.columns) == 2

    @abstractmethod
    def encode_labels(self, labels: Sequence[str], split: str) -> list:
        """The source's string labels as the values the loss and metrics take."""

    def collate(self, items: list[Item], pad_id: int) -> dict:
        """Pad each sentence column to its longest sequence in the batch (dynamic padding).

        `real_tokens` and `pad_tokens` count the batch's tokens and padding, so that the padded
        fraction of an epoch costs a sum, not a pass over the masks.
        """
        batch: dict[str, Any] = {"task": items[0][0]}
        real = total = 0
        for position, column in enumerate(self.columns):
            ids_key, mask_key = COLUMN_KEYS[column]
            input_ids, attention_mask = pad([item[2][position] for item in items], pad_id)
            batch[ids_key], batch[mask_key] = input_ids, attention_mask
            real += int(attention_mask.sum())
            total += attention_mask.numel()
        batch["labels"] = torch.tensor([item[3] for item in items])
        batch["idx"] = torch.tensor([item[1] for item in items])
        batch["real_tokens"] = real
        batch["pad_tokens"] = total - real
        return batch

    @abstractmethod
    def build_head(self, hidden_size: int, dropout: float) -> nn.Module:
        """The task's trainable head on top of the shared sentence embedding(s)."""

    @abstractmethod
    def outputs(self, head: nn.Module, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        """What the head makes of the sentence embeddings of `columns` (logits, scores)."""

    @abstractmethod
    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def metrics(self) -> MetricCollection:
        """Fresh metrics (one set per stage); must include `primary`."""

    @abstractmethod
    def predictions(self, outputs: torch.Tensor) -> list[dict[str, Any]]:
        """One JSON-ready prediction per example (`predict`'s output for this task)."""

    def class_ids(self, outputs: torch.Tensor) -> torch.Tensor | None:
        """Predicted class ids for the confusion matrices; None for a type without classes."""
        return None

    @abstractmethod
    def loss_in_words(self) -> str:
        """The training loss, for the model card."""

    @abstractmethod
    def usage_lines(self, head: nn.Module) -> list[str]:
        """The model card's NumPy lines that compute `out["<task>"]` from the exported head (of
        `heads = safetensors.numpy.load_file(...)`, tensors `<task>.<name>`), and from
        `embeddings` (a single-sentence type's) or `u`, `v` (the first and second sentences'
        embeddings of a pair type); `np` is NumPy."""
