"""Random loss weighting (`weighting=rlw`).

Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning", TMLR 2022 (arXiv 2111.10603, 2021): at every step the weights are a softmax of
standard normal draws. Here they are scaled by the number of tasks, so they sum to it as
`weighting=static`'s 1:1 weights do (LibMTL's sum to 1, a smaller learning rate in effect).

The draws come from a generator seeded by (`seed`, the step count), not from the global RNG: every
DDP rank draws the same weights, and a resumed run draws what the uninterrupted one would have (the
step count is a buffer, saved in checkpoints).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mtl_lightning.weighting.base import LossWeighting, seeded_generator


class RandomLossWeighting(LossWeighting):
    # A step of one task would only get a random learning rate: the draw weighs tasks together.
    sampling_modes = ("joint",)

    def __init__(self, tasks: Sequence[str], seed: int = 0) -> None:
        super().__init__(tasks)
        self.seed = int(seed)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def draw(self) -> torch.Tensor:
        """This step's weights of every task (in `tasks`' order), summing to the task count."""
        generator = seeded_generator(self.seed, int(self.steps))
        normal = torch.randn(len(self.tasks), generator=generator, dtype=torch.float64)
        return len(self.tasks) * torch.softmax(normal, dim=0)

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        drawn = self.draw()
        self.steps += 1
        weights = {task: drawn[self.tasks.index(task)].item() for task in losses}
        return sum(weights[task] * loss for task, loss in losses.items()), weights
