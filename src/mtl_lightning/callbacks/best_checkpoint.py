"""The best checkpoint: chosen among the epochs whose model is the run's scenario's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning import Trainer

from mtl_lightning.core.compat import SelectiveModelCheckpoint


def every_epoch(epoch: int) -> bool:
    return True


class BestCheckpoint(SelectiveModelCheckpoint):
    """Lightning's `ModelCheckpoint`, with all its arguments (conf/callbacks/default.yaml:
    `checkpoints/best-epochNN.ckpt` by `val/primary_mean`), that saves, and so compares, only
    at the end of an epoch `scores(epoch)` admits. The training command sets `scores` to the
    scenario's `Scenario.scores`: `only_head_frozen` chooses its best, the model it tests and
    the score a tuning trial returns, among the epochs with its head frozen, not the joint
    warm-up's (as finetuning-scheduler's `FTSCheckpoint` keeps its best within the current
    phase). Every epoch scores otherwise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scores: Callable[[int], bool] = every_epoch

    def saves_now(self, trainer: Trainer) -> bool:
        return self.scores(trainer.current_epoch)
