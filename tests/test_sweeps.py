"""Hydra plugins as users run them: an Optuna search and the submitit launcher, on tiny data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CONF_DIR

from mtl_lightning.config_check import check_train_config
from mtl_lightning.train import build_data, build_module

SEARCHED = {"model.lr", "model.layerwise_lr_decay", "freezing.every_n_epochs"}


def _train(tiny_encoders: dict[str, str], tmp_path: Path, *overrides: str) -> None:
    command = [
        sys.executable,
        "-m",
        "mtl_lightning.train",
        "-m",
        "data=tiny",
        "logger=csv",
        f"model.encoder.name_or_path={tiny_encoders['bert']}",
        f"paths.root_dir={tmp_path}",
        "trainer.max_epochs=1",
        "+trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *overrides,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.subprocess
def test_optuna_search_runs_trials_and_reports_the_best(tiny_encoders, tmp_path):
    storage = tmp_path / "optuna.db"  # a persistent study: what resuming or sharing one needs
    _train(
        tiny_encoders,
        tmp_path,
        "hparams_search=optuna",
        "experiment=gradual_unfreeze",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage=sqlite:///{storage}",
    )
    sweep = tmp_path / "sweep"
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == SEARCHED
    trials = sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file())
    # The best value is the best trial's monitored score, as train() returned it.
    scores = [
        json.loads((t / "summary.json").read_text())["metrics"]["val/primary_mean"] for t in trials
    ]
    assert results["best_value"] == pytest.approx(max(scores), abs=1e-6)
    assert [p.name for p in trials] == ["0_gradual_unfreeze", "1_gradual_unfreeze"]
    for trial in trials:
        overrides = yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text())
        assert {o.split("=")[0] for o in overrides} >= SEARCHED
        metrics = json.loads((trial / "summary.json").read_text())["metrics"]
        assert 0 <= metrics["val/acc_mean"] <= 1
    assert storage.is_file()


@pytest.mark.subprocess
def test_submitit_local_launcher_runs_a_job(tiny_encoders, tmp_path):
    _train(
        tiny_encoders,
        tmp_path,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "experiment=only_transformer_frozen",
    )
    sweep = tmp_path / "sweep"
    run = sweep / "0_only_transformer_frozen"
    assert (run / "metrics.csv").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run / "summary.json").read_text())["metrics"]["test/acc_mean"] >= 0
    # The job ran through submitit (its own process, its result pickled), not in this one.
    assert list((sweep / ".submitit").glob("*/*_0_result.pkl"))


def test_every_searched_value_passes_the_checks_on_any_data_config(make_cfg):
    """Each parameter of hparams_search=optuna, at the low end of its range, is a valid
    override with a data config of other tasks (data=tiny_types): no trial is refused."""
    path = CONF_DIR / "hparams_search" / "optuna.yaml"
    searched = yaml.safe_load(path.read_text())["hydra"]["sweeper"]["params"]
    data = ("hparams_search=optuna", "data=tiny_types", "experiment=gradual_unfreeze")
    datamodule = build_data(make_cfg(*data).data)
    for key, space in searched.items():
        low = re.search(r"-?\d[\d.]*(?:e-?\d+)?", str(space).split("interval", 1)[-1]).group()
        cfg = make_cfg(*data, f"{key}={low}")
        check_train_config(cfg)
        tasks, specs = datamodule.label_names, datamodule.task_specs
        build_module(cfg.model, tasks, specs, cfg.get("weighting"))  # the model's own checks
