"""Dynamic weight average (`weighting=dwa`).

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019: epoch `e`'s
weights are `w_t = T * softmax_t(r_t / temperature)`, `r_t = L_t(e-1) / L_t(e-2)`, where `L_t(e)`
is task `t`'s mean training loss over epoch `e` and `T` the number of tasks; 1 each in the first
two epochs (no ratio yet), as in LibMTL. A task that learns slowly (ratio near 1 or above) gets
more weight.

The epoch's running loss sums and the last two epochs' means are buffers: they travel in the
checkpoint, so resume is exact, also mid-epoch. Under DDP each step's losses are averaged over the
ranks before they are summed, so every rank holds the same history and takes the same weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.weighting.base import LossWeighting, mean_over_ranks


class DynamicWeightAverage(LossWeighting):
    def __init__(self, tasks: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if not temperature > 0:
            raise ConfigError(
                f"weighting.temperature={temperature} must be above 0: the paper uses 2."
            )
        self.temperature = float(temperature)
        count = len(self.tasks)
        self.register_buffer("epoch", torch.tensor(-1, dtype=torch.long))
        self.register_buffer("loss_sum", torch.zeros(count, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros(count, dtype=torch.float64))
        # Row 0: the mean losses of epoch e-2, row 1: of epoch e-1; NaN: not trained then.
        self.register_buffer("history", torch.full((2, count), float("nan"), dtype=torch.float64))

    def on_train_epoch_start(self, epoch: int) -> None:
        if int(self.epoch) >= 0 and epoch > int(self.epoch):
            means = self.loss_sum / self.loss_count  # NaN for a task that had no step
            self.history.copy_(torch.stack([self.history[1], means]))
            self.loss_sum.zero_()
            self.loss_count.zero_()
        self.epoch.fill_(epoch)

    def task_weights(self) -> torch.Tensor:
        """The current epoch's weights, in `tasks`' order."""
        ratios = self.history[1] / self.history[0]
        ratios = torch.where(torch.isfinite(ratios), ratios, torch.ones_like(ratios))
        return len(self.tasks) * torch.softmax(ratios / self.temperature, dim=0)

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        index = [self.tasks.index(task) for task in losses]
        # Every rank steps the same tasks (see the sampling docs).
        step = mean_over_ranks(torch.stack([loss.detach().double() for loss in losses.values()]))
        self.loss_sum[index] += step.to(self.loss_sum.device)
        self.loss_count[index] += 1
        all_weights = self.task_weights().tolist()
        weights = {task: all_weights[i] for task, i in zip(losses, index, strict=True)}
        return sum(weights[task] * loss for task, loss in losses.items()), weights
