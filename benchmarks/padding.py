"""Padded fraction of the training batches, per task: length-bucketed (as trained) vs random.

No training: builds the datamodule from the default config (or the overrides given), then counts
the padding of one epoch of each task's training batches, averaged over a few epochs:

    nice -n 19 .venv/bin/python benchmarks/padding.py [data=tiny ...]
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir

from mtl_lightning.data.sampling.sampler import EpochSeed, LengthBucketBatchSampler
from mtl_lightning.train import build_data

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 5


def padded_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Padding tokens / all tokens when each batch is padded to its longest sequence."""
    total = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1 - sum(lengths[i] for batch in batches for i in batch) / total


def random_batches(count: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    indices = list(range(count))
    rng.shuffle(indices)
    return [indices[start : start + batch_size] for start in range(0, count, batch_size)]


def main(overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={ROOT}", *overrides])
    datamodule = build_data(cfg.data)
    size = datamodule.batch_size
    print(f"batch size {size}, max_length {datamodule.max_length}, {EPOCHS} epochs averaged")
    print(f"{'task':<16}{'examples':>9}{'bucketed':>10}{'random':>9}")
    for task, splits in datamodule.datasets.items():
        lengths = [len(ids) for ids in splits["train"].input_ids]
        bucketed = random_ = 0.0
        for epoch in range(EPOCHS):
            sampler = LengthBucketBatchSampler(lengths, size, EpochSeed(cfg.seed, epoch))
            bucketed += padded_fraction(lengths, list(sampler)) / EPOCHS
            rng = random.Random(f"{cfg.seed}:{epoch}")
            random_ += padded_fraction(lengths, random_batches(len(lengths), size, rng)) / EPOCHS
        print(f"{task:<16}{len(lengths):>9}{bucketed:>10.3f}{random_:>9.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
