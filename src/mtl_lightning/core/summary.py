"""`summary.json` in the run folder: what the comparison report needs that metrics.csv lacks."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
from lightning import Callback
from lightning.pytorch.callbacks import Timer

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.provenance import loaded_commit

SUMMARY_FILE = "summary.json"
log = logging.getLogger(__name__)


class PrimaryHistory(Callback):
    """Each validation's `val/primary_mean` and every task's own primary metric, by epoch: the
    summary's `best_epochs` (the best checkpoint is chosen by the mean; a task may peak
    elsewhere). Kept in checkpoints, so a resumed run still knows its earlier epochs."""

    def __init__(self) -> None:
        self.history: dict[int, dict[str, float]] = {}

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not hasattr(pl_module, "task_types"):
            return
        keys = {"primary_mean": "val/primary_mean"}
        keys |= {task: f"val/{task}/{t.primary}" for task, t in pl_module.task_types.items()}
        values = trainer.callback_metrics
        self.history[trainer.current_epoch] = {
            name: float(values[key]) for name, key in keys.items() if key in values
        }

    def state_dict(self) -> dict:
        return {"history": {str(epoch): row for epoch, row in self.history.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = {int(epoch): row for epoch, row in state_dict["history"].items()}


def best_epochs(
    history: dict[int, dict[str, float]], scores: Callable[[int], bool] | None = None
) -> dict | None:
    """`chosen`: the epoch of the best `primary_mean` (the first, as the checkpoint callback keeps
    it) among the epochs `scores` admits (the best checkpoint's, `Scenario.scores`: all by
    default); `per_task`: each task's own best epoch among them (`only_head_frozen`'s frozen
    task peaks in its warm-up, which it cannot be tested at); `note`: a sentence naming the
    tasks whose best epoch is more than one epoch from the chosen one (null when none is)."""
    if not history:
        return None

    admitted = [e for e in sorted(history) if scores is None or scores(e)]

    def best(name: str) -> int | None:
        epochs = [e for e in admitted if not math.isnan(history[e].get(name, math.nan))]
        return max(epochs, key=lambda e: history[e][name]) if epochs else None  # first max

    chosen = best("primary_mean")
    names = sorted({name for row in history.values() for name in row} - {"primary_mean"})
    per_task = {name: best(name) for name in names}
    far = {
        task: epoch
        for task, epoch in per_task.items()
        if chosen is not None and epoch is not None and abs(epoch - chosen) > 1
    }
    note = None
    if far:
        tasks = ", ".join(f"{task} at epoch {epoch}" for task, epoch in far.items())
        note = (
            f"The checkpoint is of epoch {chosen} (best val/primary_mean), but some tasks peaked "
            f"more than one epoch away ({tasks}): their test metrics are not their best; see "
            "best_epochs in summary.json and each task's val curve."
        )
    return {"chosen": chosen, "per_task": per_task, "note": note}


def fit_seconds(trainer: L.Trainer) -> float | None:
    """Wall seconds of fitting so far, from the `timer` callback (null without it).

    Read it right after `fit`: `test(ckpt_path="best")` restores the Timer's state from that
    checkpoint, which would add the checkpoint's elapsed time once more.
    """
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    return timer.time_elapsed("train") if timer else None


def write_summary(
    output_dir: Path,
    trainer: L.Trainer,
    module: L.LightningModule,
    metrics: dict[str, float],
    train_seconds: float | None,
    fork: dict | None = None,
    started: datetime | None = None,
) -> Path | None:
    """Write train/test wall seconds, parameter counts and the final metrics; rank 0 only.

    `trainable_params` counts what trained in the last epoch (gradual_unfreeze: the most;
    only_head_frozen: without the frozen head). `train_seconds` (see `fit_seconds`) includes
    the validation inside fit, and sums over resumes and a fork's source epochs (`fork`, from
    `Forked.summary`: those seconds were spent once, by the source run). `started` and
    `finished`: when this process began the run (a resume: the resumed part) and wrote this, UTC.
    """
    if not trainer.is_global_zero:
        return None
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    history = next((c for c in trainer.callbacks if isinstance(c, PrimaryHistory)), None)
    # The best checkpoint's choice among the epochs it scores (BestCheckpoint: the scenario's).
    scores = getattr(getattr(trainer, "checkpoint_callback", None), "scores", None)
    epochs = best_epochs(history.history, scores) if history else None
    if epochs and epochs["note"]:
        log.warning(epochs["note"])
    summary = {
        "train_seconds": train_seconds,
        "fork": fork,
        "test_seconds": timer.time_elapsed("test") if timer else None,
        "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in module.parameters()),
        # Each task's label names, in class-id order (test_predictions/<task>.csv holds ids).
        "tasks": {task: list(labels) for task, labels in getattr(module, "tasks", {}).items()},
        # Each task's type as its checkpoint stores it (`TaskType.spec`): the report asks the
        # type which metrics to show and how to compare runs on them.
        "task_types": {
            task: kind.spec() for task, kind in getattr(module, "task_types", {}).items()
        },
        # Examples per task and split (after data.max_train_examples): the report's size axis
        # and the exported model card.
        "examples": _examples(trainer),
        # The splits each task's source gave; the others were carved out of its train split.
        "given_splits": getattr(getattr(trainer, "datamodule", None), "given_splits", None),
        # The project's git commit the run's code came from (null outside a git checkout): as
        # the process found it when it loaded the code, before its first run.
        "commit": loaded_commit(),
        "started": started.astimezone(timezone.utc).isoformat(timespec="seconds")
        if started
        else None,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # The epoch the best checkpoint is of, each task's own best validation epoch, and a note
        # when they differ by more than one epoch (`best_epochs`).
        "best_epochs": epochs,
        # NaN is not JSON: a metric that never got a value is null.
        "metrics": {k: None if math.isnan(v) else v for k, v in sorted(metrics.items())},
    }
    path = Path(output_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside it and renamed into place: a process killed mid-write leaves no half a
    # summary, which would read as a finished run.
    partial = path.with_name(f".{SUMMARY_FILE}.{os.getpid()}.partial")
    partial.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def _examples(trainer: L.Trainer) -> dict[str, dict[str, int]]:
    datasets = getattr(getattr(trainer, "datamodule", None), "datasets", None) or {}
    return {
        task: {split: len(data) for split, data in splits.items()}
        for task, splits in datasets.items()
    }


def read_summary(run_dir: Path) -> dict:
    """The run's summary, or `{}` for a run written before summaries existed."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"{path} is not valid JSON ({error}), cut off by a process stopped mid-write: "
            "rerun that run, or delete the file to treat the run as unfinished."
        ) from None
