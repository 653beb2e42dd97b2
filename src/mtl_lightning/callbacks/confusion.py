"""Per-task confusion matrices at test end: a W&B chart per task and `confusion_<task>.csv`.

Counts are accumulated from what `test_step` returns (`preds`, `labels`) and summed over
processes, so the matrix covers the whole test split under DDP too (the last shard is padded
with repeated batches, as DistributedSampler does, so a few examples may count twice there).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from mtl_lightning.core.names import inside


class ConfusionMatrix(Callback):
    """Rows are true labels, columns predicted ones, in each task's class-id order."""

    changes_training = False  # it only writes files: a fork may differ in it

    def __init__(self, dirpath: str | Path | None = None) -> None:
        self.dirpath = dirpath  # None: the trainer's default_root_dir (the run folder)
        self.counts: dict[str, torch.Tensor] = {}

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every task gets a matrix on every process, so the all-reduce below never waits for a
        # process that saw no batch of a task.
        self.counts = {
            task: torch.zeros(len(labels), len(labels), dtype=torch.long, device=pl_module.device)
            for task, labels in pl_module.tasks.items()
            if pl_module.task_types[task].categorical  # a score has no classes to confuse
        }

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: dict,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        counts = self.counts.get(batch["task"])
        if counts is None:  # a task type without classes
            return
        n = counts.shape[0]
        flat = outputs["labels"].to(counts.device) * n + outputs["preds"].to(counts.device)
        counts += torch.bincount(flat, minlength=n * n).reshape(n, n)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        counts = {
            task: trainer.strategy.reduce(matrix, reduce_op="sum").cpu()
            for task, matrix in self.counts.items()
        }
        if not trainer.is_global_zero:
            return
        folder = Path(self.dirpath or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        for task, matrix in counts.items():
            labels = pl_module.tasks[task]
            write_confusion_csv(inside(folder, f"confusion_{task}.csv"), labels, matrix)
            if wandb_loggers:
                chart = _wandb_chart(task, labels, matrix)
                for logger in wandb_loggers:
                    logger.experiment.log({f"test/{task}/confusion_matrix": chart})


def write_confusion_csv(path: Path, labels: list[str], matrix: torch.Tensor) -> None:
    """Header `true\\predicted,<labels>`, then one row of counts per true label."""
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["true\\predicted", *labels])
        for label, row in zip(labels, matrix.tolist(), strict=True):
            writer.writerow([label, *row])


def _wandb_chart(task: str, labels: list[str], matrix: torch.Tensor):
    import wandb

    # wandb's chart counts (true, predicted) pairs itself: expand the matrix back into them.
    n = len(labels)
    pairs = torch.arange(n * n).repeat_interleave(matrix.reshape(-1))
    return wandb.plot.confusion_matrix(
        y_true=(pairs // n).tolist(),
        preds=(pairs % n).tolist(),
        class_names=list(labels),
        title=f"{task}: test confusion matrix",
    )
