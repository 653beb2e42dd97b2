"""Projecting conflicting gradients (`weighting=pcgrad`).

Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning", NeurIPS
2020: each task's gradient of the shared parameters, where it conflicts with another task's
(negative inner product), loses its component along that one, the others taken in a random order;
the projected gradients are summed. Two tasks: `g_1' = g_1 - min(g_1.g_2, 0) / |g_2|^2 * g_2`.

The order comes from a generator seeded by (`seed`, the step count, a buffer): the same after a
resume. Cost: one backward pass per task (the weighting room's gradient hook) and O(T^2) inner
products of the shared gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mtl_lightning.weighting.base import LossWeighting, seeded_generator


class PCGrad(LossWeighting):
    needs_task_gradients = True
    sampling_modes = ("joint",)  # it compares the tasks' gradients within a step

    def __init__(self, tasks: Sequence[str], seed: int = 0) -> None:
        super().__init__(tasks)
        self.seed = int(seed)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def combine_gradients(self, gradients: Mapping[str, torch.Tensor]) -> torch.Tensor:
        grads = torch.stack(list(gradients.values()))
        squared_norms = (grads * grads).sum(dim=1) + 1e-8
        generator = seeded_generator(self.seed, int(self.steps))
        self.steps += 1
        projected = grads.clone()
        for i in range(len(grads)):
            for j in torch.randperm(len(grads), generator=generator).tolist():
                if j == i:
                    continue
                # Only a conflict (negative inner product) is projected away; no host sync.
                conflict = torch.clamp(projected[i] @ grads[j], max=0.0)
                projected[i] -= conflict / squared_norms[j] * grads[j]
        return projected.sum(dim=0)
