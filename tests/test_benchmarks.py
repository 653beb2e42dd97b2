"""The benchmark runner's pieces work and compare like with like (nothing here is timed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import run as bench  # noqa: E402
from plain_loop import run_plain_loop  # noqa: E402

from mtl_lightning.train import train  # noqa: E402


@pytest.mark.slow
def test_plain_loop_trains_the_batches_lightning_trains(make_cfg):
    """Same config: the same examples in the same batches, epoch by epoch."""
    from helpers import Recorder

    timed = "+callbacks.epoch_times._target_=run.EpochTimes"
    recorded = "+callbacks.recorder._target_=helpers.Recorder"
    train(make_cfg(timed, recorded, "data.max_train_examples=40"))
    lightning = bench.EpochTimes.last
    lightning_batches = [
        {task: b["idx"].tolist() for task, b in batch.items()} for batch in Recorder.last.batches
    ]
    batches: list[dict] = []
    plain = run_plain_loop(make_cfg("data.max_train_examples=40", output="plain"), batches)
    assert batches == lightning_batches
    assert plain["epoch_examples"] == lightning.examples
    assert len(plain["epoch_seconds"]) == len(lightning.seconds) == 2
    assert all(seconds > 0 for seconds in plain["epoch_seconds"] + lightning.seconds)


def result(seconds: list[float], examples: int = 100) -> dict:
    return {"epoch_seconds": seconds, "epoch_examples": [examples] * len(seconds), "peak_mb": 1.0}


def test_ratios_use_the_epochs_after_the_first_and_judge_each_target():
    results = {
        "full_finetune": result([50.0, 10.0, 10.0]),
        "plain_loop": result([9.0, 9.0, 9.0]),
        "top1_cached": result([8.0, 3.0, 3.0]),
        "frozen_cached": result([10.0, 0.5, 0.5]),
        "frozen_uncached": result([10.0, 10.0, 10.0]),
    }
    lines = "\n".join(bench.ratios(results))
    assert "| 1. Lightning / plain PyTorch loop, full fine-tuning, s/epoch | 1.11x |" in lines
    assert "1.11x | <= 1.05x | missed |" in lines
    assert "| 20.00x | >= 20x faster | met |" in lines
    assert "| 0.30x | <= 0.35x | met |" in lines
    assert "HF Trainer" not in lines  # a comparison whose runs were not done is left out
    table = "\n".join(bench.table(results))
    assert "| Lightning, full fine-tuning | 10.0 | 10 | 1 |" in table


@pytest.mark.parametrize(
    "name", [name for name, run in bench.RUNS.items() if run.kind in ("project", "plain")]
)
def test_every_project_run_composes(name, tmp_path):
    run = bench.RUNS[name]
    cfg = bench.config(run, 2000, 3, tmp_path)
    assert cfg.trainer.max_epochs == 3
    assert cfg.data.max_train_examples == (2000 if run.subsample else None)
