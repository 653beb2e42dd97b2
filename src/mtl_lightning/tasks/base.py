"""What a task type owns: its columns, collate, head, loss, metrics, prediction output, how
runs are compared on it, and its text in the model card.

A task type is one class here and one line in `mtl_lightning.tasks.TASK_TYPES`. The datamodule
asks it how to read and batch a task's examples, the LightningModule how to score, train and
evaluate the task, the test-prediction callback which rows to write, the study report which
metrics to show and how to score them on resampled test examples, and the export what to say
in the model card; none of them branches on the type or names a metric.
`data.tasks.<task>.type` names it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
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


def column_keys(column: str) -> tuple[str, str]:
    """The batch keys of a sentence column: `COLUMN_KEYS`, or `<column>_input_ids` and
    `<column>_attention_mask` for a type's further columns (a retrieval task's negatives)."""
    return COLUMN_KEYS.get(column, (f"{column}_input_ids", f"{column}_attention_mask"))


@dataclass(frozen=True)
class ReportMetric:
    """How a logged metric (`{stage}/{task}/<key>`) is named where runs are compared.

    `name`: in words, in sentences and plot axes ("accuracy"); `short`: a table header ("acc");
    `hub`: its Hugging Face metric type, for the model card's model-index ("accuracy");
    `card`: its name in the model card's tables ("Accuracy"); `higher_is_better`: its direction
    (Δm flips the sign of a metric better when lower).
    """

    name: str
    short: str
    hub: str
    card: str
    higher_is_better: bool = True


class TaskType(ABC):
    """One task of one type: built from its training labels, then asked by data and model.

    `spec()` is what the model stores in its checkpoint to rebuild the same object (type name
    and resolved options), so prediction needs no data.
    """

    name: ClassVar[str]
    columns: ClassVar[tuple[str, ...]] = ("text",)  # the sentence columns, in batch order
    categorical: ClassVar[bool] = True  # labels are classes (stratified splits, confusion)
    # Whether a source reads a label column: a type without one (retrieval: its pairs are its
    # supervision) gets an empty label per example.
    has_labels: ClassVar[bool] = True
    # Whether a source's further documents (`corpus`) join its val and test splits, as rows
    # whose first sentence is empty (retrieval: documents ranked, never a query).
    ranks_corpus: ClassVar[bool] = False
    primary: ClassVar[str]  # the metric that the monitored mean over tasks averages
    direction: ClassVar[str] = "max"  # whether the primary metric is better higher or lower
    architecture: ClassVar[str]  # the head in words, for exported heads (heads.json)
    hub_task: ClassVar[str]  # the Hugging Face task id, for the model card's model-index
    # The metrics that the study report and the model card show (as `metrics()` names them),
    # the primary first: the report's tables, paired differences, Δm and plots, and the card's
    # test metrics, take these and nothing else.
    report_metrics: ClassVar[dict[str, ReportMetric]]

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

    # The type option that names `extra_columns` (for errors that name the key to fix).
    extra_columns_key: ClassVar[str] = ""

    @classmethod
    def extra_columns(cls, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The source columns this type reads beyond `text` (and `text_pair`), as `type_options`
        name them (a retrieval task's hard negatives); each is a further sentence per example."""
        return ()

    @classmethod
    def label_problem(cls, task: str, label: str, options: Mapping[str, Any]) -> str | None:
        """Why a source's label cannot be one of this type's (with the task's `type_options`),
        for an error that names its line; None when it can."""
        return None

    def spec(self) -> dict[str, Any]:
        # A type of your own is stored by the name it was registered under (its dotted path).
        return {"type": type(self).__dict__.get("registered_as", self.name), **self.options}

    @property
    def pair(self) -> bool:
        return len(self.columns) == 2

    @abstractmethod
    def encode_labels(self, labels: Sequence[str], split: str) -> list:
        """The source's string labels as the values the loss and metrics take."""

    def encode_rows(self, rows: Any, split: str) -> list:
        """The label values of a split's rows (`texts`, `labels`, `text_pairs`: a source's
        `Rows`): its labels, encoded; a type whose labels depend on the texts overrides it."""
        return self.encode_labels(rows.labels, split)

    @property
    def sentence_columns(self) -> tuple[str, ...]:
        """Every sentence column of a training example: `columns`, then `extra_columns`."""
        return self.columns

    @property
    def backpropagates_itself(self) -> bool:
        """Whether `embed` writes the encoder's gradients during backward itself (GradCache),
        out of reach of a weighting that takes each task's gradient or of DDP's all-reduce."""
        return False

    @property
    def no_duplicates(self) -> bool:
        """Whether a training batch must not hold one text twice (in-batch negatives)."""
        return False

    def embed(self, encode: Callable[[dict], torch.Tensor], column_batch: dict) -> torch.Tensor:
        """One sentence column's embeddings of a batch: `encode(column_batch)`, by default; a
        type may encode in pieces (a retrieval task's GradCache)."""
        return encode(column_batch)

    def collate(self, items: list[Item], pad_id: int) -> dict:
        """Pad each sentence column to its longest sequence in the batch (dynamic padding).

        `real_tokens` and `pad_tokens` count the batch's tokens and padding, so that the padded
        fraction of an epoch costs a sum, not a pass over the masks.
        """
        batch: dict[str, Any] = {"task": items[0][0]}
        real = total = 0
        # A split without the further columns (val or test without hard negatives) has fewer.
        for position, column in enumerate(self.sentence_columns[: len(items[0][2])]):
            ids_key, mask_key = column_keys(column)
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

    def test_rows(self, outputs: torch.Tensor, labels: torch.Tensor) -> tuple[list, list]:
        """The `label` and `pred` columns of `test_predictions/<task>.csv`, one number each per
        test example (class ids, or the true score and the predicted one): what
        `resampled_metrics` scores, so that the report can pair two runs example by example."""
        preds = self.class_ids(outputs)
        return labels.tolist(), (outputs if preds is None else preds).tolist()

    def split_test_rows(self, metrics: MetricCollection) -> tuple[list, list] | None:
        """The `label` and `pred` columns for the whole test split, where they need all of it
        (a ranking's per-query rows), from the stage's `metrics` at the end of the test; they
        replace `test_rows`' per-example rows. None (the default): `test_rows` stand."""
        return None

    @abstractmethod
    def resampled_metrics(
        self,
        labels: np.ndarray,
        preds_by_run: Mapping[str, np.ndarray],
        weights: np.ndarray,
    ) -> dict[str, dict[str, np.ndarray]]:
        """Each of `report_metrics` of each run, on each resample of one test split: run ->
        metric -> one value per row of `weights`, where `weights[r, i]` is how often example `i`
        (`labels[i]`, `preds_by_run[run][i]`: `test_rows`' columns) is drawn in resample `r`. A
        row of ones is the split itself, and must give the metric as logged. The study's paired
        bootstrap (`mtl_lightning.study.stats.bootstrap`) draws the weights, the same for every
        run, so the runs' differences are paired."""

    def label_description(self) -> str:
        """The labels in words, for the model card's task table."""
        return ", ".join(self.labels)

    def card_limits(self) -> list[str]:
        """The model card's limitations that this task adds (e.g. a trained score that is not
        the embeddings' own cosine)."""
        return []

    def card_similarity_notes(self) -> list[str]:
        """What the model card's "similarity function" line adds for this task (e.g. that its
        trained score is another cosine than the embeddings')."""
        return []

    def card_citations(self) -> list[tuple[str, str]]:
        """(title, BibTeX) of what this task's training builds on, for the model card."""
        return []

    @abstractmethod
    def loss_in_words(self) -> str:
        """The training loss, for the model card."""

    @abstractmethod
    def usage_lines(self, head: nn.Module) -> list[str]:
        """The model card's NumPy lines that compute `out["<task>"]` from the exported head (of
        `heads = safetensors.numpy.load_file(...)`, tensors `<task>.<name>`), and from
        `embeddings` (a single-sentence type's) or `u`, `v` (the first and second sentences'
        embeddings of a pair type); `np` is NumPy."""
