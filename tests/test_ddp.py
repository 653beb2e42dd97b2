"""DDP on CPU (2 processes, gloo): replicas stay identical through gradual unfreezing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _run_ddp(tiny_encoders, tmp_path, *overrides: str) -> tuple[dict, dict]:
    """Train gradual_unfreeze under DDP; each rank's parameter sums, epoch by epoch."""
    sums = tmp_path / "sums"
    command = [
        sys.executable, "-m", "mtl_lightning.train",
        "trainer=ddp", "data=tiny", "logger=csv", "experiment=gradual_unfreeze",
        "trainer.max_epochs=3", "+trainer.enable_progress_bar=false",
        f"model.encoder.name_or_path={tiny_encoders['bert']}",
        f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}",
        "+callbacks.checksum._target_=helpers.ParamChecksum", f"+callbacks.checksum.out={sums}",
        *overrides,
    ]  # fmt: skip
    # This checkout's package, not whichever copy is installed.
    path = os.pathsep.join([str(TESTS), str(TESTS.parent / "src")])
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr + result.stdout
    rank0 = json.loads((sums / "rank0.json").read_text())
    rank1 = json.loads((sums / "rank1.json").read_text())
    return rank0, rank1


@pytest.mark.ddp
@pytest.mark.subprocess
def test_ddp_replicas_stay_identical_across_unfreezing(tiny_encoders, tmp_path):
    rank0, rank1 = _run_ddp(tiny_encoders, tmp_path)
    assert rank0.keys() == rank1.keys() == {"0", "1", "2"}
    for epoch in rank0:
        for name, value in rank0[epoch].items():
            assert value == rank1[epoch][name], (epoch, name)
    # Training did move them: the layer unfrozen in epoch 1 changed between epochs 0 and 2.
    top = [n for n in rank0["0"] if ".layer.2." in n]
    assert any(rank0["0"][n] != rank0["2"][n] for n in top)


@pytest.mark.ddp
@pytest.mark.subprocess
def test_ddp_ranks_unfreeze_together_on_rank_zeros_plateau(tiny_encoders, tmp_path):
    # The pace (100 steps) is never reached: only plateaus unfreeze. The monitor plateaus on
    # rank 0 and never on rank 1; both ranks act on rank 0's reading.
    rank0, rank1 = _run_ddp(
        tiny_encoders, tmp_path,
        "freezing.unfreeze_every_steps=100", "freezing.plateau_patience=1",
        "freezing.plateau_monitor=val/probe", "+callbacks.probe._target_=helpers.RankProbe",
        "+trainer.val_check_interval=1",
    )  # fmt: skip
    assert rank0 == rank1
    # Layer 0, third from the top, trained: three plateaus came.
    lower = [n for n in rank0["0"] if ".layer.0." in n]
    assert any(rank0["0"][n] != rank0["2"][n] for n in lower)
