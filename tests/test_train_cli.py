"""The command line as users run it: a Hydra multirun, W&B offline, run folders, bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import Recorder  # noqa: F401 (importable by Hydra through PYTHONPATH below)

from mtl_lightning.core.checkpoint import read_checkpoint
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.train import train


@pytest.mark.subprocess
def test_multirun_writes_one_folder_per_run_with_wandb_offline(tiny_encoders, tmp_path):
    command = [
        sys.executable,
        "-m",
        "mtl_lightning.train",
        "-m",
        "experiment=only_transformer_frozen,gradual_unfreeze",
        "data=tiny",
        f"model.encoder.name_or_path={tiny_encoders['distilbert']}",
        f"paths.root_dir={tmp_path}",
        "trainer.max_epochs=1",
        "+trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert runs == ["0_only_transformer_frozen", "1_gradual_unfreeze"]
    for run in runs:
        folder = tmp_path / "sweep" / run
        assert (folder / ".hydra" / "config.yaml").is_file()  # the resolved config
        assert (folder / "metrics.csv").is_file()
        assert (folder / "checkpoints" / "last.ckpt").is_file()
        offline = list((folder / "wandb").glob("offline-run-*"))
        assert len(offline) == 1 and any(offline[0].glob("*.wandb"))


@pytest.mark.slow
def test_entire_network_frozen_evaluates_heads_from_init_from(make_cfg, tmp_path):
    trained = train(make_cfg("experiment=full_finetune", "trainer.max_epochs=1", output="first"))
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"  # one epoch: the tested weights
    frozen = train(make_cfg("experiment=entire_network_frozen", f"model.init_from={ckpt}"))
    untrained = train(make_cfg("experiment=entire_network_frozen", output="untrained"))
    # Same weights, same data: the frozen run reproduces the trained model's test losses to 1e-5,
    # which the same run without init_from (untrained heads) does not. One epoch on the tiny model
    # moves a loss by only ~3e-4 (the sentiment loss, measured in CI), so "does not" is read at
    # the same 1e-5, not at a margin that one epoch may not reach.
    for task in ("classification", "sentiment"):
        loss = f"test/{task}/loss"
        assert frozen[loss] == pytest.approx(trained[loss], rel=1e-5)
        assert untrained[loss] != pytest.approx(trained[loss], rel=1e-5)
    assert 0 <= trained["val/acc_mean"] <= 1
    assert (tmp_path / "run" / "embeddings" / "classification_train.npz").is_file()


@pytest.mark.slow
def test_init_from_with_other_labels_is_refused(make_cfg, tmp_path):
    swapped = "data.tasks.sentiment.label_names=[positive,negative]"
    train(make_cfg("experiment=full_finetune", "trainer.max_epochs=1", swapped, output="first"))
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    cfg = make_cfg("experiment=only_head_frozen", f"model.init_from={ckpt}")
    with pytest.raises(
        ConfigError, match=r"has 2 classes \['positive', 'negative'\] for task sentiment"
    ):
        train(cfg)
    three = "data.tasks.sentiment.label_names=[negative,positive,neutral]"
    train(make_cfg("experiment=full_finetune", "trainer.max_epochs=1", three, output="three"))
    ckpt = tmp_path / "three" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="has 3 classes .* the data has 2"):
        train(make_cfg("experiment=only_head_frozen", f"model.init_from={ckpt}"))
    with pytest.raises(ConfigError, match="outside its label_names"):
        train(make_cfg("data.tasks.sentiment.label_names=[neg,pos]"))


@pytest.mark.slow
def test_unknown_scenario_and_head_are_refused(make_cfg):
    with pytest.raises(ConfigError, match="freezing._target_=bogus.Nope cannot be imported"):
        train(make_cfg("freezing._target_=bogus.Nope"))
    with pytest.raises(ConfigError, match="freezing._target_=collections.OrderedDict is not a"):
        train(make_cfg("freezing._target_=collections.OrderedDict"))
    with pytest.raises(ConfigError, match="freezing.heads is not a setting of full_finetune"):
        train(make_cfg("+freezing.heads=classification"))  # a typo
    with pytest.raises(ConfigError, match="freezing.head=nope is not a task"):
        train(make_cfg("experiment=only_head_frozen", "freezing.head=nope"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "data.batch_size=0 must be at least 1"),
        ("trainer.max_epochs=-3", r"trainer.max_epochs=-3 must be at least 1"),
        ("trainer.max_epochs=0", r"trainer.max_epochs=0 must be at least 1"),
        ("model.encoder.name_or_path=/no/such/encoder", "does not exist"),
        ("+model.loss_weights.nope=2", r"model.loss_weights names unknown tasks \['nope'\]"),
        ("+model.loss_weights.sentiment=-1", r"model.loss_weights.sentiment=-1 must be at least 0"),
        ("+model.head_lrs.nope=1e-2", r"model.head_lrs names unknown tasks \['nope'\]"),
        ("+model.head_lrs.sentiment=fast", r"model.head_lrs.sentiment='fast' must be a number"),
    ],
)
def test_bad_settings_are_refused_before_training(make_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        train(make_cfg(override))
    assert not (tmp_path / "run").exists()


@pytest.mark.subprocess
def test_unknown_experiment_is_refused_by_name(tiny_encoders, tmp_path):
    command = [sys.executable, "-m", "mtl_lightning.train", "experiment=no_such_scenario"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "Could not find 'experiment/no_such_scenario'" in result.stderr
    assert "full_finetune" in result.stderr  # Hydra lists the experiments there are
    assert not (tmp_path / "logs").exists()  # no run folder was made


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("freezing._target_=bogus.Nope", "Error: freezing._target_=bogus.Nope"),
        ("trainer.devices=2", "Error: trainer.devices=2 starts 2 processes"),  # not ddp
    ],
)
def test_cli_config_error_is_one_line_and_leaves_no_run_folder(
    tiny_encoders, tmp_path, override, message
):
    command = [
        sys.executable, "-m", "mtl_lightning.train", "data=tiny", override,
        f"model.encoder.name_or_path={tiny_encoders['bert']}", f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.subprocess
def test_sigterm_exits_non_zero_and_leaves_a_resumable_checkpoint(tiny_encoders, tmp_path):
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "mtl_lightning.train", "data=tiny", "logger=csv",
        f"model.encoder.name_or_path={tiny_encoders['bert']}", f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={run}", "trainer.max_epochs=2", "+trainer.enable_progress_bar=false",
        "+callbacks.sigterm._target_=helpers.SigtermAtStep", "+callbacks.sigterm.step=3",
    ]  # fmt: skip
    tests = os.path.dirname(__file__)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 143, result.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    assert result.stderr.strip().splitlines()[-1] == (
        "Stopped: Training was stopped by SIGTERM at epoch 0, step 3, and saved "
        f"{last}: resume with ckpt_path={last}."
    )
    assert not (run / "summary.json").exists()
    assert read_checkpoint(last, "ckpt_path")["global_step"] == 3


@pytest.mark.subprocess
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_exits_130_and_says_how_to_resume(tiny_encoders, tmp_path, presses):
    """Ctrl-C once: the batch in flight finishes and last.ckpt is saved, as for SIGTERM; twice:
    it stops at once, without a checkpoint (a state caught mid-step would not resume exactly)."""
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "mtl_lightning.train", "data=tiny", "logger=csv",
        f"model.encoder.name_or_path={tiny_encoders['bert']}", f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={run}", "trainer.max_epochs=2", "+trainer.enable_progress_bar=false",
        "+callbacks.sigint._target_=helpers.SigintAtStep", "+callbacks.sigint.step=3",
        f"+callbacks.sigint.times={presses}",
    ]  # fmt: skip
    tests = os.path.dirname(__file__)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 130, result.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    then = (
        f"and saved {last}: resume with ckpt_path={last}"
        if presses == 1
        else "with no checkpoint written at the stop: rerun it, or resume from its last.ckpt"
    )
    assert result.stderr.strip().splitlines()[-1] == (
        f"Stopped: Training was stopped by Ctrl-C (SIGINT) at epoch 0, step 3, {then}."
    )
    assert "Traceback" not in result.stderr
    assert not (run / "summary.json").exists() and not (run / "run.lock").exists()
    if presses == 1:
        assert read_checkpoint(last, "ckpt_path")["global_step"] == 3
    else:
        assert not last.exists()  # no epoch ended: no last.ckpt of the epoch either
