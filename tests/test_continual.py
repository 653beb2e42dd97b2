"""Continual learning: stage 1 trains task A alone, stage 2 freezes its head and adds task B."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import Recorder

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.scenarios.build import build_scenario
from mtl_lightning.train import train

RECORDER = "+callbacks.recorder._target_=helpers.Recorder"
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def stage1(make_cfg, tmp_path) -> Path:
    """A checkpoint trained on the classification task alone: it has no sentiment head."""
    train(make_cfg("~data.tasks.sentiment", "trainer.max_epochs=1", output="stage1"))
    return tmp_path / "stage1" / "checkpoints" / "last.ckpt"


def _val_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("val/classification/acc")]


@pytest.mark.slow
def test_stage_two_adds_a_new_head_and_keeps_the_old_one(make_cfg, tmp_path, stage1, caplog):
    saved = torch.load(stage1, map_location="cpu", weights_only=False)["state_dict"]
    assert not any(k.startswith("heads.sentiment.") for k in saved)
    with caplog.at_level(logging.INFO, logger="mtl_lightning.train"):
        metrics = train(
            make_cfg(
                "experiment=only_head_frozen", f"model.init_from={stage1}", RECORDER,
                "trainer.max_epochs=2",
            )
        )  # fmt: skip
    assert "New heads, trained from scratch: ['sentiment']" in caplog.text
    recorder = Recorder.last
    for name, value in recorder.before.items():
        if name.startswith("heads.classification."):  # loaded, then never touched
            assert torch.equal(value, saved[name]) and torch.equal(recorder.after[name], value)
    changed = {n for n in recorder.before if not torch.equal(recorder.before[n], recorder.after[n])}
    assert any(n.startswith("heads.sentiment.") for n in changed)
    assert any(n.startswith("encoder.") for n in changed)
    hparams = (tmp_path / "run" / "hparams.yaml").read_text()
    assert "new_heads:\n- sentiment" in hparams
    rows = _val_rows(tmp_path / "run")
    # The validation before training (step 0) is the accuracy the head freezes at.
    assert float(rows[0]["val/classification/acc"]) == metrics["val/classification/acc_at_freeze"]
    logged = [r for r in rows if r.get("val/classification/forgetting")]
    assert sorted(int(r["epoch"]) for r in logged) == [0, 1]
    for row in logged:
        drop = float(row["val/classification/acc_at_freeze"]) - float(row["val/classification/acc"])
        assert float(row["val/classification/forgetting"]) == pytest.approx(drop, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_forgetting_is_exactly_zero_when_nothing_changes(make_cfg, tmp_path, stage1, precision):
    train(
        make_cfg(
            "experiment=only_head_frozen", f"model.init_from={stage1}", "model.lr=0",
            "model.head_lr=0", f"trainer.precision={precision}", "trainer.max_epochs=2",
        )
    )  # fmt: skip
    logged = [r for r in _val_rows(tmp_path / "run") if r.get("val/classification/forgetting")]
    assert len(logged) == 2
    assert all(float(r["val/classification/forgetting"]) == 0.0 for r in logged)


@pytest.mark.slow
def test_forgetting_after_a_joint_warmup_is_read_at_the_last_validation(make_cfg, tmp_path):
    """A fresh run of the experiment trains jointly for its 2 warm-up epochs (its search's
    choice), then freezes the head as the last of them left it."""
    train(make_cfg("experiment=only_head_frozen", "trainer.max_epochs=4", "model.lr=0"))
    rows = _val_rows(tmp_path / "run")
    frozen_at = float(rows[1]["val/classification/acc"])  # epoch 1, the last joint epoch
    logged = [r for r in rows if r.get("val/classification/forgetting")]
    assert [int(r["epoch"]) for r in logged] == [2, 3]
    assert all(float(r["val/classification/acc_at_freeze"]) == frozen_at for r in logged)


def test_a_run_that_ends_before_the_head_freezes_is_named(caplog):
    """Warm-up epochs not below trainer.max_epochs leave the head unfrozen: a full_finetune run
    under another name, said in one warning (the quick study form, max_epochs=1, still runs)."""
    caplog.set_level(logging.WARNING, logger="mtl_lightning.scenarios.only_head_frozen")
    node = {"_target_": "mtl_lightning.scenarios.only_head_frozen.OnlyHeadFrozen"}
    for warmup, fresh, epochs, init_from, warned in [
        (None, 1, 1, None, True),  # the scenario's own default warm-up is 1 epoch
        (2, 1, 2, None, True),
        (None, 1, 2, None, False),
        (None, 2, 2, None, True),  # the experiment's: 2 epochs on a fresh run
        (None, 2, 3, None, False),
        (2, 1, 3, None, False),
        (None, 2, 1, "stage1.ckpt", False),  # from a trained head: frozen from epoch 0
        (None, 1, -1, None, False),  # no epoch limit
        (None, 1, None, None, False),
    ]:
        caplog.clear()
        settings = {"head_warmup_epochs": warmup, "fresh_head_warmup_epochs": fresh}
        scenario = build_scenario({**node, **settings}, init_from)
        scenario.check_epochs(epochs)
        messages = [r.getMessage() for r in caplog.records]
        assert bool(messages) == warned, (warmup, fresh, epochs, init_from, messages)
        assert scenario.never_freezes == warned  # then every epoch scores (full_finetune's)
        if warned:
            assert len(messages) == 1
            # The key whose value decided: an explicit warm-up, or null and the fresh run's.
            key = f"={warmup}" if warmup else f"=null (freezing.fresh_head_warmup_epochs={fresh})"
            assert messages[0].startswith(f"freezing.head_warmup_epochs{key} is not below ")
            assert f"trainer.max_epochs={epochs}: " in messages[0]
            fix = f"set trainer.max_epochs={(warmup or fresh) + 1}"
            fix += f", or freezing.head_warmup_epochs={epochs - 1}." if epochs > 1 else "."
            assert messages[0].endswith(fix), messages[0]


def test_the_fresh_warmup_acts_and_shows_only_on_a_fresh_run(make_cfg):
    """The experiment's 2-epoch warm-up is a fresh run's; from model.init_from the trained head
    freezes from epoch 0, and the model card's settings leave out the key that did not act."""
    node = make_cfg("experiment=only_head_frozen").freezing
    fresh, trained = build_scenario(node, None), build_scenario(node, "stage1.ckpt")
    assert (fresh.head_warmup_epochs, trained.head_warmup_epochs) == (2, 0)
    assert fresh.settings()["fresh_head_warmup_epochs"] == 2
    assert "fresh_head_warmup_epochs" not in trained.settings()
    explicit = build_scenario({**node, "head_warmup_epochs": 1}, None)
    assert "fresh_head_warmup_epochs" not in explicit.settings()
    assert explicit.settings()["head_warmup_epochs"] == 1


