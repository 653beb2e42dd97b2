"""`summary.json` in the run folder: what the comparison report needs that metrics.csv lacks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Timer

SUMMARY_FILE = "summary.json"


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
) -> Path | None:
    """Write train/test wall seconds, parameter counts and the final metrics; rank 0 only.

    `trainable_params` counts what trained in the last epoch (gradual_unfreeze: the most;
    only_head_frozen: without the frozen head). `train_seconds` (see `fit_seconds`) includes
    the validation inside fit, and sums over resumes and a fork's source epochs (`fork`, from
    `Forked.summary`: those seconds were spent once, by the source run).
    """
    if not trainer.is_global_zero:
        return None
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    summary = {
        "train_seconds": train_seconds,
        "fork": fork,
        "test_seconds": timer.time_elapsed("test") if timer else None,
        "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in module.parameters()),
        # Each task's label names, in class-id order (test_predictions/<task>.csv holds ids).
        "tasks": {task: list(labels) for task, labels in getattr(module, "tasks", {}).items()},
        # Examples per task and split (after data.max_train_examples): the report's size axis
        # and the exported model card.
        "examples": _examples(trainer),
        # NaN is not JSON: a metric that never got a value is null.
        "metrics": {k: None if math.isnan(v) else v for k, v in sorted(metrics.items())},
    }
    path = Path(output_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
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
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
