"""What is trainable from epoch e: the five freezing scenarios as one schedule.

`FreezingSchedule.plan(epoch)` says which heads and how many encoder layer groups (counted from
the top) train in that epoch; `apply` makes it so: `requires_grad` on the parameters, and train
mode for trainable modules, eval mode for frozen ones (so dropout is off where nothing learns:
`from_pretrained` returns eval mode and Lightning does not call `.train()` for us).

Optimizer groups are never added or removed here: all exist from the start (schedulers ignore
groups added later, and DDP must see every parameter when it wraps the model).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

from mtl_lightning.core.compat import accumulating
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.rules import Rule, check_values, int_at_least

log = logging.getLogger(__name__)

NO_PLATEAU = {"stage": None, "best": None, "wait": 0}  # a stage's best and validations since

SCENARIOS = (
    "full_finetune",
    "entire_network_frozen",
    "only_transformer_frozen",
    "only_head_frozen",
    "gradual_unfreeze",
)


# What each key of conf/train.yaml's `freezing` node accepts (mtl_lightning.core.rules).
FREEZING_RULES: dict[str, Rule] = {
    "scenario": Rule(str, example="full_finetune"),
    "head": Rule(str, example="classification"),
    "head_warmup_epochs": int_at_least(1, least=0, nullable=True),
    "every_n_epochs": Rule(float, "above 0 (0.25: a quarter epoch)", lambda v: v > 0, 1),
    "unfreeze_every_steps": int_at_least(200, nullable=True),
    "unfreeze_embeddings": Rule(bool, example="true"),
    "keep_frozen_layers": int_at_least(2, least=0),
    "plateau_patience": int_at_least(2, nullable=True),
    "plateau_monitor": Rule(str, example="val/primary_mean"),
    "plateau_mode": Rule(str, "max or min", ("max", "min").__contains__, "max"),
}


@dataclass(frozen=True)
class Plan:
    """Trainable heads, and how many encoder layer groups train, counted from the top."""

    heads: frozenset[str]
    encoder_groups: int


class FreezingSchedule(Callback):
    """Owns `requires_grad` and train/eval mode of the encoder groups and heads, epoch by epoch.

    - `full_finetune`: everything trains.
    - `entire_network_frozen`: nothing trains (`train()` then only evaluates and exports
      embeddings).
    - `only_transformer_frozen`: the encoder is frozen, the heads train.
    - `only_head_frozen`: the head of task `head` is frozen from epoch `head_warmup_epochs` on
      (before that everything trains, so the frozen head is a trained one); the encoder and
      the other heads train, and the frozen task leaves the loss. From then on, every
      validation logs `val/<head>/forgetting`: its accuracy when it froze minus now.
    - `gradual_unfreeze`: the first stage trains the heads only; then one more encoder group
      unfreezes every stage, from the top layer down, the embeddings last (if
      `unfreeze_embeddings`). A stage is `unfreeze_every_steps` optimizer steps, or else
      `every_n_epochs` epochs (a fraction such as 0.25 allowed); the position is read from
      `trainer.global_step` before every batch, so a run resumed mid-stage is exact. Each
      group's learning rate warms up from the step it unfreezes (`group_starts`, used by the
      module's LR schedule). With `plateau_patience`, a stage also ends early, FTS-style, once
      `plateau_monitor` has not improved (`plateau_mode`) on its best in the stage for that
      many validations; the pace is then each stage's longest.

    `keep_frozen_layers=N` keeps the embeddings and the bottom N layers frozen for the whole run,
    in every scenario ("lower layers capture syntax, best kept stable").
    """

    def __init__(
        self,
        scenario: str = "full_finetune",
        head: str = "classification",
        head_warmup_epochs: int = 1,
        every_n_epochs: float = 1,
        unfreeze_embeddings: bool = True,
        keep_frozen_layers: int = 0,
        unfreeze_every_steps: int | None = None,
        plateau_patience: int | None = None,
        plateau_monitor: str = "val/primary_mean",
        plateau_mode: str = "max",
    ) -> None:
        if scenario not in SCENARIOS:
            raise ConfigError(f"freezing.scenario={scenario} is unknown: use one of {SCENARIOS}.")
        check_values(
            "freezing",
            {
                "head_warmup_epochs": head_warmup_epochs,
                "every_n_epochs": every_n_epochs,
                "unfreeze_every_steps": unfreeze_every_steps,
                "unfreeze_embeddings": unfreeze_embeddings,
                "keep_frozen_layers": keep_frozen_layers,
                "plateau_patience": plateau_patience,
                "plateau_monitor": plateau_monitor,
                "plateau_mode": plateau_mode,
            },
            FREEZING_RULES,
        )
        self.scenario = scenario
        self.head = head
        self.head_warmup_epochs = head_warmup_epochs
        self.every_n_epochs = every_n_epochs
        self.unfreeze_every_steps = unfreeze_every_steps
        self.stage_steps: int | None = None  # optimizer steps per stage, once the data is known
        self.applied_plan: Plan | None = None
        self._trainable_params = 0
        self.unfreeze_embeddings = unfreeze_embeddings
        self.keep_frozen_layers = keep_frozen_layers
        self.acc_at_freeze: float | None = None  # only_head_frozen: the frozen task's val accuracy
        # {task: its primary val metric} at the latest validation while its head trained: the
        # frozen head's is what it freezes at (kept in every scenario, for a fork; fork.py).
        self.last_val: dict[str, float] = {}
        self.fork: dict[str, Any] | None = (
            None  # where this run forked from (mtl_lightning.study.fork)
        )
        self.plateau_patience = plateau_patience
        self.plateau_monitor = plateau_monitor
        self.plateau_mode = plateau_mode
        # gradual_unfreeze with plateau_patience: {stage: the step the next one began at}, for
        # each stage a plateau ended before its pace did; and the current stage's best and
        # validations since it (all in the checkpoint, so a resumed run is exact).
        self.plateaus: dict[int, int] = {}
        self._plateau = dict(NO_PLATEAU)
        self._deepest: int | None = None  # encoder groups gradual_unfreeze reaches

    @property
    def trains_nothing(self) -> bool:
        return self.scenario == "entire_network_frozen"

    def check_tasks(self, tasks: list[str]) -> None:
        if self.scenario == "only_head_frozen" and self.head not in tasks:
            raise ConfigError(f"freezing.head={self.head} is not a task: use one of {tasks}.")

    def steps_per_stage(self, trainer: Trainer) -> int:
        """Optimizer steps between two unfreezes of `gradual_unfreeze`."""
        if self.unfreeze_every_steps is not None:
            return self.unfreeze_every_steps
        # From the data, not `trainer.num_training_batches`: with max_epochs=-1 Lightning has
        # not built the train loader when the LR schedule asks (configure_optimizers).
        steps_per_epoch = trainer.lightning_module.epoch_steps(0)
        if steps_per_epoch is None:
            raise ConfigError(
                "freezing.every_n_epochs needs to know the epoch's length, which this datamodule "
                "does not give: set freezing.unfreeze_every_steps instead."
            )
        return max(1, round(self.every_n_epochs * steps_per_epoch))

    def group_starts(self, trainer: Trainer, names: list[str]) -> Mapping[str, int]:
        """{encoder group name (top group first): the optimizer step from which it trains}, for
        the LR schedule. A group that never trains: a step past the run. Heads train from step 0.
        Read live: a plateau (`plateau_patience`) moves the next groups' starts earlier."""
        total = trainer.estimated_stepping_batches
        never = int(total) + 1 if math.isfinite(total) else 2**62
        num_groups = len(names)
        if self.scenario != "gradual_unfreeze":
            depth = self.plan(0, [], num_groups).encoder_groups
            return {name: 0 if g < depth else never for g, name in enumerate(names)}
        self.stage_steps = self.steps_per_stage(trainer)
        self._deepest = self._depth_limit(num_groups)
        return GroupStarts(self, names, self._deepest, never)

    def _kept_frozen_cap(self, num_groups: int) -> int:
        """The most encoder groups that may train under `keep_frozen_layers`."""
        if not self.keep_frozen_layers:
            return num_groups
        return max(0, num_groups - 1 - self.keep_frozen_layers)

    def _depth_limit(self, num_groups: int) -> int:
        """How many encoder groups gradual_unfreeze unfreezes in the end."""
        unfreezable = num_groups if self.unfreeze_embeddings else num_groups - 1
        return min(unfreezable, self._kept_frozen_cap(num_groups))

    def stage_start(self, stage: int) -> int:
        """The optimizer step at which gradual_unfreeze's `stage` begins (stage 0: step 0)."""
        begin = 0
        for ended in range(stage):
            begin = self.plateaus.get(ended, begin + self.stage_steps)
        return begin

    def stage_at(self, step: int, cap: int) -> int:
        """gradual_unfreeze's stage at optimizer `step` (at most `cap`)."""
        stage = 0
        while stage < cap and self.stage_start(stage + 1) <= step:
            stage += 1
        return stage

    def plan(self, epoch: int, tasks: list[str], num_groups: int, step: int | None = None) -> Plan:
        """What trains in `epoch` (at optimizer `step`, when the pace is in steps), for an
        encoder of `num_groups` layer groups (embeddings + L)."""
        heads = frozenset(tasks)
        depth = num_groups
        if self.scenario == "entire_network_frozen":
            heads, depth = frozenset(), 0
        elif self.scenario == "only_transformer_frozen":
            depth = 0
        elif self.scenario == "only_head_frozen" and epoch >= self.head_warmup_epochs:
            heads = heads - {self.head}
        elif self.scenario == "gradual_unfreeze":
            cap = self._depth_limit(num_groups)
            if step is not None and self.stage_steps is not None:
                depth = self.stage_at(step, cap)
            else:
                depth = min(cap, int(epoch // self.every_n_epochs))
        return Plan(heads, min(depth, self._kept_frozen_cap(num_groups)))

    def apply(self, module: LightningModule, epoch: int, step: int | None = None) -> Plan:
        groups = module.encoder_groups()  # bottom to top
        plan = self.plan(epoch, list(module.heads), len(groups), step)
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
        self.applied_plan = plan
        self._trainable_params = sum(p.numel() for p in module.parameters() if p.requires_grad)
        return plan

    def _head_frozen_in(self, epoch: int) -> bool:
        return self.scenario == "only_head_frozen" and epoch >= self.head_warmup_epochs

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Train loaders hold only the tasks whose head trains in their epoch (see
        # `MultiTaskDataModule.tasks_training_in`); when that set changes during the run,
        # Lightning rebuilds the train loader at every epoch start.
        if stage == "fit":  # the module's LR schedule warms each group up from its start
            pl_module.unfreezing = self
        datamodule = trainer.datamodule
        if stage != "fit" or not hasattr(datamodule, "train_tasks"):
            return
        tasks, groups = list(pl_module.heads), len(pl_module.encoder_groups())
        datamodule.train_tasks = lambda epoch: self.plan(epoch, tasks, groups).heads
        if self.scenario == "only_head_frozen" and self.head_warmup_epochs > 0:
            trainer.reload_dataloaders_every_n_epochs = 1

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After the strategy has wrapped the model (DDP registers every parameter that required
        # grad then), before the fit loop looks at train/eval modes.
        self.check_tasks(list(pl_module.heads))
        self.apply(pl_module, trainer.current_epoch)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A resumed run's epoch is only known now (loops restore after `on_fit_start`), and a
        # run resumed mid-epoch gets no `on_train_epoch_start` for that epoch.
        if self.scenario == "gradual_unfreeze" and self.stage_steps is None:
            # Normally set already, with the LR schedule's group starts (one value for both).
            self.stage_steps = self.steps_per_stage(trainer)
            self._deepest = self._depth_limit(len(pl_module.encoder_groups()))
        self.apply(pl_module, trainer.current_epoch, trainer.global_step)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The pace may be in steps: the plan can change within an epoch.
        groups = len(pl_module.encoder_groups())
        step = trainer.global_step
        plan = self.plan(trainer.current_epoch, list(pl_module.heads), groups, step)
        if plan != self.applied_plan:
            self.apply(pl_module, trainer.current_epoch, step)
            log.info(
                "Step %d (%s): heads training %s, %d/%d encoder groups unfrozen, %d trainable "
                "params.",
                step,
                self.scenario,
                sorted(plan.heads),
                plan.encoder_groups,
                groups,
                self._trainable_params,
            )
        # The most of the epoch (a step pace unfreezes within it).
        kwargs = {"on_step": False, "on_epoch": True, "reduce_fx": "max", "batch_size": 1}
        pl_module.log("freeze/trainable_params", float(self._trainable_params), **kwargs)
        pl_module.log("freeze/unfrozen_layers", float(plan.encoder_groups), **kwargs)

    @property
    def validates_before_fit(self) -> bool:
        """`only_head_frozen` frozen from the first epoch (with `model.init_from`): the accuracy
        it freezes at comes from a validation before training (`train()` runs it)."""
        return self._head_frozen_in(0) and self.acc_at_freeze is None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if self._head_frozen_in(epoch) and self.acc_at_freeze is None:
            # The last validation before the head froze, read like every later one: the same
            # loop, precision, sharding and synced metric, so forgetting is 0 if nothing changed.
            self.acc_at_freeze = self.last_val.get(self.head)
            if self.acc_at_freeze is None:
                log.warning(
                    "Head %s froze before any validation: val/%s/forgetting is not logged.",
                    self.head,
                    self.head,
                )
            else:
                log.info("Head %s freezes at val accuracy %.4f.", self.head, self.acc_at_freeze)
        plan = self.apply(pl_module, epoch, trainer.global_step)
        log.info(
            "Epoch %d (%s): heads training %s, %d/%d encoder groups unfrozen, %d trainable params.",
            epoch,
            self.scenario,
            sorted(plan.heads),
            plan.encoder_groups,
            len(pl_module.encoder_groups()),
            self._trainable_params,
        )

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Kept in every scenario that trains, so that an only_head_frozen run forked from this
        # one (mtl_lightning.study.fork) freezes at the accuracy it would have read itself.
        if self.trains_nothing or trainer.sanity_checking:
            return
        fitting = trainer.state.fn == TrainerFn.FITTING
        frozen = self.head if fitting and self._head_frozen_in(trainer.current_epoch) else None
        # What Lightning logs as val/<task>/acc (compute() caches it, synced across ranks), or
        # the task's own primary metric for another type (a similarity's Spearman).
        values = {
            task: float(pl_module.metrics["val_metrics"][task][task_type.primary].compute())
            for task, task_type in pl_module.task_types.items()
        }
        # Each task whose head still trains (or a validation before fit).
        self.last_val.update({task: v for task, v in values.items() if task != frozen})
        if self.scenario != "only_head_frozen" or self.acc_at_freeze is None or not fitting:
            return
        pl_module.log(f"val/{self.head}/acc_at_freeze", self.acc_at_freeze)
        pl_module.log(f"val/{self.head}/forgetting", self.acc_at_freeze - values[self.head])

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After every metric of the validation is logged (as EarlyStopping reads them).
        if (
            self.plateau_patience is None
            or self.scenario != "gradual_unfreeze"
            or trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
            or self.stage_steps is None
        ):
            return
        value = trainer.callback_metrics.get(self.plateau_monitor)
        if value is None:
            logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
            raise ConfigError(
                f"freezing.plateau_monitor={self.plateau_monitor} is not logged at validation: "
                f"use one of {logged}."
            )
        value = float(value)
        step = trainer.global_step  # the next step to train
        stage = self.stage_at(step, self._deepest)
        if stage >= self._deepest:  # everything that unfreezes has
            return
        state = self._plateau
        if state["stage"] != stage:  # a new stage: this validation is where it starts from
            state.update(stage=stage, best=value, wait=0)
            return
        better = value > state["best"] if self.plateau_mode == "max" else value < state["best"]
        if better:
            state.update(best=value, wait=0)
        else:
            state["wait"] += 1
        # Every rank acts on rank 0's reading, so that replicas unfreeze together.
        plateaued = trainer.strategy.broadcast(state["wait"] >= self.plateau_patience)
        if plateaued and step > self.stage_start(stage):
            # Validated in the middle of an accumulation window (accumulate_grad_batches): the
            # window's last micro-batches still belong to this step; the next group joins after.
            mid_window = accumulating(trainer)
            self.plateaus[stage] = step + 1 if mid_window else step
            log.info(
                "Step %d: %s has not improved on %.4f for %d validations: the next encoder "
                "group unfreezes now.",
                step,
                self.plateau_monitor,
                state["best"],
                state["wait"],
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "acc_at_freeze": self.acc_at_freeze,
            "last_val": dict(self.last_val),
            "fork": self.fork,
            "plateaus": dict(self.plateaus),
            "plateau": dict(self._plateau),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("scenario") != self.scenario:
            raise ConfigError(
                f"ckpt_path was trained with freezing.scenario={state_dict.get('scenario')}, not "
                f"{self.scenario}: resume with the same experiment."
            )
        self.acc_at_freeze = state_dict.get("acc_at_freeze")
        self.last_val = dict(state_dict.get("last_val") or {})
        self.fork = state_dict.get("fork")
        self.plateaus = dict(state_dict.get("plateaus") or {})
        self._plateau = dict(state_dict.get("plateau") or NO_PLATEAU)
        if state_dict.get("last_val_acc") is not None:  # written before last_val (one head)
            self.last_val.setdefault(self.head, state_dict["last_val_acc"])


class GroupStarts(Mapping[str, int]):
    """gradual_unfreeze's {encoder group: the step it unfreezes}, read live from the schedule
    (a plateau moves a start earlier); `never` for a group that stays frozen."""

    def __init__(
        self, schedule: FreezingSchedule, names: list[str], deepest: int, never: int
    ) -> None:
        self.schedule, self.deepest, self.never = schedule, deepest, never
        self.depths = {name: depth for depth, name in enumerate(names)}  # 0: the top group

    def __getitem__(self, name: str) -> int:
        depth = self.depths[name]  # the top group unfreezes in stage 1
        if depth >= self.deepest:
            return self.never
        return self.schedule.stage_start(depth + 1)

    def __iter__(self) -> Iterator[str]:
        return iter(self.depths)

    def __len__(self) -> int:
        return len(self.depths)