def test_a_checkpoint_that_predates_the_recorded_warmup_resumes_only_at_its_then_default(
    make_cfg,
):
    """A checkpoint without `head_warmup_epochs` froze a null warm-up's head from epoch 1 (the
    default then): resuming it under the experiment's 2 would freeze it an epoch later."""
    node = make_cfg("experiment=only_head_frozen").freezing
    old_state = {"head": "classification"}
    with pytest.raises(ConfigError, match=r"from epoch 1, not from freezing\.head_warmup_epochs=2"):
        build_scenario(node, None).load_state_dict(old_state)
    build_scenario({**node, "head_warmup_epochs": 1}, None).load_state_dict(old_state)
    build_scenario(node, "stage1.ckpt").load_state_dict(old_state)  # explicit or from init_from


@pytest.mark.slow
@pytest.mark.parametrize(
    ("experiment", "best"),
    [("only_head_frozen", "best-epoch01.ckpt"), ("full_finetune", "best-epoch00.ckpt")],
)
def test_the_tested_checkpoint_is_an_epoch_with_the_head_frozen(
    make_cfg, tmp_path, experiment, best
):
    """At learning rates 0 every epoch validates the same, and a tie keeps the earlier epoch:
    full_finetune tests epoch 0, only_head_frozen its first epoch with the head frozen, not the
    joint warm-up's model (which is full_finetune's)."""
    cfg = make_cfg(
        f"experiment={experiment}", "freezing.head_warmup_epochs=1", "trainer.max_epochs=2",
        "model.lr=0", "model.head_lr=0", output=experiment,
    )  # fmt: skip
    train(cfg)
    found = sorted(p.name for p in (tmp_path / experiment / "checkpoints").glob("best-*.ckpt"))
    assert found == [best]
    summary = json.loads((tmp_path / experiment / "summary.json").read_text())
    assert summary["best_epochs"]["chosen"] == int(best[-7:-5])  # what the report shows


