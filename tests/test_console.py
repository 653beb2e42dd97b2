"""A new user's console: training prints none of the third-party warnings that tell them nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

FOREIGN = [
    "litlogger",  # Lightning's advertisement
    "anonymous setting has no effect",  # wandb, about an argument WandbLogger always passes
    "exists and is not empty",  # CSVLogger, about Hydra's .hydra in the run folder
    "LeafSpec",  # torch's deprecation, hit by Lightning's _pytree
    "Loading weights",  # transformers' progress bar at every model load
]


@pytest.mark.subprocess
def test_training_prints_no_foreign_warnings(tiny_encoders, tmp_path):
    command = [
        sys.executable,
        "-m",
        "mtl_lightning.train",
        "data=tiny",
        "logger=default",  # W&B (offline) and CSV
        f"model.encoder.name_or_path={tiny_encoders['bert']}",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=1",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    env.pop("WANDB_SILENT", None)  # wandb's own warnings must be visible to be checked
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert [message for message in FOREIGN if message in console] == []
    assert "wandb: Tracking run" in console  # W&B did start, and talks
    assert (tmp_path / "run" / "metrics.csv").is_file()  # the CSV logger still writes there
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
