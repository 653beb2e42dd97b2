"""Batch samplers: length-bucketed batches within a task, and task schedules across tasks.

Every sampler draws from an RNG seeded by (seed, epoch, pass), so the order is random across
epochs yet identical on every DDP rank and on a resumed run. Lightning calls `set_epoch` on a
DataLoader's batch sampler at the start of each epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length, so dynamic padding wastes few tokens.

    With `shuffle`, indices are shuffled, cut into pools of `batch_size * pool_factor`, each pool
    sorted by length and cut into batches, and the batches shuffled: random across epochs, but
    each batch holds neighbours in length. Without it, batches follow length order (evaluation).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        pool_factor: int = 50,
        offset: int = 0,
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pool_factor = pool_factor
        self.offset = offset  # added to every index: the task's position in a concatenated dataset
        self.epoch = 0
        self.passes = 0  # a loader cycled within one epoch (max_size_cycle) gets a fresh order

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.passes = 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(range(len(self.lengths)))
        if not self.shuffle:
            indices.sort(key=self.lengths.__getitem__)
            yield from self._cut(indices)
            return
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.passes}")
        self.passes += 1
        rng.shuffle(indices)
        pool_size = self.batch_size * self.pool_factor
        batches = []
        for start in range(0, len(indices), pool_size):
            pool = sorted(indices[start : start + pool_size], key=self.lengths.__getitem__)
            batches += self._cut(pool)
        rng.shuffle(batches)
        yield from batches

    def _cut(self, indices: list[int]) -> list[list[int]]:
        return [
            [self.offset + i for i in indices[start : start + self.batch_size]]
            for start in range(0, len(indices), self.batch_size)
        ]


class RoundRobinBatchSampler(Sampler[list[int]]):
    """One task per step, in turn (A, B, A, B, ...), over a concatenation of the task datasets.

    An epoch is `num_tasks * max(batches per task)` steps: the same examples per task as the joint
    mode's `max_size_cycle`; a task that runs out restarts with a fresh order.
    """

    def __init__(self, samplers: Sequence[LengthBucketBatchSampler]) -> None:
        self.samplers = list(samplers)

    def set_epoch(self, epoch: int) -> None:
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.samplers) * max(len(s) for s in self.samplers)

    def __iter__(self) -> Iterator[list[int]]:
        iterators = [iter(s) for s in self.samplers]
        for _ in range(max(len(s) for s in self.samplers)):
            for position, sampler in enumerate(self.samplers):
                batch = next(iterators[position], None)
                if batch is None:
                    iterators[position] = iter(sampler)
                    batch = next(iterators[position])
                yield batch
