"""Sampling modes: how the tasks' training batches are interleaved, one class each.

`data.sampling` is a mode's name (`joint`, `alternating`, `proportional`, `temperature`) or a
config node whose `_target_` names a `SamplingMode` class, a new one anywhere on the Python path
(docs/extending.md). A joint mode gives every step one batch of every task (Lightning's
`CombinedLoader`); any other gives each step one task's batch, in the order its `schedule`
returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.rules import Rule, check_values
from mtl_lightning.data.sampling.sampler import (
    LengthBucketBatchSampler,
    RoundRobinBatchSampler,
    TaskScheduleBatchSampler,
    TaskSequenceBatchSampler,
)


class SamplingMode:
    """One task's batch per step, the tasks in turn (override `schedule` for another order)."""

    name: ClassVar[str] = "alternating"  # what logs, errors and loss weightings call it
    # Every step holds one batch of every task (gradient methods need this: LossWeighting's
    # `sampling_modes`); an epoch is then as long as the longest task.
    joint: ClassVar[bool] = False

    def schedule(
        self, samplers: Sequence[LengthBucketBatchSampler], sizes: Sequence[int]
    ) -> TaskSequenceBatchSampler:
        """The epoch's batch sampler over the tasks' `samplers` (training examples: `sizes`).
        Its `task_sequence` says which task each step takes; the order of anything random in it
        comes from the shared `EpochSeed` (`self.sampler.next_rng`), so that every DDP rank and a
        resumed run see the same."""
        return RoundRobinBatchSampler(samplers)

    def __repr__(self) -> str:
        return self.name


class Joint(SamplingMode):
    """Every step holds one batch of every task (`CombinedLoader`, `max_size_cycle`): an epoch
    is as long as the longest task, and the smaller ones start over with a fresh order."""

    name = "joint"
    joint = True


class Alternating(SamplingMode):
    """One task per step, in turn (A, B, A, B, ...): an epoch is N * M steps, so each task sees
    what it sees in `joint`."""

    name = "alternating"


class Proportional(SamplingMode):
    """One task per step, in a random order; a task's share of the steps is its share of the
    training examples, so a small task is seen less often than in `joint`."""

    name = "proportional"

    def weights(self, sizes: Sequence[int]) -> list[float]:
        return [float(size) for size in sizes]

    def schedule(
        self, samplers: Sequence[LengthBucketBatchSampler], sizes: Sequence[int]
    ) -> TaskSequenceBatchSampler:
        return TaskScheduleBatchSampler(samplers, self.weights(sizes))


class Temperature(Proportional):
    """`proportional` with shares proportional to size ** (1 / `temperature`): T = 1 is
    `proportional`, larger T moves towards equal shares (Arivazhagan et al. 2019 use T = 5)."""

    name = "temperature"
    RULES: ClassVar[dict[str, Rule]] = {
        "temperature": Rule(float, "above 0", lambda v: v > 0, 2.0),
    }

    def __init__(self, temperature: float = 2.0) -> None:
        check_values("data", {"temperature": temperature}, self.RULES)
        self.temperature = temperature

    def weights(self, sizes: Sequence[int]) -> list[float]:
        return [size ** (1.0 / self.temperature) for size in sizes]


MODES: dict[str, type[SamplingMode]] = {
    mode.name: mode for mode in (Joint, Alternating, Proportional, Temperature)
}


def sampling_mode(sampling: str | SamplingMode, temperature: float = 2.0) -> SamplingMode:
    """The mode `data.sampling` names (`temperature`: with `data.temperature`), or the one given."""
    if isinstance(sampling, SamplingMode):
        return sampling
    if sampling not in MODES:
        raise ConfigError(
            f"data.sampling={sampling} is unknown: use one of {list(MODES)}, or a node whose "
            "_target_ is a mtl_lightning.data.sampling.modes.SamplingMode class."
        )
    return Temperature(temperature) if sampling == "temperature" else MODES[sampling]()
