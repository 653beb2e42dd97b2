"""`single_task`: the study's baseline, full fine-tuning of one task alone."""

from __future__ import annotations

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.scenarios.full_finetune import FullFinetune


class SingleTask(FullFinetune):
    """`full_finetune` of a single task (`data.only_tasks=<task>`): `make compare` trains one
    per task and seed, and the study report compares every scenario with them."""

    name = "single_task"

    def check_tasks(self, tasks: list[str], new_heads: list[str] = ()) -> None:
        if len(tasks) != 1:
            raise ConfigError(
                f"experiment=single_task trains one task, and the data has {len(tasks)} "
                f"{list(tasks)}: set data.only_tasks=<one of them>."
            )
