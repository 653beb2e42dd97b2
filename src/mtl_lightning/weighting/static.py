"""Fixed weights: `total = sum_t w_t * L_t` (`weighting=static`, the default; 1 for every task)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.weighting.base import LossWeighting


class StaticWeighting(LossWeighting):
    """`weights`: {task: weight at least 0}; a task left out weighs 1."""

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(tasks)
        unknown = sorted(set(weights or {}) - set(tasks))
        if unknown:
            raise ConfigError(
                f"model.loss_weights names unknown tasks {unknown}: use task names {sorted(tasks)}."
            )
        self.weights = {task: float((weights or {}).get(task, 1.0)) for task in tasks}

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        weights = {task: self.weights[task] for task in losses}
        return sum(weights[task] * loss for task, loss in losses.items()), weights
