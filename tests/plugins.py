"""Plug-ins defined outside the package, chosen by `_target_` from a config (test_plugins.py)."""

from __future__ import annotations

import torch
from torch import nn

from mtl_lightning.core.rules import int_at_least
from mtl_lightning.data.sampling.modes import SamplingMode
from mtl_lightning.data.sampling.sampler import TaskSequenceBatchSampler
from mtl_lightning.scenarios.base import Plan, Scenario
from mtl_lightning.scenarios.readout import CentroidReadout
from mtl_lightning.weighting import LossWeighting


class ProbeThenFinetune(Scenario):
    """LP-FT (Kumar et al. 2022): the heads train on the frozen encoder for `probe_epochs`,
    then everything trains, so fine-tuning starts from trained heads."""

    name = "probe_then_finetune"
    RULES = {**Scenario.RULES, "probe_epochs": int_at_least(1)}

    def __init__(self, probe_epochs: int = 1, keep_frozen_layers: int = 0) -> None:
        super().__init__(keep_frozen_layers)
        self.check_values(probe_epochs=probe_epochs)
        self.probe_epochs = probe_epochs

    def trainable(self, epoch, heads, num_groups, step):
        return Plan(heads, 0 if epoch < self.probe_epochs else num_groups)


class TaskBlocks(SamplingMode):
    """One task per step, each task's steps in one block (the first task's, then the next's):
    the opposite of interleaving, as a curriculum would order them."""

    name = "task_blocks"

    def schedule(self, samplers, sizes):
        return BlockSampler(samplers)


class BlockSampler(TaskSequenceBatchSampler):
    """The epoch's N * M steps (the base class's length) as N blocks of M: a task that runs out
    within its block starts over with a fresh order."""

    def task_sequence(self) -> list[int]:
        steps = max(len(sampler) for sampler in self.samplers)
        return [t for t in range(len(self.samplers)) for _ in range(steps)]


class LastTaskCounted(LossWeighting):
    """The last task's loss counts 3 times (a fixed weighting, by `combine`)."""

    def combine(self, losses):
        weights = {task: 3.0 if task == self.tasks[-1] else 1.0 for task in losses}
        return sum(weights[t] * loss for t, loss in losses.items()), weights


class FarthestCentroid(nn.Module):
    """A readout that picks the class whose centroid is *least* similar: a wrong readout on
    purpose, so that a test can tell it was used."""

    def __init__(self, embeddings, labels, num_classes):
        super().__init__()
        self.centroid = CentroidReadout(embeddings, labels, num_classes)

    def forward(self, embedding):
        return torch.log_softmax(-self.centroid(embedding), dim=-1)
