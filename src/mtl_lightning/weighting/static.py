"""Fixed weights: `total = sum_t w_t * L_t` (`weighting=static`, the default; 1 for every task)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch

from mtl_lightning.core.rules import Rule, check_task_mapping
from mtl_lightning.weighting.base import LossWeighting

LOSS_WEIGHT_RULE = Rule(float, "at least 0", lambda v: v >= 0, 1.0)
LOSS_WEIGHTS_EXAMPLE = "model.loss_weights={classification:1,sentiment:2}"


def check_loss_weights(weights: object, tasks: Collection[str] | None = None) -> None:
    """`model.loss_weights` is null or {task (of `tasks`, where given): a weight of at least 0}."""
    check_task_mapping(
        "model.loss_weights", weights, LOSS_WEIGHT_RULE, "weight", LOSS_WEIGHTS_EXAMPLE, tasks
    )


class StaticWeighting(LossWeighting):
    """`weights`: {task: weight at least 0}; a task left out weighs 1."""

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(tasks)
        check_loss_weights(weights, tasks)
        self.weights = {task: float((weights or {}).get(task, 1.0)) for task in tasks}

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        weights = {task: self.weights[task] for task in losses}
        return sum(weights[task] * loss for task, loss in losses.items()), weights
