"""`only_transformer_frozen` epoch time with the frozen-encoder cache on vs off, side by side.

Trains the default experiment settings on the default data for a few epochs twice in one process,
`model.frozen_cache=true` then `false`, and prints the mean time of the epochs after the first
(the first fills the cache) and the ratio; the final metrics must agree:

    .venv/bin/python benchmarks/frozen_cache.py [trainer.max_epochs=3 ...]
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from lightning import Callback

from mtl_lightning.train import train

ROOT = Path(__file__).resolve().parents[1]


class EpochTimes(Callback):
    """Wall seconds of each training epoch (validation excluded)."""

    last: EpochTimes | None = None

    def __init__(self) -> None:
        self.seconds: list[float] = []
        EpochTimes.last = self

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def run(cache: bool, overrides: list[str], out: Path) -> tuple[list[float], float]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.root_dir={ROOT}",
                f"paths.output_dir={out}",
                "experiment=only_transformer_frozen",
                "trainer.max_epochs=3",
                "logger=csv",
                "+trainer.enable_progress_bar=false",
                f"model.frozen_cache={str(cache).lower()}",
                "+callbacks.epoch_times._target_=__main__.EpochTimes",
                *overrides,
            ],
        )
    metrics = train(cfg)
    return EpochTimes.last.seconds, metrics["test/acc_mean"]


def main(overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cached, cached_acc = run(True, overrides, Path(tmp) / "cached")
        fresh, fresh_acc = run(False, overrides, Path(tmp) / "fresh")
    after = {name: sum(s[1:]) / len(s[1:]) for name, s in (("on", cached), ("off", fresh))}
    print(
        f"machine: {platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}; only_transformer_frozen, {len(cached)} epochs"
    )
    print(f"cache on : epochs {[round(s, 1) for s in cached]} s, test acc_mean {cached_acc:.4f}")
    print(f"cache off: epochs {[round(s, 1) for s in fresh]} s, test acc_mean {fresh_acc:.4f}")
    print(
        f"epochs after the first: {after['off'] / after['on']:.1f}x faster with the cache "
        "(target >= 20x)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