@pytest.mark.slow
def test_a_run_stopped_by_max_steps_before_the_head_freezes_is_named(make_cfg, tmp_path, caplog):
    """trainer.max_steps (like early stopping) can end the run inside the warm-up,
    which trainer.max_epochs alone cannot show before training: said once, at its end."""
    caplog.set_level(logging.WARNING, logger="mtl_lightning.scenarios")
    common = ("experiment=only_head_frozen", "trainer.max_epochs=3")  # warm-up: 2 epochs
    train(make_cfg(*common, "trainer.max_steps=3", output="cut"))
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("mtl_lightning.sc")]
    assert len(messages) == 1, messages
    assert messages[0].startswith("Training stopped at trainer.max_steps=3, before the head of ")
    caplog.clear()
    metrics = train(
        make_cfg(*common, "freezing.head_warmup_epochs=1", "trainer.max_steps=9", output="ok")
    )
    assert not [r for r in caplog.records if r.name.startswith("mtl_lightning.sc")]
    # Epoch 1 (7 steps an epoch) is cut short: no validation of its own, so it is not compared by
    # the warm-up's score, which would make the frozen head's weights "best": its last are tested.
    assert not list((tmp_path / "ok" / "checkpoints").glob("best-*.ckpt"))
    assert "test/primary_mean" in metrics
    # Too few epochs: said once, before training, and not again at its end.
    caplog.clear()
    train(make_cfg("experiment=only_head_frozen", "trainer.max_epochs=2", output="short"))
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("mtl_lightning.sc")]
    assert len(messages) == 1, messages
    assert messages[0].startswith("freezing.head_warmup_epochs=null (freezing.fresh_head_warmup")


@pytest.mark.slow
def test_freezing_a_head_the_checkpoint_lacks_is_refused(make_cfg, stage1):
    with pytest.raises(ConfigError, match="freezing.head=sentiment"):
        train(
            make_cfg(
                "experiment=only_head_frozen", "freezing.head=sentiment",
                f"model.init_from={stage1}",
            )
        )  # fmt: skip


@pytest.mark.ddp
@pytest.mark.subprocess
def test_forgetting_is_exactly_zero_under_ddp_when_nothing_changes(tmp_path, stage1, tiny_encoders):
    run = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "mtl_lightning.train",
        "trainer=ddp", "data=tiny", "logger=csv", "experiment=only_head_frozen",
        f"model.init_from={stage1}", "model.lr=0", "model.head_lr=0",
        # 36 val examples in 9 batches of 4: the ranks share 10, one batch seen twice.
        "data.eval_batch_size=4", "trainer.max_epochs=1", "+trainer.enable_progress_bar=false",
        f"model.encoder.name_or_path={tiny_encoders['bert']}",
        f"paths.root_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={run}",
    ]  # fmt: skip
    # This checkout's package, not whichever copy is installed.
    path = os.pathsep.join([str(TESTS), str(TESTS.parent / "src")])
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = [r for r in _val_rows(run) if r.get("val/classification/forgetting")]
    assert len(logged) == 1 and float(logged[0]["val/classification/forgetting"]) == 0.0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["val/classification/forgetting"] == 0.0


def test_init_from_with_another_pooling_is_refused(make_cfg, ckpt, tmp_path):
    # `ckpt` (conftest) pooled by mean: its heads would score differently pooled embeddings.
    with pytest.raises(
        ConfigError,
        match=rf"^model\.init_from={re.escape(str(ckpt))} was trained with "
        r"model\.encoder\.pooling=mean, and its heads read embeddings made that way, but this "
        r"run has model\.encoder\.pooling=cls: set model\.encoder\.pooling=mean\.$",
    ):
        train(
            make_cfg(
                "experiment=only_head_frozen", f"model.init_from={ckpt}",
                "model.encoder.pooling=cls",
            )
        )  # fmt: skip
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training
