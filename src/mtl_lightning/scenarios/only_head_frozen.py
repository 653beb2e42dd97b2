"""`only_head_frozen`: continual learning; one task's trained head is frozen while the encoder
and the other heads train on, and `Forgetting` logs what the frozen task loses."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.rules import Rule, int_at_least
from mtl_lightning.scenarios.base import Plan, Scenario, need_task

log = logging.getLogger(__name__)


class OnlyHeadFrozen(Scenario):
    """The head of task `head` is frozen from epoch `head_warmup_epochs` on (before that
    everything trains, so the frozen head is a trained one). Null settles by where the run
    starts: 0 with `model.init_from`, whose head is trained already, else
    `fresh_head_warmup_epochs` (conf/experiment/only_head_frozen.yaml sets its search's choice,
    2). The encoder and the other heads train, and the
    frozen task leaves the loss. From then on, every validation logs `val/<head>/forgetting`:
    its accuracy when it froze minus now (mtl_lightning.scenarios.forgetting). The best
    checkpoint, the one tested, is chosen among the epochs with the head frozen (`scores`): the
    warm-up's models are a joint fine-tuning's, not this scenario's."""

    name = "only_head_frozen"
    RULES = {
        **Scenario.RULES,
        "head": Rule(str, example="classification"),
        "head_warmup_epochs": int_at_least(1, least=0, nullable=True),
        "fresh_head_warmup_epochs": int_at_least(2),
    }

    def __init__(
        self,
        head: str = "classification",
        head_warmup_epochs: int | None = None,
        fresh_head_warmup_epochs: int = 1,
        keep_frozen_layers: int = 0,
    ) -> None:
        super().__init__(keep_frozen_layers)
        self.check_values(
            head=head,
            head_warmup_epochs=head_warmup_epochs,
            fresh_head_warmup_epochs=fresh_head_warmup_epochs,
        )
        self.head = head
        self.head_warmup_epochs = head_warmup_epochs
        self.fresh_head_warmup_epochs = fresh_head_warmup_epochs
        self.fresh = head_warmup_epochs is None  # settled by `fresh_head_warmup_epochs`
        self.never_freezes = False  # trainer.max_epochs ends the run first (`check_epochs`)

    def configure(self, init_from: str | None) -> None:
        if self.head_warmup_epochs is None:
            self.head_warmup_epochs = 0 if init_from else self.fresh_head_warmup_epochs
        self.fresh = self.fresh and not init_from

    def settings(self) -> dict[str, Any]:
        shown = super().settings()
        if not self.fresh:  # an explicit warm-up, or 0 from model.init_from: it did not act
            shown.pop("fresh_head_warmup_epochs")
        return shown

    def trainable(
        self, epoch: int, heads: frozenset[str], num_groups: int, step: int | None
    ) -> Plan:
        return Plan(heads - {self.head} if self.frozen_head(epoch) else heads, num_groups)

    @property
    def warmup(self) -> int:
        """The epoch the head freezes from (not configured yet: a fresh run's)."""
        if self.head_warmup_epochs is None:
            return self.fresh_head_warmup_epochs
        return self.head_warmup_epochs

    def frozen_head(self, epoch: int) -> str | None:
        return self.head if epoch >= self.warmup else None

    def scores(self, epoch: int) -> bool:
        # A run whose head never freezes trains as full_finetune does (check_epochs said so).
        return self.frozen_head(epoch) is not None or self.never_freezes

    @property
    def heads_change(self) -> bool:
        return self.frozen_head(0) is None

    def check_tasks(self, tasks: list[str], new_heads: list[str] = ()) -> None:
        need_task("freezing.head", self.head, list(tasks))
        if self.frozen_head(0) is not None and self.head in new_heads:
            raise ConfigError(
                f"freezing.head={self.head} has no head in model.init_from, so it would freeze "
                "untrained: freeze a task that checkpoint was trained on, or set "
                "freezing.head_warmup_epochs=1 to train it first."
            )

    def check_epochs(self, max_epochs: int | None) -> bool:
        if max_epochs is None or max_epochs <= 0 or self.frozen_head(max_epochs - 1) is not None:
            return False
        self.never_freezes = True
        warmup = self.warmup
        if self.fresh:  # null, settled (or to be) by the fresh run's key
            key = f"freezing.head_warmup_epochs=null (freezing.fresh_head_warmup_epochs={warmup})"
        else:
            key = f"freezing.head_warmup_epochs={warmup}"
        fix = f"trainer.max_epochs={warmup + 1}"
        if max_epochs > 1:  # a fresh head trains at least one epoch before it freezes
            fix += f", or freezing.head_warmup_epochs={max_epochs - 1}"
        if rank_zero_only.rank == 0:  # the same on every rank: said once
            log.warning(
                "%s is not below trainer.max_epochs=%s: the head of %s never freezes, so this "
                "run trains as full_finetune does and measures no forgetting; set %s.",
                key,
                max_epochs,
                self.head,
                fix,
            )
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head, "head_warmup_epochs": self.head_warmup_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # The forgetting a resumed run logs is measured against the head that froze then.
        saved = state.get("head")
        if saved is not None and saved != self.head:
            raise ConfigError(
                f"ckpt_path froze the head of {saved}, not freezing.head={self.head}: resume with "
                f"freezing.head={saved}, or start a new run to freeze {self.head}."
            )
        # And the epoch it froze in. Older checkpoints do not record it; a null warm-up froze a
        # fresh run's head from epoch 1 then.
        warmup = state.get("head_warmup_epochs", 1 if self.fresh else None)
        if warmup is not None and warmup != self.head_warmup_epochs:
            raise ConfigError(
                f"ckpt_path freezes the head of {self.head} from epoch {warmup}, not from "
                f"freezing.head_warmup_epochs={self.head_warmup_epochs}: resume with "
                f"freezing.head_warmup_epochs={warmup}, or start a new run."
            )
