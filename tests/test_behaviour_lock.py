"""Reshaping the package keeps what it trains: every experiment's weights on `data=tiny` at a fixed
seed equal those recorded before the reshaping (commit 9bd5fe0), parameter by parameter.

The record (`fixtures/scenario_weights.json`) holds, per experiment and parameter, the sum and
the sum of squares of the trained weights: two numbers that change with any change to what
trains, in which order, at which learning rate. A deliberate change of behaviour records them
again: `UPDATE_WEIGHT_RECORD=1 pytest tests/test_behaviour_lock.py`, and says why in its commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import EXPERIMENTS

from mtl_lightning.core.checkpoint import read_checkpoint
from mtl_lightning.train import train

RECORD = Path(__file__).parent / "fixtures" / "scenario_weights.json"
UPDATE = os.environ.get("UPDATE_WEIGHT_RECORD") == "1"


def digest(state_dict: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {
        name: [tensor.double().sum().item(), tensor.double().square().sum().item()]
        for name, tensor in sorted(state_dict.items())
        if tensor.is_floating_point() and not name.startswith("metrics.")
    }


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_experiment_trains_the_recorded_weights(make_cfg, tmp_path, experiment):
    only = ["data.only_tasks=classification"] if experiment == "single_task" else []
    if experiment == "only_head_frozen":  # the head frozen within the 2 epochs (its own: 2 of 4)
        only = ["freezing.head_warmup_epochs=1"]
    metrics = train(make_cfg(f"experiment={experiment}", "seed=7", *only))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    found: dict = {"metrics": {k: float(v) for k, v in sorted(metrics.items())}}
    if last.exists():  # entire_network_frozen trains nothing and writes none: its metrics count
        found |= digest(read_checkpoint(last, "ckpt_path")["state_dict"])
    record = json.loads(RECORD.read_text()) if RECORD.is_file() else {}
    if UPDATE:
        record[experiment] = found
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    expected = record[experiment]
    assert sorted(found) == sorted(expected)
    for name, values in found.items():
        if name == "metrics":
            assert sorted(values) == sorted(expected[name])
            for key, value in values.items():
                assert value == pytest.approx(expected[name][key], rel=1e-6, abs=1e-6), key
        else:
            assert values == pytest.approx(expected[name], rel=1e-6, abs=1e-6), name
