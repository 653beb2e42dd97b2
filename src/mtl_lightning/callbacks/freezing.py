"""What is trainable from epoch e: the five freezing scenarios as one schedule.

`FreezingSchedule.plan(epoch)` says which heads and how many encoder layer groups (counted from
the top) train in that epoch; `apply` makes it so: `requires_grad` on the parameters, and train
mode for trainable modules, eval mode for frozen ones (so dropout is off where nothing learns:
`from_pretrained` returns eval mode and Lightning does not call `.train()` for us).

Optimizer groups are never added or removed here: all exist from the start (DESIGN.md, decision 3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lightning import Callback, LightningModule, Trainer

from mtl_lightning.errors import ConfigError

log = logging.getLogger(__name__)

SCENARIOS = (
    "full_finetune",
    "entire_network_frozen",
    "only_transformer_frozen",
    "only_head_frozen",
    "gradual_unfreeze",
)


@dataclass(frozen=True)
class Plan:
    """Trainable heads, and trainable encoder groups counted from the top (`None`: all)."""

    heads: frozenset[str]
    encoder_groups: int | None


class FreezingSchedule(Callback):
    """Owns `requires_grad` and train/eval mode of the encoder groups and heads, epoch by epoch.

    - `full_finetune`: everything trains.
    - `entire_network_frozen`: nothing trains (`train()` then only evaluates and exports
      embeddings).
    - `only_transformer_frozen`: the encoder is frozen, the heads train.
    - `only_head_frozen`: the head of task `head` is frozen from epoch `head_warmup_epochs` on
      (before that everything trains, so the frozen head is a trained one); the encoder and
      the other heads train, and the frozen task leaves the loss.
    - `gradual_unfreeze`: epoch 0 trains the heads only; then one more encoder group unfreezes
      every `every_n_epochs`, from the top layer down, the embeddings last (if
      `unfreeze_embeddings`).
    """

    def __init__(
        self,
        scenario: str = "full_finetune",
        head: str = "classification",
        head_warmup_epochs: int = 1,
        every_n_epochs: int = 1,
        unfreeze_embeddings: bool = True,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ConfigError(f"freezing.scenario={scenario} is unknown: use one of {SCENARIOS}.")
        if every_n_epochs < 1:
            raise ConfigError(f"freezing.every_n_epochs={every_n_epochs} must be at least 1.")
        self.scenario = scenario
        self.head = head
        self.head_warmup_epochs = head_warmup_epochs
        self.every_n_epochs = every_n_epochs
        self.unfreeze_embeddings = unfreeze_embeddings
        self.applied_epoch: int | None = None

    @property
    def trains_nothing(self) -> bool:
        return self.scenario == "entire_network_frozen"

    def check_tasks(self, tasks: list[str]) -> None:
        if self.scenario == "only_head_frozen" and self.head not in tasks:
            raise ConfigError(f"freezing.head={self.head} is not a task: use one of {tasks}.")

    def plan(self, epoch: int, tasks: list[str], num_groups: int) -> Plan:
        all_heads = frozenset(tasks)
        if self.scenario == "full_finetune":
            return Plan(all_heads, None)
        if self.scenario == "entire_network_frozen":
            return Plan(frozenset(), 0)
        if self.scenario == "only_transformer_frozen":
            return Plan(all_heads, 0)
        if self.scenario == "only_head_frozen":
            if epoch < self.head_warmup_epochs:
                return Plan(all_heads, None)
            return Plan(all_heads - {self.head}, None)
        unfreezable = num_groups if self.unfreeze_embeddings else num_groups - 1
        return Plan(all_heads, min(unfreezable, epoch // self.every_n_epochs))

    def apply(self, module: LightningModule, epoch: int) -> Plan:
        groups = module.encoder_groups()  # bottom to top
        plan = self.plan(epoch, list(module.heads), len(groups))
        depth = len(groups) if plan.encoder_groups is None else plan.encoder_groups
        module.train()
        # Containers (the HF model itself, `encoder`, ...) are in train mode only when all of it
        # trains; each group then sets its own blocks, which hold every dropout.
        module.encoder.model.train(depth == len(groups))
        for position, group in enumerate(reversed(groups)):
            trainable = position < depth
            for param in group.params:
                param.requires_grad_(trainable)
            for submodule in group.modules:
                submodule.train(trainable)
        for task, head in module.heads.items():
            head.requires_grad_(task in plan.heads)
            head.train(task in plan.heads)
        self.applied_epoch = epoch
        return plan

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After the strategy has wrapped the model (DDP registers every parameter that required
        # grad then), before the fit loop looks at train/eval modes.
        self.check_tasks(list(pl_module.heads))
        self.apply(pl_module, trainer.current_epoch)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        plan = self.apply(pl_module, trainer.current_epoch)
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        groups = len(pl_module.encoder_groups())
        unfrozen = groups if plan.encoder_groups is None else plan.encoder_groups
        log.info(
            "Epoch %d (%s): heads training %s, %d/%d encoder groups unfrozen, %d trainable params.",
            trainer.current_epoch,
            self.scenario,
            sorted(plan.heads),
            unfrozen,
            groups,
            trainable,
        )
        pl_module.log("freeze/trainable_params", float(trainable), on_step=False, on_epoch=True)
        pl_module.log("freeze/unfrozen_layers", float(unfrozen), on_step=False, on_epoch=True)

    def state_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "applied_epoch": self.applied_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("scenario") != self.scenario:
            raise ConfigError(
                f"ckpt_path was trained with freezing.scenario={state_dict.get('scenario')}, not "
                f"{self.scenario}: resume with the same experiment."
            )
        self.applied_epoch = state_dict.get("applied_epoch")
