"""Batch samplers: length-bucketed batches within a task, and task schedules across tasks.

Training batches draw from RNGs seeded by (seed, epoch, stream, pass), a stream being one task's
batches or the task schedule, so the order is random across epochs yet identical on every DDP
rank and on a resumed run.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class EpochSeed:
    """The random state of training batches: one seeded RNG per (epoch, stream, pass).

    Lightning calls `set_epoch` on `dataloader.batch_sampler.sampler` at the start of each epoch,
    so batch samplers expose this object as `.sampler`. The samplers of one run share it, each
    drawing from its own stream (a task's batches, the task schedule): each new pass over a task
    (a smaller task is cycled within an epoch) draws the stream's next RNG, so the order is
    random across epochs and passes, the same on every DDP rank, and a stream's position after
    k steps does not depend on the other streams (what a mid-epoch resume needs).
    """

    def __init__(self, seed: int, epoch: int = 0, replay: bool = False) -> None:
        self.seed = seed
        self.epoch = epoch
        self.replay = replay  # every epoch draws epoch 0's order (trainer.overfit_batches)
        self.passes: dict[str, int] = {}

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # Lightning calls it again after creating the first iterator
            self.epoch, self.passes = epoch, {}

    def next_rng(self, stream: str = "") -> random.Random:
        count = self.passes.get(stream, 0)
        self.passes[stream] = count + 1
        epoch = 0 if self.replay else self.epoch
        return random.Random(f"{self.seed}:{epoch}:{stream}:{count}")


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length, so dynamic padding wastes few tokens.

    With an `EpochSeed`, indices are shuffled, cut into pools of `batch_size * pool_factor`, each
    pool sorted by length and cut into batches, and the batches shuffled: random across epochs,
    but each batch holds neighbours in length. Without one, batches follow length order
    (evaluation).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        epoch_seed: EpochSeed | None = None,
        pool_factor: int = 50,
        offset: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        stream: str = "",
    ) -> None:
        self.lengths = list(lengths)
        self.stream = stream
        self.skip = 0  # batches of this stream already trained in the epoch (a mid-epoch resume)
        self.batch_size = batch_size
        self.sampler = epoch_seed
        self.pool_factor = pool_factor
        self.offset = offset  # added to every index: the task's position in a concatenated dataset
        self.num_replicas = num_replicas
        self.rank = rank

    def __len__(self) -> int:
        batches = -(-len(self.lengths) // self.batch_size)
        return -(-batches // self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(range(len(self.lengths)))
        if self.sampler is None:
            indices.sort(key=self.lengths.__getitem__)
            return iter(self._shard(self._cut(indices)))
        batches = self._shuffled_pass(indices)
        while self.skip >= len(batches) > 0:  # whole passes trained before the checkpoint
            self.skip -= len(batches)
            batches = self._shuffled_pass(indices)
        skip, self.skip = self.skip, 0
        return iter(batches[skip:])

    def _shuffled_pass(self, indices: list[int]) -> list[list[int]]:
        rng = self.sampler.next_rng(self.stream)
        indices = list(indices)
        rng.shuffle(indices)
        pool_size = self.batch_size * self.pool_factor
        batches = []
        for start in range(0, len(indices), pool_size):
            pool = sorted(indices[start : start + pool_size], key=self.lengths.__getitem__)
            batches += self._cut_pool(pool)
        rng.shuffle(batches)
        return self._shard(batches)

    def _shard(self, batches: list[list[int]]) -> list[list[int]]:
        """This rank's share: every rank draws the same batches (same seed) and takes every
        `num_replicas`-th, the list padded by repeating it from its start so that all ranks step
        equally often (even with fewer batches than ranks)."""
        if self.num_replicas == 1 or not batches:
            return batches
        batches = list(itertools.islice(itertools.cycle(batches), len(self) * self.num_replicas))
        return batches[self.rank :: self.num_replicas]

    def _cut(self, indices: list[int]) -> list[list[int]]:
        return [
            [self.offset + i for i in indices[start : start + self.batch_size]]
            for start in range(0, len(indices), self.batch_size)
        ]

    def _cut_pool(self, pool: list[int]) -> list[list[int]]:
        """A training pool's batches (the pool in length order)."""
        return self._cut(pool)


class NoDuplicatesBatchSampler(LengthBucketBatchSampler):
    """Training batches in which no text occurs twice, in any column (sentence-transformers'
    `NoDuplicatesBatchSampler`): with in-batch negatives, a text twice in a batch is scored as
    a negative of itself. `texts[i]` holds every sentence of example i.

    Pools are drawn as `LengthBucketBatchSampler` draws them, and each pool is cut into exactly
    as many batches as there (`ceil(pool / batch_size)`), so an epoch's length is known without
    drawing it, the same as without this sampler: each batch takes, in the pool's length order,
    the next examples that share no text with it. An example that fits no batch of its pool
    (a text in more examples than the pool has batches) sits that pass out. Under DDP each rank's
    batch is free of duplicates; batches of different ranks may share a text.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, *args, texts: Sequence[tuple[str, ...]], **kw
    ) -> None:
        super().__init__(lengths, batch_size, *args, **kw)
        if len(texts) != len(self.lengths):
            raise ValueError(f"{len(texts)} examples' texts for {len(self.lengths)} lengths")
        self.texts = [frozenset(t) for t in texts]

    def _cut_pool(self, pool: list[int]) -> list[list[int]]:
        remaining = dict.fromkeys(pool)  # ordered, with cheap removal
        batches = []
        for _ in range(-(-len(pool) // self.batch_size)):
            batch: list[int] = []
            seen: set[str] = set()
            for index in remaining:
                if self.texts[index] & seen:
                    continue
                batch.append(index)
                seen |= self.texts[index]
                if len(batch) == self.batch_size:
                    break
            for index in batch:
                del remaining[index]
            batches.append([self.offset + i for i in batch])
        return batches


class TaskSequenceBatchSampler(Sampler[list[int]]):
    """One task per step, over a concatenation of the task datasets; subclasses say which task.

    An epoch is `num_tasks * max(batches per task)` steps: as many as alternating takes to give
    each task the examples the joint mode's `max_size_cycle` gives it. A task that runs out
    restarts with a fresh order (the next pass of the shared `EpochSeed`).
    """

    def __init__(self, samplers: Sequence[LengthBucketBatchSampler]) -> None:
        self.samplers = list(samplers)
        self.sampler = self.samplers[0].sampler  # the shared EpochSeed, for Lightning's set_epoch
        self.skip = 0  # steps already trained in the epoch (a mid-epoch resume)

    def __len__(self) -> int:
        return len(self.samplers) * max(len(s) for s in self.samplers)

    def task_sequence(self) -> list[int]:
        """The position (in `samplers`) of the task of each step of one epoch."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        iterators: dict[int, Iterator[list[int]]] = {}
        skip, self.skip = self.skip, 0
        for step, position in enumerate(self.task_sequence()):
            batch = next(iterators[position], None) if position in iterators else None
            if batch is None:  # the task ran out: its next pass (never a bare `next` in here)
                iterators[position] = iter(self.samplers[position])
                batch = next(iterators[position], None)
                if batch is None:
                    raise ValueError(f"task {position} of the schedule has no batches")
            if step >= skip:
                yield batch


class RoundRobinBatchSampler(TaskSequenceBatchSampler):
    """Tasks in turn: A, B, A, B, ... (`sampling=alternating`)."""

    def task_sequence(self) -> list[int]:
        return list(range(len(self.samplers))) * max(len(s) for s in self.samplers)


class TaskScheduleBatchSampler(TaskSequenceBatchSampler):
    """Tasks in a random order, each taking a fixed share of the steps (`sampling=proportional`
    or `temperature`: the datamodule turns task sizes into `weights`).

    Each task gets `weights[t] / sum(weights)` of the epoch's steps, rounded so the counts add
    up (largest remainder), and the order of those steps is shuffled by the shared `EpochSeed`:
    exact shares every epoch, a different order every epoch, the same on every DDP rank and on
    resume (nothing but the seed, the epoch and the lengths decides it).
    """

    def __init__(
        self, samplers: Sequence[LengthBucketBatchSampler], weights: Sequence[float]
    ) -> None:
        super().__init__(samplers)
        if len(weights) != len(self.samplers) or min(weights) <= 0:
            raise ValueError(f"need one positive weight per task, got {list(weights)}")
        self.weights = [float(w) for w in weights]

    def step_counts(self) -> list[int]:
        """Steps per task in one epoch: the shares of `len(self)`, rounded to add up."""
        steps, total = len(self), sum(self.weights)
        exact = [steps * w / total for w in self.weights]
        counts = [int(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda t: counts[t] - exact[t])
        for position in by_remainder[: steps - sum(counts)]:
            counts[position] += 1
        return counts

    def task_sequence(self) -> list[int]:
        sequence = [t for t, count in enumerate(self.step_counts()) for _ in range(count)]
        self.sampler.next_rng("tasks").shuffle(sequence)
        return sequence
