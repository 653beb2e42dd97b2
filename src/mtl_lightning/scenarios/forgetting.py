"""Forgetting: what a frozen head's task loses while the encoder trains on without it."""

from __future__ import annotations

import logging
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

from mtl_lightning.scenarios.base import Scenario

log = logging.getLogger(__name__)


class Forgetting(Callback):
    """Logs `val/<head>/acc_at_freeze` and `val/<head>/forgetting` (its primary metric when it
    froze minus now) at every validation while `scenario.frozen_head(epoch)` names a head.

    It keeps each task's primary validation metric from the latest validation while its head
    trained (`last_val`), in every scenario that trains, so that a run forked from this one
    (mtl_lightning.study.fork) freezes at the value it would have read itself.
    """

    def __init__(self, scenario: Scenario, said: bool = False) -> None:
        self.scenario = scenario
        self.said = said  # `scenario.check_epochs` warned before training that it ends too early
        self.acc_at_freeze: float | None = None  # the frozen task's value when it froze
        self.last_val: dict[str, float] = {}
        self.froze = False  # a head froze in this process (before any validation, too)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        head = self.scenario.frozen_head(trainer.current_epoch)
        self.froze = self.froze or head is not None
        if head is None or self.acc_at_freeze is not None:
            return
        # The last validation before the head froze, read like every later one: the same
        # loop, precision, sharding and synced metric, so forgetting is 0 if nothing changed.
        self.acc_at_freeze = self.last_val.get(head)
        if self.acc_at_freeze is None:
            log.warning(
                "Head %s froze before any validation: val/%s/forgetting is not logged.", head, head
            )
        else:
            log.info("Head %s freezes at val accuracy %.4f.", head, self.acc_at_freeze)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.scenario.trains or trainer.sanity_checking:
            return
        fitting = trainer.state.fn == TrainerFn.FITTING
        frozen = self.scenario.frozen_head(trainer.current_epoch) if fitting else None
        # What Lightning logs as val/<task>/acc (compute() caches it, synced across ranks), or
        # the task's own primary metric for another type (a similarity's Spearman).
        values = {
            task: float(pl_module.metrics["val_metrics"][task][task_type.primary].compute())
            for task, task_type in pl_module.task_types.items()
        }
        # Each task whose head still trains (or a validation before fit).
        self.last_val.update({task: v for task, v in values.items() if task != frozen})
        if frozen is None or self.acc_at_freeze is None:
            return
        pl_module.log(f"val/{frozen}/acc_at_freeze", self.acc_at_freeze)
        pl_module.log(f"val/{frozen}/forgetting", self.acc_at_freeze - values[frozen])

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Where trainer.max_epochs ends the run too early, `check_epochs` said so before
        # training; this says it where something else did (max_steps, or a callback such as
        # early stopping; an interrupt ends in on_exception, not here). A head once frozen
        # stays frozen (`frozen_head`).
        head = self.scenario.frozen_head(2**31)  # the head it freezes, given epochs enough
        if head is None or self.froze or self.acc_at_freeze is not None or self.said:
            return
        if not trainer.is_global_zero or trainer.fast_dev_run:  # said once; not in a smoke test
            return
        if 0 < trainer.max_steps <= trainer.global_step:
            cause, fix = f"trainer.max_steps={trainer.max_steps}", "raise trainer.max_steps"
        else:
            cause = f"step {trainer.global_step} (a callback stopped it, e.g. early stopping)"
            fix = "give that callback more patience or time"
        log.warning(
            "Training stopped at %s, before the head of %s froze, so this run trained as "
            "full_finetune does, measured no forgetting and has no best checkpoint of its own "
            "(its last weights are tested): %s, or lower freezing.head_warmup_epochs.",
            cause,
            head,
            fix,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"acc_at_freeze": self.acc_at_freeze, "last_val": dict(self.last_val)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.acc_at_freeze = state_dict.get("acc_at_freeze")
        self.last_val = dict(state_dict.get("last_val") or {})
