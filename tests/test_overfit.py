"""`debug=overfit`: the model memorises a few batches, so routing, loss and optimizer work."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import CONF_DIR
from helpers import Recorder
from omegaconf import OmegaConf

from mtl_lightning.train import train


@pytest.mark.slow
def test_debug_overfit_memorises_its_batches(make_cfg, tmp_path):
    debug = OmegaConf.load(CONF_DIR / "debug" / "overfit.yaml")
    epochs, batches = debug.trainer.max_epochs, debug.trainer.overfit_batches
    cfg = make_cfg(
        "debug=overfit",
        f"trainer.max_epochs={epochs}",  # make_cfg's tiny default would shorten the run
        "+callbacks.recorder._target_=helpers.Recorder",
    )
    train(cfg)
    recorder = Recorder.last
    # Every epoch trains on the same batches (joint: one of each task per step).
    assert recorder.epoch_steps == dict.fromkeys(range(epochs), batches)
    first = recorder.batches[:batches]
    for epoch in range(1, epochs):
        for mine, theirs in zip(recorder.batches[epoch * batches :][:batches], first, strict=True):
            assert mine.keys() == theirs.keys() == {"classification", "sentiment"}
            for task in mine:
                assert torch.equal(mine[task]["idx"], theirs[task]["idx"])
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/classification/acc")]
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    # A random tiny encoder starts near chance (6 and 2 classes) and ends memorising them.
    for task in ("classification", "sentiment"):
        assert float(rows[0][f"train/{task}/acc"]) < 0.7, task
        assert float(rows[-1][f"train/{task}/acc"]) >= 0.95, task
    assert float(rows[-1]["train/loss_epoch"]) < 0.5 * float(rows[0]["train/loss_epoch"])
