"""The best checkpoint: chosen among the epochs whose model is the run's scenario's."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lightning import Trainer

from mtl_lightning.core.compat import SelectiveModelCheckpoint

log = logging.getLogger(__name__)


def every_epoch(epoch: int) -> bool:
    return True


class BestCheckpoint(SelectiveModelCheckpoint):
    """Lightning's `ModelCheckpoint`, with all its arguments (conf/callbacks/default.yaml:
    `checkpoints/best-epochNN.ckpt` by `val/primary_mean`), that saves, and so compares, only
    at the end of an epoch `scores(epoch)` admits. The training command sets `scores` to the
    scenario's `Scenario.scores`: `only_head_frozen` chooses its best, the model it tests and
    the score a tuning trial returns, among the epochs with its head frozen, not the joint
    warm-up's (as finetuning-scheduler's `FTSCheckpoint` keeps its best within the current
    phase). Every epoch scores otherwise.

    Its state is `ModelCheckpoint`'s, under the same key (a checkpoint written by the plain
    callback resumes into this one), with the epochs it compared: a resume whose run would not
    score one of them (another warm-up, more epochs for a head that never froze) chooses its
    best afresh, and says so."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scores: Callable[[int], bool] = every_epoch
        self.compared: set[int] = set()  # the epochs whose score it may have kept

    @property
    def state_key(self) -> str:
        return "ModelCheckpoint" + super().state_key[len(type(self).__qualname__) :]

    def saves_now(self, trainer: Trainer) -> bool:
        if not self.scores(trainer.current_epoch):
            return False
        self.compared.add(trainer.current_epoch)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "compared_epochs": sorted(self.compared)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        compared = state_dict.get("compared_epochs")
        if compared is None:  # the plain ModelCheckpoint's: which epochs it compared is unknown
            unscored = [] if self.scores(0) else [0]
        else:
            unscored = [epoch for epoch in compared if not self.scores(epoch)]
        if unscored:
            log.warning(
                "The best checkpoint in ckpt_path was chosen among epochs %s, and this run does "
                "not score %s (its scenario's best is of other epochs): it chooses its best "
                "afresh from here on.",
                compared if compared is not None else "not recorded",
                unscored,
            )
            return
        super().load_state_dict(state_dict)
        self.compared = set(compared or ())
