"""The one callback that applies any scenario's plan to the model, step by step.

`apply_plan` makes a `Plan` so: `requires_grad` on the parameters, and train mode for trainable
modules, eval mode for frozen ones (so dropout is off where nothing learns: `from_pretrained`
returns eval mode and Lightning does not call `.train()` for us).

Optimizer groups are never added or removed here: all exist from the start (schedulers ignore
groups added later, and DDP must see every parameter when it wraps the model).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

from mtl_lightning.core.compat import accumulating
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.scenarios.base import Plan, Scenario

log = logging.getLogger(__name__)


def apply_plan(module: LightningModule, plan: Plan) -> int:
    """Set what trains in `module` (its `encoder_groups()`, bottom to top, `heads`, and the
    adapters on its encoder, `adapter_parts()`) as `plan` says; return the number of trainable
    parameters."""
    groups = module.encoder_groups()
    module.train()
    # Containers (the HF model itself, `encoder`, ...) are in train mode only when all of it
    # trains; each group then sets its own blocks, which hold every dropout.
    module.encoder.train(plan.encoder_groups == len(groups))
    for position, group in enumerate(reversed(groups)):
        trainable = position < plan.encoder_groups
        for param in group.params:
            param.requires_grad_(trainable)
        for submodule in group.modules:
            submodule.train(trainable)
    for task, head in module.heads.items():
        head.requires_grad_(task in plan.heads)
        head.train(task in plan.heads)
    # After the groups, which hold the adapter layers: an adapter trains (and its dropout is on)
    # where the plan says, whatever its layer's group does.
    for name, (params, modules) in module.adapter_parts().items():
        for param in params:
            param.requires_grad_(name in plan.adapters)
        for submodule in modules:
            submodule.train(name in plan.adapters)
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class FreezingSchedule(Callback):
    """Applies `scenario`'s plan at the start, at every epoch and whenever it changes within
    one; gives the module the encoder groups' start steps for its LR schedule, and the
    datamodule the tasks whose heads train; passes validations to the scenario where it
    monitors a metric; logs `freeze/trainable_params` and `freeze/unfrozen_layers`."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.applied_plan: Plan | None = None
        self.counted_epoch: int | None = None  # the epoch whose trainable counts are logged
        self.trainable_params = 0
        self.fork: dict[str, Any] | None = None  # where this run forked from (study.fork)

    def apply(self, module: LightningModule, epoch: int, step: int | None = None) -> Plan:
        plan = self.scenario.plan(epoch, list(module.heads), len(module.encoder_groups()), step)
        self.trainable_params = apply_plan(module, plan)
        self.applied_plan = plan
        return plan

    def _bind(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # From the data, not `trainer.num_training_batches`: with max_epochs=-1 Lightning has
        # not built the train loader when the LR schedule asks (configure_optimizers).
        self.scenario.bind(len(pl_module.encoder_groups()), lambda: pl_module.epoch_steps(0))

    def group_starts(self, trainer: Trainer, names: list[str]) -> Mapping[str, int]:
        """{encoder group name (top group first): the optimizer step from which it trains},
        for the module's LR schedule; a step past the run for a group that never trains."""
        total = trainer.estimated_stepping_batches
        never = int(total) + 1 if math.isfinite(total) else 2**62
        self._bind(trainer, trainer.lightning_module)
        return self.scenario.group_starts(names, never)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        pl_module.unfreezing = self  # the module's LR schedule asks `group_starts`
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "train_tasks"):
            return
        # Train loaders hold only the tasks whose head trains in their epoch (see
        # `MultiTaskDataModule.tasks_training_in`); when that set changes during the run,
        # Lightning rebuilds the train loader at every epoch start.
        tasks, groups = list(pl_module.heads), len(pl_module.encoder_groups())
        datamodule.train_tasks = lambda epoch: self.scenario.plan(epoch, tasks, groups).heads
        if self.scenario.heads_change:
            trainer.reload_dataloaders_every_n_epochs = 1

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After the strategy has wrapped the model (DDP registers every parameter that required
        # grad then), before the fit loop looks at train/eval modes.
        self.scenario.check_tasks(list(pl_module.heads))
        self.apply(pl_module, trainer.current_epoch)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A resumed run's epoch is only known now (loops restore after `on_fit_start`), and a
        # run resumed mid-epoch gets no `on_train_epoch_start` for that epoch.
        self._bind(trainer, pl_module)
        self.apply(pl_module, trainer.current_epoch, trainer.global_step)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        plan = self.apply(pl_module, trainer.current_epoch, trainer.global_step)
        self._log_plan(f"Epoch {trainer.current_epoch}", plan, pl_module)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The pace may be in steps: the plan can change within an epoch.
        step = trainer.global_step
        groups = len(pl_module.encoder_groups())
        plan = self.scenario.plan(trainer.current_epoch, list(pl_module.heads), groups, step)
        if plan != self.applied_plan:
            self.apply(pl_module, trainer.current_epoch, step)
            self._log_plan(f"Step {step}", plan, pl_module)
            self.counted_epoch = None
        if self.counted_epoch != trainer.current_epoch:
            # The most of the epoch (a step pace unfreezes within it): logged at the epoch's
            # first batch and where the plan changes, not at every step (a log costs ~1 ms).
            kwargs = {"on_step": False, "on_epoch": True, "reduce_fx": "max", "batch_size": 1}
            pl_module.log("freeze/trainable_params", float(self.trainable_params), **kwargs)
            pl_module.log("freeze/unfrozen_layers", float(plan.encoder_groups), **kwargs)
            self.counted_epoch = trainer.current_epoch

    def _log_plan(self, when: str, plan: Plan, pl_module: LightningModule) -> None:
        log.info(
            "%s (%s): heads training %s, %d/%d encoder groups unfrozen%s, %d trainable params.",
            when,
            self.scenario.name,
            sorted(plan.heads),
            plan.encoder_groups,
            len(pl_module.encoder_groups()),
            f", adapters training {sorted(plan.adapters)}" if plan.adapters else "",
            self.trainable_params,
        )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After every metric of the validation is logged (as EarlyStopping reads them).
        monitor = self.scenario.monitor
        if monitor is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(monitor)
        if value is None:
            logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
            raise ConfigError(
                f"freezing.plateau_monitor={monitor} is not logged at validation: use one of "
                f"{logged}."
            )
        self.scenario.observe(
            float(value), trainer.global_step, accumulating(trainer), trainer.strategy.broadcast
        )

    def state_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario.name, "fork": self.fork, **self.scenario.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("scenario") != self.scenario.name:
            raise ConfigError(
                f"ckpt_path was trained with experiment={state_dict.get('scenario')}, not "
                f"{self.scenario.name}: resume with the same experiment."
            )
        self.fork = state_dict.get("fork")
        self.scenario.load_state_dict(state_dict)
