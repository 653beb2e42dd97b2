"""The loss-weighting room: how the tasks' losses of one training step become one update.

A weighting is an `nn.Module` chosen by `_target_` (`conf/weighting/<name>.yaml`,
`weighting=<name>`) and built with the run's task names. It sees every step's task losses
(`combine`); its learned parameters, if any, are an optimizer group of their own (`param_group`)
and travel in the checkpoint under `weighting.`.

Methods that act on each task's gradient of the shared parameters (PCGrad, CAGrad, GradNorm's
gradient norms) set `needs_task_gradients = True` and override `combine_gradients`: the module's
`backward` hook (Lightning's automatic optimisation calls it) then computes each task's gradient of
the shared encoder parameters with `torch.autograd.grad`, hands them to `combine_gradients`, and
writes its result as the shared parameters' gradient; every other parameter (heads, learned
weights) gets the gradient of `combine`'s total as usual. One backward pass per task: that is the
cost of these methods. Lightning still owns the optimizer step, clipping, accumulation and the LR
schedule. A method that needs more than that (GradNorm: norms at the last shared layer, and a loss
of its own for its learned weights) overrides `backward`.

Under DDP these gradients never pass through DDP's all-reduce (the module turns it off for the
fit, as `no_sync()` does); they are averaged over the ranks here instead (`task_gradients`,
`backpropagate`, `mean_over_ranks`): each task's gradient before `combine_gradients` sees it, so
every rank combines the same global gradients (those of the union of the ranks' batches) and takes
the same decision, and every other gradient, so all ranks step alike. A method that overrides
`backward` must take its gradients from these helpers too.

State a method keeps between steps (DWA's loss history, the step count that seeds RLW's and
PCGrad's draws) is a buffer, so it travels in the checkpoint and resume is exact;
`on_train_epoch_start` tells a method that an epoch starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mtl_lightning.core.errors import ConfigError


class LossWeighting(nn.Module):
    """The step's total loss from its task losses; by default their sum.

    `tasks`: every task of the run (a step may hold only some of them: alternating sampling, a
    frozen head's task).
    """

    needs_task_gradients: ClassVar[bool] = False
    # Sampling modes (data.sampling) whose steps this method can weigh; None: all of them.
    sampling_modes: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        self.tasks = list(tasks)

    def combine(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """The total to backpropagate, and each task's effective weight (`train/weight/<task>`)."""
        weights = {task: 1.0 for task in losses}
        return sum(losses.values()), weights

    def combine_gradients(self, gradients: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The shared parameters' gradient from each task's flattened gradient of them (only
        called when `needs_task_gradients`); by default their sum, what plain backward gives."""
        return torch.stack(list(gradients.values())).sum(dim=0)

    def param_group(self, lr: float) -> dict | None:
        """The optimizer group of the learned parameters, if any: no weight decay, which would
        pull every learned weight towards a fixed value."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return None
        return {"params": params, "lr": lr, "weight_decay": 0.0, "name": "loss_weights"}

    def on_train_epoch_start(self, epoch: int) -> None:
        """Called as each training epoch starts (also the first epoch of a resumed run, and again
        when a run resumes mid-epoch). Epoch-level state is closed here rather than at the epoch's
        end: a checkpoint written at the end of an epoch may be written before any end hook."""

    def check_sampling(self, sampling) -> None:
        """Refuse a sampling mode (its name, or a `data.sampling.modes.SamplingMode`) this
        method cannot weigh, in one sentence; "joint" in `sampling_modes` admits any mode whose
        steps hold every task."""
        name = getattr(sampling, "name", sampling)
        joint = getattr(sampling, "joint", name == "joint")
        allowed = self.sampling_modes
        if allowed is not None and name not in allowed and not (joint and "joint" in allowed):
            sampling = name
            raise ConfigError(
                f"weighting={type(self).__name__} needs steps holding the tasks "
                f"{list(self.sampling_modes)} sample, not data.sampling={sampling}: set "
                f"data.sampling={self.sampling_modes[0]}."
            )

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        shared: Sequence[nn.Parameter],
        others: Sequence[nn.Parameter],
        last_shared: Sequence[nn.Parameter] = (),
    ) -> None:
        """Gradients of one step for a method with `needs_task_gradients` (see the module
        docstring): `shared` get `combine_gradients` of the tasks' gradients, `others` the
        gradient of `combine`'s total. Gradients accumulate, as `loss.backward()` does.
        `last_shared`: the trainable parameters of the topmost trainable encoder layer (a subset
        of `shared`), for methods that look at that layer only."""
        total, _ = self.combine(losses)
        gradients = task_gradients(losses, shared)
        backpropagate(total, others)
        write_flat_gradient(shared, self.combine_gradients(gradients))


def world_size() -> int:
    """The number of processes of a distributed run (1 outside one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` averaged over the ranks of a distributed run, in place (every rank must call it,
    with the same shape); itself outside one. With each rank's loss a mean over an equally large
    batch, the mean of the ranks' gradients is the gradient of the loss on all their batches."""
    count = world_size()
    if count > 1:
        dist.all_reduce(tensor)
        tensor /= count
    return tensor


def task_gradients(
    losses: Mapping[str, torch.Tensor], params: Sequence[nn.Parameter]
) -> dict[str, torch.Tensor]:
    """Each task's flattened gradient of `params` (`flat_gradients`; the graphs are kept), under
    DDP averaged over the ranks in one all-reduce: the same on every rank."""
    stacked = torch.stack([flat_gradients(loss, params) for loss in losses.values()])
    return dict(zip(losses, mean_over_ranks(stacked), strict=True))


def backpropagate(total: torch.Tensor, params: Sequence[nn.Parameter]) -> None:
    """Add `total`'s gradient of `params` to their gradients, as `total.backward(inputs=params)`
    would, and free its graph; under DDP the gradient is averaged over the ranks first (a rank
    that did not use a parameter adds zeros), and a parameter no rank used keeps its gradient as
    it was (None stays None), as under DDP's own all-reduce."""
    params = list(params)
    if not params:
        return
    grads = torch.autograd.grad(total, params, allow_unused=True)
    if world_size() > 1:
        flat = flat_gradients_of(grads, params)
        used = torch.tensor([g is not None for g in grads], dtype=flat.dtype, device=flat.device)
        flat = mean_over_ranks(torch.cat([flat, used]))
        used = flat[-len(params) :] > 0
        offset, grads = 0, []
        for param, used_somewhere in zip(params, used.tolist(), strict=True):
            part = flat[offset : offset + param.numel()].view_as(param)
            offset += param.numel()
            grads.append(part if used_somewhere else None)
    for param, grad in zip(params, grads, strict=True):
        if grad is not None:
            param.grad = grad.clone() if param.grad is None else param.grad + grad


def flat_gradients(
    loss: torch.Tensor, params: Sequence[nn.Parameter], retain_graph: bool = True
) -> torch.Tensor:
    """`loss`'s gradient of `params`, flattened into one vector (zeros where a parameter is
    unused)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return flat_gradients_of(grads, params)


def flat_gradients_of(
    grads: Sequence[torch.Tensor | None], params: Sequence[nn.Parameter]
) -> torch.Tensor:
    """`params`' gradients `grads` in one vector (zeros where one is None)."""
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).flatten()
            for g, p in zip(grads, params, strict=True)
        ]
    )


def write_flat_gradient(params: Sequence[nn.Parameter], direction: torch.Tensor) -> None:
    """Add the flat vector `direction` to `params`' gradients, as backward would."""
    offset = 0
    for param in params:
        part = direction[offset : offset + param.numel()].view_as(param)
        offset += param.numel()
        param.grad = part.clone() if param.grad is None else param.grad + part


def seeded_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator that depends only on (`seed`, `step`): the same draws on every rank and
    after a resume, whatever else used the global RNG."""
    # Hashed: the CPU generator keeps only 32 bits of its seed, so (seed, step) must mix into them.
    state = np.random.SeedSequence([int(seed) % 2**63, int(step)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))
