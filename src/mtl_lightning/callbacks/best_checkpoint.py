"""The best checkpoint: chosen among the epochs whose model is the run's scenario's."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

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
    phase). Every epoch scores otherwise. An epoch is compared only by a validation of its own
    (not one cut short by `trainer.max_steps`).

    Its state is `ModelCheckpoint`'s, under the same key (a checkpoint written by the plain
    callback resumes into this one), with the epochs it compared: a resume whose run would not
    score one of them (another warm-up, more epochs for a head that never froze) chooses its
    best afresh, and says so."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scores: Callable[[int], bool] = every_epoch
        self.compared: set[int] = set()  # the epochs whose score it may have kept
        self.validated: int | None = None  # the epoch of the latest validation while fitting

    @property
    def state_key(self) -> str:
        return "ModelCheckpoint" + super().state_key[len(type(self).__qualname__) :]

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.validated = trainer.current_epoch
        super().on_validation_end(trainer, pl_module)

    def saves_now(self, trainer: Trainer) -> bool:
        # Only by a score of the epoch's own: an epoch that ends without a validation (cut short
        # by max_steps; check_val_every_n_epoch) would be compared by an earlier epoch's score,
        # such as the warm-up's.
        epoch = trainer.current_epoch
        if epoch != self.validated or not self.scores(epoch):
            return False
        self.compared.add(epoch)
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
