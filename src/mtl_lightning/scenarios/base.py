"""A freezing scenario: what trains, epoch by epoch or step by step, as a plain object.

A scenario computes a `Plan` (which heads train, how many encoder layer groups, counted from
the top, and which adapters) from the epoch and the optimizer step alone, with no Lightning
object. One callback, `mtl_lightning.scenarios.schedule.FreezingSchedule`, applies any
scenario's plan to the model; `mtl_lightning.scenarios.forgetting.Forgetting` measures what a
frozen head forgets. A new scenario is one file with a subclass of `Scenario`, chosen by
`freezing._target_` from an experiment config (docs/extending.md).

Hooks a subclass may override, besides `trainable` (its plan):
- `check_tasks` and `configure`: refuse a config that cannot work, before anything trains;
- `check_epochs`: warn where `trainer.max_epochs` ends the run before the scenario is itself;
- `adapters` and `loaded`: adapter layers to put on the encoder (PEFT, `scenarios/lora.py`),
  and the tasks `model.init_from` brought trained;
- `bind`: learn the run's encoder depth and epoch length (a pace in steps);
- `group_starts`: the step each encoder group starts training, for its learning-rate warm-up;
- `frozen_head`: the task whose head is frozen in an epoch, whose forgetting is measured;
- `scores`: whether an epoch's model is the scenario's, so that the best checkpoint (the tested
  model, a tuning trial's score) may be chosen from it (`only_head_frozen`: not its warm-up's);
- `monitor` and `observe`: a validation metric the scenario reacts to (a plateau);
- `run`: what training is (`EntireNetworkFrozen` only evaluates);
- `state_dict` and `load_state_dict`: what a resumed run needs back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.rules import Rule, check_values, int_at_least
from mtl_lightning.core.summary import fit_seconds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """Trainable heads, how many encoder layer groups train (counted from the top), and which
    adapters on the encoder train (by name; a scenario that puts adapters there, `adapters`)."""

    heads: frozenset[str]
    encoder_groups: int
    adapters: frozenset[str] = frozenset()


class Scenario:
    """Everything trains (`full_finetune`); subclasses say what does not.

    `keep_frozen_layers=N` keeps the embeddings and the bottom N layers frozen for the whole run,
    in every scenario ("lower layers capture syntax, best kept stable").
    """

    name: ClassVar[str] = "full_finetune"  # the run's name and the study report's label
    trains: ClassVar[bool] = True  # False: nothing trains (see `run`)
    # Whether a run may start from another run's epoch (mtl_lightning.study.fork), which needs
    # plans that change only at epoch boundaries.
    forks: ClassVar[bool] = True
    # The value rules of the keys of its `freezing` node (mtl_lightning.core.rules); a subclass
    # adds its own: {**Scenario.RULES, ...}.
    RULES: ClassVar[dict[str, Rule]] = {"keep_frozen_layers": int_at_least(2, least=0)}
    monitor: str | None = None  # a validation metric `observe` reads (None: none)

    def __init__(self, keep_frozen_layers: int = 0) -> None:
        self.keep_frozen_layers = keep_frozen_layers
        self.check_values(keep_frozen_layers=keep_frozen_layers)

    def check_values(self, **values: Any) -> None:
        """Refuse a bad value of one of this scenario's keys, in one sentence."""
        check_values("freezing", values, type(self).RULES)

    def settings(self) -> dict[str, Any]:
        """The scenario's keys and values, as its config sets them (the model card shows them)."""
        own = [key for key in type(self).RULES if key not in Scenario.RULES]  # its own first
        settings = {key: getattr(self, key, None) for key in [*own, *Scenario.RULES]}
        return {key: value for key, value in settings.items() if value is not None}

    # --- the plan: from the epoch and the step alone ---

    def trainable(
        self, epoch: int, heads: frozenset[str], num_groups: int, step: int | None
    ) -> Plan:
        """This scenario's plan before `keep_frozen_layers`: everything trains."""
        return Plan(heads, num_groups)

    def plan(self, epoch: int, tasks: list[str], num_groups: int, step: int | None = None) -> Plan:
        """What trains in `epoch` (at optimizer `step`, when the pace is in steps), for an encoder
        of `num_groups` layer groups (embeddings + L) and heads of `tasks`."""
        plan = self.trainable(epoch, frozenset(tasks), num_groups, step)
        encoder_groups = min(plan.encoder_groups, self.kept_frozen_cap(num_groups))
        return Plan(plan.heads, encoder_groups, plan.adapters)

    def kept_frozen_cap(self, num_groups: int) -> int:
        """The most encoder groups that may train under `keep_frozen_layers`."""
        if not self.keep_frozen_layers:
            return num_groups
        return max(0, num_groups - 1 - self.keep_frozen_layers)

    @property
    def heads_change(self) -> bool:
        """Whether the set of training heads changes during the run (the train loader, which
        holds only their tasks, is then rebuilt every epoch)."""
        return False

    def schedule_lines(self, tasks: list[str], num_groups: int, epochs: int) -> list[str]:
        """The plan for a reader (the exported model card): a table, epoch by epoch."""
        plans = [self.plan(epoch, tasks, num_groups) for epoch in range(epochs)]
        adapters = any(plan.adapters for plan in plans)  # a column only where adapters train
        rows = ["| epoch | heads that train | encoder layer groups that train (from the top) |"]
        rows.append("| --- | --- | --- |")
        if adapters:
            rows = [rows[0] + " adapters that train |", rows[1] + " --- |"]
        for epoch, plan in enumerate(plans):
            heads = ", ".join(sorted(plan.heads)) or "none"
            row = f"| {epoch} | {heads} | {plan.encoder_groups} of {num_groups} |"
            if adapters:
                row += f" {', '.join(sorted(plan.adapters)) or 'none'} |"
            rows.append(row)
        return rows

    # --- checks before training ---

    def configure(self, init_from: str | None) -> None:
        """Settle defaults that depend on `model.init_from` (a run that starts trained)."""

    def adapters(self, tasks: list[str]) -> dict[str, Any] | None:
        """The adapter layers this scenario puts on the encoder before anything loads or trains,
        as plain settings (`mtl_lightning.model.adapters`: a PEFT method, its config, the
        adapters' names); None: none. The module stores them, so checkpoints rebuild them; the
        plan's `adapters` then says which of them train."""
        return None

    def loaded(self, trained: list[str], new: list[str]) -> None:
        """`model.init_from` gave trained heads (and adapters) for the tasks `trained`, and the
        tasks `new` start fresh (continual learning)."""

    def check_tasks(self, tasks: list[str], new_heads: list[str] = ()) -> None:
        """Refuse tasks this scenario cannot train; `new_heads`: tasks `model.init_from` has no
        head for."""

    def check_start(self, ckpt_path: str | None, fork_from: str | None) -> None:
        """Refuse a start (a resume, a fork) this scenario cannot make."""

    def check_epochs(self, max_epochs: int | None) -> bool:
        """Say (one warning) where `trainer.max_epochs` ends the run before this scenario does
        what its name says, and return whether it did; None or -1: no epoch limit."""
        return False

    # --- during training ---

    def bind(self, num_groups: int, steps_per_epoch: Callable[[], int | None]) -> None:
        """The run's encoder depth, and how to learn its epoch length (optimizer steps; None
        where the datamodule cannot say), before the plan is first asked for a step."""

    def group_starts(self, names: list[str], never: int) -> Mapping[str, int]:
        """{encoder group name (top group first): the optimizer step from which it trains}, for
        the LR schedule; `never` for a group that never trains. Heads train from step 0."""
        depth = self.plan(0, [], len(names)).encoder_groups
        return {name: 0 if g < depth else never for g, name in enumerate(names)}

    def frozen_head(self, epoch: int) -> str | None:
        """The task whose trained head is frozen in `epoch`, whose forgetting is logged; once
        frozen, it stays frozen in every later epoch (`Forgetting` relies on it)."""
        return None

    def scores(self, epoch: int) -> bool:
        """Whether the model at the end of `epoch` is this scenario's: the best checkpoint,
        which is tested and which a tuning trial is scored by, is chosen among these epochs
        (mtl_lightning.callbacks.best_checkpoint). Every epoch, unless a subclass says not."""
        return True

    def observe(
        self, value: float, step: int, mid_window: bool, agree: Callable[[bool], bool]
    ) -> None:
        """A validation's value of `monitor`, with training at optimizer `step` (`mid_window`:
        inside a gradient-accumulation window); `agree(flag)` gives rank 0's flag to every rank."""

    def run(self, trainer, module, datamodule, ckpt_path: str | None, test: bool = True):
        """Train, then test the best checkpoint (`test=False`: not, the test split never
        evaluated: a tuning trial). Returns (the metrics logged by the end of training, the best
        checkpoint's monitored score among them; the training seconds)."""
        if self.frozen_head(0) is not None and not ckpt_path:
            # The frozen head's accuracy before training, by Lightning's own validation (the
            # same path as every later val/<head>/acc, so forgetting is comparable).
            trainer.validate(module, datamodule=datamodule, verbose=False)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        seconds = fit_seconds(trainer)
        metrics = logged(trainer)
        best = trainer.checkpoint_callback
        has_best = best is not None and bool(best.best_model_path)  # none under fast_dev_run
        # ~callbacks.model_checkpoint leaves last.ckpt's callback first: monitor=None, no score.
        if has_best and best.best_model_score is not None:
            # What is returned describes the best checkpoint: its monitored score, its test.
            metrics[best.monitor] = float(best.best_model_score)
        best_path = best.best_model_path if has_best else None  # the first ModelCheckpoint's
        if not test:
            return metrics, seconds
        trainer.test(module, datamodule=datamodule, ckpt_path=best_path, weights_only=True)
        return metrics, seconds

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """What `state_dict` gave, from a resumed run's checkpoint."""


def logged(trainer, prefix: str = "") -> dict[str, float]:
    """The trainer's logged metrics whose names start with `prefix`, as floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


def need_task(key: str, task: str, tasks: list[str]) -> None:
    """Refuse `key`=`task` where `task` is not one of `tasks`."""
    if task not in tasks:
        raise ConfigError(f"{key}={task} is not a task: use one of {tasks}.")
