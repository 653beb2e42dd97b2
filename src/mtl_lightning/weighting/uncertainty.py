"""Homoscedastic uncertainty weighting (`weighting=uncertainty`).

Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry
and Semantics", CVPR 2018, in its common form `sum_t exp(-s_t) * L_t + s_t` with a learned
`s_t = log(sigma_t^2)`: `exp(-s_t)` is the task's weight, and `s_t` keeps it from collapsing to 0.
The paper's classification bound is `exp(-s_t) * L_t + s_t / 2`; the common form is used here for
every task alike. `s_t = 0` (weight 1, the static default) at the start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mtl_lightning.weighting.base import LossWeighting


class UncertaintyWeighting(LossWeighting):
    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.log_vars = nn.ParameterDict({task: nn.Parameter(torch.zeros(())) for task in tasks})

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        weights = {task: torch.exp(-self.log_vars[task]) for task in losses}
        total = sum(weights[task] * loss + self.log_vars[task] for task, loss in losses.items())
        return total, weights
