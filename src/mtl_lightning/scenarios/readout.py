"""Non-parametric readouts of frozen sentence embeddings: what a static feature extractor scores.

`entire_network_frozen` trains nothing, so an untrained head would score chance. Instead each
task is read out from the frozen, L2-normalised embeddings of its training split, fitted once:

- `centroid` (default): nearest class centroid by cosine similarity (the mean of each class's
  normalised training embeddings).
- `knn`: the majority class of the `k` most cosine-similar training embeddings.
- your own: `callbacks.frozen_readout.readout` is a Hydra node of a class (`_partial_: true`)
  that is built as `cls(embeddings, labels, num_classes)` per task, an `nn.Module` like these two.

A readout is an `nn.Module` with a head's signature (embedding -> per-class scores), so
Lightning's own validation and test loops and torchmetrics score it like a head. Its scores are
log-probabilities, so the logged loss is the readout's negative log-likelihood.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning import Callback, LightningModule, Trainer
from torch import nn

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.scenarios.embeddings import compute_embeddings, export_embeddings
from mtl_lightning.tasks.collate import pad

log = logging.getLogger(__name__)

READOUTS = ("centroid", "knn")
# A readout class, partly applied: fitted as readout(embeddings, labels, num_classes).
Readout = Callable[[torch.Tensor, torch.Tensor, int], nn.Module]
# Softmax temperature over cosine similarities (as in contrastive learning): it sets only the
# logged loss of `centroid`, never its predictions.
CENTROID_TEMPERATURE = 0.05


class CentroidReadout(nn.Module):
    """Nearest class centroid by cosine similarity."""

    def __init__(self, embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        normed = F.normalize(embeddings.float(), dim=-1)
        sums = normed.new_zeros(num_classes, normed.shape[1]).index_add_(0, labels, normed)
        # A class without training examples keeps a zero centroid: cosine 0 to everything.
        self.register_buffer("centroids", F.normalize(sums, dim=-1))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(embedding.float(), dim=-1) @ self.centroids.T
        return torch.log_softmax(cosine / CENTROID_TEMPERATURE, dim=-1)


class KNNReadout(nn.Module):
    """Majority vote of the `k` nearest training embeddings by cosine similarity (ties: the
    lowest class id)."""

    def __init__(
        self, embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int = 25
    ) -> None:
        super().__init__()
        self.k = min(k, len(labels))
        self.num_classes = num_classes
        self.register_buffer("train_embeddings", F.normalize(embeddings.float(), dim=-1))
        self.register_buffer("train_labels", labels.long())

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(embedding.float(), dim=-1) @ self.train_embeddings.T
        nearest = cosine.topk(self.k, dim=-1).indices
        votes = F.one_hot(self.train_labels[nearest], self.num_classes).sum(1).float()
        # Laplace-smoothed vote shares: finite log-probabilities, the same argmax as the votes.
        return torch.log((votes + 1) / (self.k + self.num_classes))


def named_readout(kind: str, k: int) -> Readout:
    """The shipped readout `kind` (of READOUTS; `k`: knn's neighbours)."""
    return CentroidReadout if kind == "centroid" else partial(KNNReadout, k=k)


def fit_readout(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    kind: str | Readout,
    k: int = 25,
) -> nn.Module:
    """A readout of one task (`kind`: a name of READOUTS, or a readout class partly applied),
    fitted on its training split's frozen embeddings."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    readout = named_readout(kind, k) if isinstance(kind, str) else kind
    return readout(embeddings, labels, num_classes)


class FrozenReadout(Callback):
    """`entire_network_frozen`'s evaluation: embeddings once, readouts, metrics, export.

    At the first validation (or test), on the module's device and on every rank alike, it
    computes the sentence embeddings of every task and split once (unsharded, in data order),
    fits each task's readout on its training split, and hands the val and test embeddings to
    the module's embedding cache, so Lightning's loops score them without running the encoder
    again. Without `heads_from` (`model.init_from`) the readouts replace the untrained heads;
    with it the checkpoint's heads are scored and the readouts are logged beside them. After
    testing, rank 0 writes the embeddings to `dirpath` (`<task>_<split>.npz`).
    """

    changes_training = False  # it only scores and writes: a fork may differ in it

    def __init__(
        self,
        dirpath: str,
        kind: str = "centroid",
        k: int = 25,
        heads_from: str | None = None,
        readout: Readout | None = None,
    ) -> None:
        if readout is not None and not callable(readout):
            raise ConfigError(
                f"callbacks.frozen_readout.readout={readout} is not a readout class: give a node "
                "with its _target_ and _partial_: true, or null to use kind."
            )
        if kind not in READOUTS:
            raise ConfigError(
                f"callbacks.frozen_readout.kind={kind} is unknown: use one of {READOUTS}."
            )
        if k < 1:
            raise ConfigError(f"callbacks.frozen_readout.k={k} must be at least 1.")
        self.dirpath = Path(dirpath)
        self.kind = kind
        self.k = k
        self.readout = readout if readout is not None else named_readout(kind, k)
        self.heads_from = heads_from
        self.embeddings: dict[tuple[str, str], torch.Tensor] | None = None

    def _prepare(self, trainer: Trainer, module: LightningModule) -> None:
        if self.embeddings is not None:
            return
        datamodule = trainer.datamodule
        self.embeddings = compute_embeddings(module, datamodule)
        readouts = {
            task: fit_readout(
                self.embeddings["train", task],
                datamodule.datasets[task]["train"].labels,
                len(labels),
                self.readout,
            ).to(module.device)
            for task, labels in datamodule.label_names.items()
            # A readout scores one sentence's classes; other task types keep their heads (a
            # similarity head starts as the encoder's own cosine).
            if module.task_types[task].categorical and not module.task_types[task].pair
        }
        module.attach_readout(readouts, replace_heads=self.heads_from is None)
        log.info(
            "Frozen features read out by %s, fitted on the training split; %s.",
            _readout_name(self.readout),
            "the heads of model.init_from are scored beside it (*/readout_*)"
            if self.heads_from
            else "its val and test metrics are the run's",
        )
        cache = module.frozen_cache
        if cache is not None:  # the loops below read these, not the encoder
            for (split, task), values in self.embeddings.items():
                if split != "train":
                    # The cache serves an example only for the tokens it was stored with.
                    ids, mask = pad(datamodule.datasets[task][split].input_ids, datamodule.pad_id)
                    idx = torch.arange(len(values))
                    cache.embeddings.put(
                        (split, task),
                        idx,
                        values.to(module.device),
                        ids.to(module.device),
                        mask.to(module.device),
                    )

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._prepare(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._prepare(trainer, pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            written = export_embeddings(
                pl_module, trainer.datamodule, self.dirpath, self.embeddings
            )
            log.info(
                "Wrote sentence embeddings of %d task splits to %s.", len(written), self.dirpath
            )


def _readout_name(readout: Readout) -> str:
    """`KNNReadout (k=25)` for a log line."""
    if isinstance(readout, partial):
        options = ", ".join(f"{k}={v}" for k, v in readout.keywords.items())
        return f"{getattr(readout.func, '__name__', readout.func)} ({options})"
    return getattr(readout, "__name__", str(readout))
