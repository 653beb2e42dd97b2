"""GradNorm (`weighting=gradnorm`).

Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
Balancing in Deep Multitask Networks", ICML 2018. Task `t`'s weight is `w_t = T * softmax(s)_t`
(`s` learned, 0 at the start: weight 1 each; the softmax keeps the weights summing to `T`, where
the paper renormalises after each step; as LibMTL). Each step:

- `G_t = w_t * ||grad_W L_t||`, `W` the topmost trainable encoder layer (the last shared layer);
- `r_t = (L_t / L_t(0)) / mean_k (L_k / L_k(0))`, the relative inverse training rate, `L_t(0)`
  the task's loss at the first step (a buffer: resume is exact);
- the weights' own loss `L_grad = sum_t |G_t - mean_k(G_k) * r_t^alpha|`, the target held constant,
  gives `s` its gradient (optimizer group `loss_weights`, at `head_lr`);
- every other parameter gets the gradient of `sum_t w_t L_t`, the weights held constant.

Under DDP the gradients at `W` and the losses are averaged over the ranks first, so `s` takes
the same step on every rank.

Cost: one backward pass per task through the heads and the top layer only, then one full pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.weighting.base import (
    LossWeighting,
    backpropagate,
    mean_over_ranks,
    task_gradients,
)


class GradNorm(LossWeighting):
    needs_task_gradients = True
    sampling_modes = ("joint",)  # the norms are compared within a step

    def __init__(self, tasks: Sequence[str], alpha: float = 1.5) -> None:
        super().__init__(tasks)
        if not alpha >= 0:
            raise ConfigError(f"weighting.alpha={alpha} must be at least 0: the paper uses 1.5.")
        self.alpha = float(alpha)
        self.logits = nn.Parameter(torch.zeros(len(self.tasks)))
        self.register_buffer("initial_losses", torch.full((len(self.tasks),), float("nan")))

    def task_weights(self) -> torch.Tensor:
        return len(self.tasks) * torch.softmax(self.logits, dim=0)

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        weights = self.task_weights().detach()
        chosen = {task: weights[self.tasks.index(task)] for task in losses}
        return sum(chosen[task] * loss for task, loss in losses.items()), chosen

    def weight_loss(self, losses: Mapping[str, torch.Tensor], norms: torch.Tensor) -> torch.Tensor:
        """`L_grad` from the step's losses and each task's gradient norm (in `losses`' order);
        records the first losses seen as `L_t(0)`."""
        index = [self.tasks.index(task) for task in losses]
        current = torch.stack([loss.detach() for loss in losses.values()]).float()
        unseen = torch.isnan(self.initial_losses[index])
        self.initial_losses[index] = torch.where(unseen, current, self.initial_losses[index])
        ratios = current / self.initial_losses[index]
        rates = ratios / ratios.mean()
        scaled = self.task_weights()[index] * norms.detach()
        target = (scaled.mean() * rates**self.alpha).detach()
        return (scaled - target).abs().sum()

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        shared: Sequence[nn.Parameter],
        others: Sequence[nn.Parameter],
        last_shared: Sequence[nn.Parameter] = (),
    ) -> None:
        # Under DDP the gradients and losses are averaged over the ranks (those of the union of
        # their batches), so the norms, the targets and the weights' step agree on every rank.
        gradients = task_gradients(losses, last_shared)
        norms = torch.stack([gradient.norm() for gradient in gradients.values()])
        total, _ = self.combine(losses)
        backpropagate(total, [p for p in [*shared, *others] if p is not self.logits])
        if self.logits.requires_grad:
            current = mean_over_ranks(torch.stack([loss.detach() for loss in losses.values()]))
            global_losses = dict(zip(losses, current, strict=True))
            (grad,) = torch.autograd.grad(self.weight_loss(global_losses, norms), self.logits)
            self.logits.grad = grad if self.logits.grad is None else self.logits.grad + grad
