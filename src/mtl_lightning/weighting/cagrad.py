"""Conflict-averse gradient descent (`weighting=cagrad`).

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS
2021, in LibMTL's form. With `g_0` the mean of the tasks' gradients `g_t` of the shared parameters
and `c = calpha * |g_0|`, the weights `w` on the simplex minimise `w.G g_0 + c |G^T w|` (`G` the
tasks' gradients as rows); with `g_w = G^T w`, the update is `g_0 + c / |g_w| * g_w`, divided by
`1 + calpha^2` (`rescale=1`, the default), `1 + calpha` (`rescale=2`) or not at all (`rescale=0`).
`calpha=0` is the mean gradient.

The small convex problem is solved on the CPU in float64 by projected gradient descent with a
backtracking step (where LibMTL calls scipy's SLSQP). Cost: one backward pass per task, the T x T
Gram matrix, and the solve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.weighting.base import LossWeighting

RESCALES = (0, 1, 2)


def project_to_simplex(vector: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection onto {w >= 0, sum w = 1} (Duchi et al. 2008)."""
    ordered, _ = torch.sort(vector, descending=True)
    cumulative = torch.cumsum(ordered, dim=0) - 1
    ranks = torch.arange(1, len(vector) + 1, dtype=vector.dtype)
    last = int(torch.nonzero(ordered - cumulative / ranks > 0).max())
    return torch.clamp(vector - cumulative[last] / (last + 1), min=0)


def cagrad_weights(gram: torch.Tensor, c: float, iterations: int = 500) -> torch.Tensor:
    """The simplex weights minimising `w.gram.b + c * sqrt(w.gram.w)`, `b` uniform."""
    gram = gram.double().cpu()
    count = len(gram)
    mean_term = gram @ torch.full((count,), 1 / count, dtype=torch.float64)

    def objective(w: torch.Tensor) -> torch.Tensor:
        return w @ mean_term + c * torch.sqrt(w @ gram @ w + 1e-8)

    def gradient(w: torch.Tensor) -> torch.Tensor:
        return mean_term + c * (gram @ w) / torch.sqrt(w @ gram @ w + 1e-8)

    w = torch.full((count,), 1 / count, dtype=torch.float64)
    step = 1.0 / float(torch.linalg.matrix_norm(gram, ord=2) * (1 + c) + 1e-12)
    for _ in range(iterations):
        value, slope = objective(w), gradient(w)
        step *= 2
        while True:  # backtrack until the quadratic upper bound holds
            candidate = project_to_simplex(w - step * slope)
            moved = candidate - w
            if objective(candidate) <= value + slope @ moved + moved @ moved / (2 * step) + 1e-15:
                break
            step /= 2
        w = candidate
        if float(moved.norm()) < 1e-12:
            break
    return w


class CAGrad(LossWeighting):
    needs_task_gradients = True
    sampling_modes = ("joint",)  # it compares the tasks' gradients within a step

    def __init__(self, tasks: Sequence[str], calpha: float = 0.5, rescale: int = 1) -> None:
        super().__init__(tasks)
        if not calpha >= 0:
            raise ConfigError(f"weighting.calpha={calpha} must be at least 0: LibMTL uses 0.5.")
        if rescale not in RESCALES:
            raise ConfigError(f"weighting.rescale={rescale} must be one of {RESCALES}.")
        self.calpha = float(calpha)
        self.rescale = rescale

    def combine_gradients(self, gradients: Mapping[str, torch.Tensor]) -> torch.Tensor:
        grads = torch.stack(list(gradients.values()))
        gram = grads @ grads.T
        c = self.calpha * float(torch.sqrt(gram.mean() + 1e-8)) + 1e-8
        weights = cagrad_weights(gram, c).to(grads.dtype).to(grads.device)
        combined = weights @ grads
        direction = grads.mean(dim=0) + c / (combined.norm() + 1e-8) * combined
        divisor = {0: 1.0, 1: 1 + self.calpha**2, 2: 1 + self.calpha}[self.rescale]
        return direction / divisor
