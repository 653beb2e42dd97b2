"""The LR schedule: linear warm-up and decay, each group warming up from when it unfreezes."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.optim.lr_scheduler import LambdaLR


def staggered_warmup_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    start_steps: Mapping[str, int],
) -> LambdaLR:
    """Linear warm-up over `warmup_steps`, then linear decay to 0 at `total_steps`, per group;
    a group in `start_steps` (by name, `/no_decay` alike) warms up from the step it unfreezes
    instead of step 0, so a layer that has just unfrozen is not hit with the full rate.

    With every start at 0 this is transformers' `get_linear_schedule_with_warmup`. A function
    of the step count and `start_steps` only, which is read at every step (a plateau can move a
    start; it lies in the freezing schedule's checkpointed state): a resumed run (any step)
    continues it exactly.
    """

    def factor(name: str):
        def at(step: int) -> float:
            ramp = (step - start_steps.get(name, 0)) / max(1, warmup_steps)
            decay = (total_steps - step) / max(1, total_steps - warmup_steps)
            return max(0.0, min(ramp, decay))

        return at

    names = [group.get("name", "").removesuffix("/no_decay") for group in optimizer.param_groups]
    return LambdaLR(optimizer, [factor(name) for name in names])
