"""Aligned-MTL (`weighting=aligned`).

Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
Learning", CVPR 2023, as in LibMTL: with the Gram matrix `M = G G^T = V diag(lambda) V^T` of the
tasks' gradients of the shared parameters, the update is `sum_t alpha_t g_t`,
`alpha = sqrt(lambda_min) * V diag(lambda)^{-1/2} V^T 1`, so the aligned task gradients are
orthogonal and of equal norm (the smallest singular value): the system is made well conditioned.
Eigenvalues below the numerical rank's tolerance are dropped. Cost: one backward pass per task and
a T x T eigendecomposition.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mtl_lightning.weighting.base import LossWeighting


def aligned_weights(gram: torch.Tensor) -> torch.Tensor:
    """`alpha` from the tasks' Gram matrix (float64, on the CPU)."""
    gram = gram.double().cpu()
    values, vectors = torch.linalg.eigh(gram)
    # The gradients are float32: eigenvalues below its precision are noise (as LibMTL).
    tolerance = values.max() * len(gram) * torch.finfo(torch.float32).eps
    keep = values > tolerance
    if not keep.any():  # every gradient is zero
        return torch.zeros(len(gram), dtype=torch.float64)
    values, vectors = values[keep], vectors[:, keep]
    balance = values.min().sqrt() * (vectors / values.sqrt()) @ vectors.T
    return balance.sum(dim=0)


class AlignedMTL(LossWeighting):
    needs_task_gradients = True
    sampling_modes = ("joint",)  # it aligns the tasks' gradients within a step

    def combine_gradients(self, gradients: Mapping[str, torch.Tensor]) -> torch.Tensor:
        grads = torch.stack(list(gradients.values()))
        alpha = aligned_weights(grads @ grads.T).to(grads.dtype).to(grads.device)
        return alpha @ grads
