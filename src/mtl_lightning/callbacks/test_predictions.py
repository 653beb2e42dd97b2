"""Per-example test predictions: `test_predictions/<task>.csv` in the run folder.

One row per test example: `idx` (its index in the task's test split, from the batch), `label`
and `pred`, as the task type's `test_rows` gives them (class ids in the order of
`summary.json`'s `tasks`; a score type's true and predicted scores). Two runs with the same data,
seed and training-set size have the same test split, so their rows pair up by `idx`: the
report's paired tests (`mtl_lightning.study.stats`) score them with the type's
`resampled_metrics`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer

from mtl_lightning.core.names import inside

PREDICTIONS_DIR = "test_predictions"


class TestPredictions(Callback):
    changes_training = False  # it only writes files: a fork may differ in it

    def __init__(self, dirpath: str | Path | None = None) -> None:
        self.dirpath = dirpath  # None: the trainer's default_root_dir (the run folder)
        self.rows: dict[str, dict[int, tuple[float, float]]] = {}

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows = {task: {} for task in pl_module.tasks}

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: dict,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        rows = self.rows[batch["task"]]
        labels, preds = outputs["rows"]
        for index, label, pred in zip(batch["idx"].tolist(), labels, preds, strict=True):
            rows[index] = (label, pred)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rows = self.rows
        for task, task_type in pl_module.task_types.items():
            # A type whose rows need the whole split (a ranking's per-query rows) gives them
            # now, on every rank alike (its metrics are synced), numbered from 0.
            split_rows = task_type.split_test_rows(pl_module.metrics["test_metrics"][task])
            if split_rows is not None:
                rows[task] = dict(enumerate(zip(*split_rows, strict=True)))
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            # Each rank saw a shard; a padded shard repeats examples, which the dict keys merge.
            shards: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(shards, rows)
            rows = {task: {} for task in pl_module.tasks}
            for shard in shards:
                for task, task_rows in shard.items():
                    rows[task].update(task_rows)
        if not trainer.is_global_zero:
            return
        folder = Path(self.dirpath or trainer.default_root_dir) / PREDICTIONS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        for task, task_rows in rows.items():
            write_predictions(inside(folder, f"{task}.csv"), task_rows)


def write_predictions(path: Path, rows: dict[int, tuple[float, float]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["idx", "label", "pred"])
        for index in sorted(rows):
            writer.writerow([index, *rows[index]])


def _number(text: str) -> int | float:
    """A class id as an int, a score as a float."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def read_predictions(path: Path) -> tuple[list[int], list[float], list[float]]:
    """`(idx, label, pred)` columns of a `test_predictions/<task>.csv`, in `idx` order."""
    with path.open(newline="", encoding="utf-8") as file:
        rows = [
            (int(r["idx"]), _number(r["label"]), _number(r["pred"])) for r in csv.DictReader(file)
        ]
    rows.sort()
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
