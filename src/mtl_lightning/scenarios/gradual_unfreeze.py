"""`gradual_unfreeze`: ULMFiT's gradual unfreezing, from the top layer group down."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.rules import Rule, int_at_least
from mtl_lightning.scenarios.base import Plan, Scenario
from mtl_lightning.scenarios.plateau import Plateau

log = logging.getLogger(__name__)


class GradualUnfreeze(Scenario):
    """The first stage trains the heads only; then one more encoder group unfreezes every stage,
    from the top layer down, the embeddings last (if `unfreeze_embeddings`).

    A stage is `unfreeze_every_steps` optimizer steps, or else `every_n_epochs` epochs (a
    fraction such as 0.25 allowed); the plan is asked at every step, so a run resumed mid-stage
    is exact. Each group's learning rate warms up from the step it unfreezes (`group_starts`,
    read by the module's LR schedule). With `plateau_patience`, a stage also ends early,
    FTS-style, once `plateau_monitor` has not improved (`plateau_mode`) on its best in the stage
    for that many validations; the pace is then each stage's longest.
    """

    name = "gradual_unfreeze"
    forks = False  # it unfreezes, and warms groups up, within epochs
    RULES = {
        **Scenario.RULES,
        "every_n_epochs": Rule(float, "above 0 (0.25: a quarter epoch)", lambda v: v > 0, 1),
        "unfreeze_every_steps": int_at_least(200, nullable=True),
        "unfreeze_embeddings": Rule(bool, example="true"),
        "plateau_patience": int_at_least(2, nullable=True),
        "plateau_monitor": Rule(str, example="val/primary_mean"),
        "plateau_mode": Rule(str, "max or min", ("max", "min").__contains__, "max"),
    }

    def __init__(
        self,
        every_n_epochs: float = 1,
        unfreeze_every_steps: int | None = None,
        unfreeze_embeddings: bool = True,
        plateau_patience: int | None = None,
        plateau_monitor: str = "val/primary_mean",
        plateau_mode: str = "max",
        keep_frozen_layers: int = 0,
    ) -> None:
        super().__init__(keep_frozen_layers)
        self.check_values(
            every_n_epochs=every_n_epochs,
            unfreeze_every_steps=unfreeze_every_steps,
            unfreeze_embeddings=unfreeze_embeddings,
            plateau_patience=plateau_patience,
            plateau_monitor=plateau_monitor,
            plateau_mode=plateau_mode,
        )
        self.every_n_epochs = every_n_epochs
        self.unfreeze_every_steps = unfreeze_every_steps
        self.unfreeze_embeddings = unfreeze_embeddings
        self.plateau_patience = plateau_patience
        self.plateau_monitor = plateau_monitor
        self.plateau_mode = plateau_mode
        self.monitor = plateau_monitor if plateau_patience is not None else None
        self.stage_steps: int | None = None  # optimizer steps per stage, once `bind` knows
        self.deepest: int | None = None  # the encoder groups it unfreezes in the end
        # {stage: the step the next one began at}, for each stage a plateau ended before its
        # pace did; and the current stage with its plateau (all checkpointed: a resume is exact).
        self.plateaus: dict[int, int] = {}
        self.stage: int | None = None
        self.plateau = Plateau(plateau_patience or 1, plateau_mode)

    def settings(self) -> dict[str, Any]:
        shown = super().settings()
        if self.unfreeze_every_steps is not None:
            shown.pop("every_n_epochs")
        if self.plateau_patience is None:
            shown.pop("plateau_monitor")
            shown.pop("plateau_mode")
        return shown

    def schedule_lines(self, tasks: list[str], num_groups: int, epochs: int) -> list[str]:
        if self.unfreeze_every_steps is None and float(self.every_n_epochs).is_integer():
            return super().schedule_lines(tasks, num_groups, epochs)
        pace = (
            f"{self.unfreeze_every_steps} optimizer steps"
            if self.unfreeze_every_steps is not None
            else f"{self.every_n_epochs:g} of an epoch"
        )
        deepest = self.depth_limit(num_groups)
        line = (
            f"The heads train from the first step; then one more encoder layer group (of "
            f"{num_groups}, from the top) unfreezes every {pace}, until {deepest} of "
            f"{num_groups} train."
        )
        if self.plateau_patience is not None:
            line += (
                f" A stage also ends early once {self.plateau_monitor} has not improved for "
                f"{self.plateau_patience} validations."
            )
        return [line]

    def depth_limit(self, num_groups: int) -> int:
        """How many encoder groups it unfreezes in the end."""
        unfreezable = num_groups if self.unfreeze_embeddings else num_groups - 1
        return min(unfreezable, self.kept_frozen_cap(num_groups))

    def bind(self, num_groups: int, steps_per_epoch: Callable[[], int | None]) -> None:
        self.deepest = self.depth_limit(num_groups)
        if self.unfreeze_every_steps is not None:
            self.stage_steps = self.unfreeze_every_steps
            return
        steps = steps_per_epoch()
        if steps is None:
            raise ConfigError(
                "freezing.every_n_epochs needs to know the epoch's length, which this datamodule "
                "does not give: set freezing.unfreeze_every_steps instead."
            )
        self.stage_steps = max(1, round(self.every_n_epochs * steps))

    def stage_start(self, stage: int) -> int:
        """The optimizer step at which `stage` begins (stage 0: step 0)."""
        begin = 0
        for ended in range(stage):
            begin = self.plateaus.get(ended, begin + self.stage_steps)
        return begin

    def stage_at(self, step: int, cap: int) -> int:
        """The stage at optimizer `step` (at most `cap`)."""
        stage = 0
        while stage < cap and self.stage_start(stage + 1) <= step:
            stage += 1
        return stage

    def trainable(
        self, epoch: int, heads: frozenset[str], num_groups: int, step: int | None
    ) -> Plan:
        cap = self.depth_limit(num_groups)
        if step is not None and self.stage_steps is not None:
            return Plan(heads, self.stage_at(step, cap))
        return Plan(heads, min(cap, int(epoch // self.every_n_epochs)))

    def group_starts(self, names: list[str], never: int) -> Mapping[str, int]:
        return GroupStarts(self, names, self.depth_limit(len(names)), never)

    def observe(
        self, value: float, step: int, mid_window: bool, agree: Callable[[bool], bool]
    ) -> None:
        if self.stage_steps is None or self.deepest is None:
            return
        stage = self.stage_at(step, self.deepest)
        if stage >= self.deepest:  # everything that unfreezes has
            return
        if self.stage != stage:  # a new stage: this validation is where it starts from
            self.stage = stage
            self.plateau.reset(value)
            return
        # Every rank acts on rank 0's reading, so that replicas unfreeze together.
        plateaued = agree(self.plateau.update(value))
        if plateaued and step > self.stage_start(stage):
            # Validated in the middle of an accumulation window (accumulate_grad_batches): the
            # window's last micro-batches still belong to this step; the next group joins after.
            self.plateaus[stage] = step + 1 if mid_window else step
            log.info(
                "Step %d: %s has not improved on %.4f for %d validations: the next encoder "
                "group unfreezes now.",
                step,
                self.plateau_monitor,
                self.plateau.best,
                self.plateau.wait,
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "plateaus": dict(self.plateaus),
            "plateau": {"stage": self.stage, **self.plateau.state_dict()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.plateaus = {int(k): v for k, v in (state.get("plateaus") or {}).items()}
        current = dict(state.get("plateau") or {})
        self.stage = current.get("stage")
        self.plateau.load_state_dict(current)


class GroupStarts(Mapping[str, int]):
    """{encoder group: the step it unfreezes}, read live from the scenario (a plateau moves a
    start earlier); `never` for a group that stays frozen."""

    def __init__(self, scenario: GradualUnfreeze, names: list[str], deepest: int, never: int):
        self.scenario, self.deepest, self.never = scenario, deepest, never
        self.depths = {name: depth for depth, name in enumerate(names)}  # 0: the top group

    def __getitem__(self, name: str) -> int:
        depth = self.depths[name]  # the top group unfreezes in stage 1
        if depth >= self.deepest:
            return self.never
        return self.scenario.stage_start(depth + 1)

    def __iter__(self) -> Iterator[str]:
        return iter(self.depths)

    def __len__(self) -> int:
        return len(self.depths)
