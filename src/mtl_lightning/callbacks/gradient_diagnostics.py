"""How the tasks' gradients of the shared encoder meet: cosine, norms and ratio, per layer group.

Every `every_n_steps` optimizer steps, before the step's backward pass, each task's loss of that
step is differentiated alone (`torch.autograd.grad`, one extra backward pass per task, the graph
kept for the real one) with respect to the trainable parameters of each of the encoder's layer
groups (`encoder_groups()`: embeddings, layer_0, ...), and of the whole encoder (`encoder`).
Logged, with the step, to every logger (`logger.log_metrics`: W&B, CSV):

- `grad/<group>/norm/<task>`: the L2 norm of the task's gradient (of its loss as the task type
  returns it, before the weighting's factor, which `train/weight/<task>` logs);
- `grad/<group>/cos/<a>_vs_<b>`: the cosine between two tasks' gradients (-1: opposed);
- `grad/<group>/ratio/<a>_vs_<b>`: norm of a / norm of b: which task the sum follows.

On with `+callbacks.gradient_diagnostics=default` (conf/callbacks/gradient_diagnostics/), or
`+callbacks.gradient_diagnostics._target_=mtl_lightning.callbacks.gradient_diagnostics.GradientDiagnostics`;
off by default, and then it costs nothing. Its cost when on: `benchmarks/gradient_diagnostics.py`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
from lightning import Callback

from mtl_lightning.core.errors import ConfigError

NEEDS_JOINT = (
    "callbacks.gradient_diagnostics compares the tasks' gradients of the same step, so it needs "
    "steps holding every task's loss (data.sampling=joint), not data.sampling={sampling}: set "
    "data.sampling=joint or drop the callback."
)


def gradient_stats(
    losses: Mapping[str, torch.Tensor], groups: Mapping[str, Sequence[torch.nn.Parameter]]
) -> dict[str, float]:
    """`grad/<group>/{norm,cos,ratio}/...` of each task's gradient of each group's parameters.

    `groups` maps a name to its parameters (a parameter may sit in several groups, e.g. a layer
    and `encoder`); every parameter must require grad. The losses' graphs are kept.
    """
    params = list({id(p): p for ps in groups.values() for p in ps}.values())
    flat: dict[str, dict[int, torch.Tensor]] = {}
    for task, loss in losses.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flat[task] = {
            id(p): (torch.zeros_like(p) if g is None else g).detach().flatten()
            for p, g in zip(params, grads, strict=True)
        }
    stats: dict[str, float] = {}
    for name, members in groups.items():
        vectors = {task: torch.cat([flat[task][id(p)] for p in members]) for task in flat}
        norms = {task: vector.norm() for task, vector in vectors.items()}
        for task, norm in norms.items():
            stats[f"grad/{name}/norm/{task}"] = norm.item()
        for a, b in itertools.combinations(vectors, 2):
            denominator = norms[a] * norms[b]
            cosine = (vectors[a] @ vectors[b]) / denominator if denominator > 0 else denominator
            stats[f"grad/{name}/cos/{a}_vs_{b}"] = float(cosine)
            ratio = norms[a] / norms[b] if norms[b] > 0 else torch.tensor(float("inf"))
            stats[f"grad/{name}/ratio/{a}_vs_{b}"] = float(ratio)
    return stats


class GradientDiagnostics(Callback):
    """Logs `gradient_stats` of the step's task losses every `every_n_steps` optimizer steps.

    Reads the step's task losses from the module's `step_task_losses` (set by `training_step`)
    and the groups from its `encoder_groups()`; a group with no trainable parameter (frozen) is
    left out of that step.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps < 1:
            raise ConfigError(
                f"callbacks.gradient_diagnostics.every_n_steps={every_n_steps} must be 1 or more."
            )
        self.every_n_steps = every_n_steps
        self._logged_step: int | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        sampling = getattr(trainer.datamodule, "sampling", None)
        if sampling is not None and not sampling.joint:
            raise ConfigError(NEEDS_JOINT.format(sampling=sampling.name))
        if trainer.world_size > 1:
            raise ConfigError(
                "callbacks.gradient_diagnostics runs one process's extra backward passes, which "
                "DDP does not expect: use it on one device (trainer.devices=1)."
            )

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or step == self._logged_step:
            return  # with gradient accumulation, the first micro-batch of the step speaks
        losses = getattr(pl_module, "step_task_losses", None) or {}
        losses = {task: value for task, value in losses.items() if value.requires_grad}
        if len(losses) < 2:
            return
        self._logged_step = step
        groups = {
            group.name: [p for p in group.params if p.requires_grad]
            for group in pl_module.encoder_groups()
        }
        groups = {name: params for name, params in groups.items() if params}
        if not groups:
            return
        groups["encoder"] = [p for params in groups.values() for p in params]
        # Straight to the loggers: a value given to `self.log` on some steps only would be
        # written again, stale, on the steps between.
        stats = gradient_stats(losses, groups)
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=step)
