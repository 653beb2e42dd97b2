"""Resume is exact: a run stopped after an unfreeze and resumed ends with the same weights."""

from __future__ import annotations

import csv
import logging
import shutil

import pytest
import torch
from helpers import Recorder
from transformers import AutoTokenizer

from mtl_lightning.core.checkpoint import read_checkpoint
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.train import RunStopped, train

RECORD = "+callbacks.recorder._target_=helpers.Recorder"


@pytest.mark.slow
def test_gradual_unfreeze_resumes_exactly_across_an_unfreeze_boundary(make_cfg, tmp_path):
    common = ("experiment=gradual_unfreeze", "trainer.max_epochs=4", RECORD)
    train(make_cfg(*common, output="straight"))
    straight = Recorder.last

    # Stopped at the end of epoch 1 (top layer just unfrozen), then resumed from last.ckpt.
    stop = ("+callbacks.stop._target_=helpers.StopAfterEpoch", "+callbacks.stop.epoch=1")
    train(make_cfg(*common, *stop, output="stopped"))
    ckpt = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    train(make_cfg(*common, f"ckpt_path={ckpt}", output="resumed"))
    resumed = Recorder.last

    assert resumed.trainable.keys() == {2, 3}  # it went on from epoch 2
    for epoch in (2, 3):
        assert resumed.trainable[epoch] == straight.trainable[epoch]
        assert resumed.training[epoch] == straight.training[epoch]
    for name, value in straight.after.items():
        torch.testing.assert_close(resumed.after[name], value, rtol=1e-5, atol=1e-6, msg=name)
    epoch_orders = [straight.batches[i]["classification"]["idx"].tolist() for i in (0, 7, 14)]
    assert len({str(order) for order in epoch_orders}) == 3  # a new order every epoch
    changed = [n for n in straight.after if not torch.equal(straight.before[n], straight.after[n])]
    assert any(".layer.1." in n for n in changed)  # the comparison covers unfrozen layers


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["joint", "alternating"])
def test_resume_from_the_middle_of_an_epoch_is_exact(make_cfg, tmp_path, sampling):
    steps = tmp_path / "steps"
    common = (
        "experiment=gradual_unfreeze",
        "trainer.max_epochs=3",
        f"data.sampling={sampling}",
        RECORD,
    )
    every_10_steps = (
        "+callbacks.steps._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.steps.dirpath={steps}",
        "+callbacks.steps.every_n_train_steps=10",
        "+callbacks.steps.save_top_k=-1",
    )
    train(make_cfg(*common, *every_10_steps, output="straight"))
    straight = Recorder.last
    # Step 10 lies inside epoch 1 (7 joint steps per epoch, 14 alternating): the top layer has
    # just unfrozen, and part of the epoch's batches are done.
    (ckpt,) = steps.glob("*step=10.ckpt")
    train(make_cfg(*common, f"ckpt_path='{ckpt}'", output="resumed"))  # quoted: "=" in the name
    resumed = Recorder.last
    done = 10 - (7 if sampling == "joint" else 14) * int(ckpt.name.split("epoch=")[1][0])
    assert len(resumed.batches) == len(straight.batches) - 10
    for mine, theirs in zip(resumed.batches, straight.batches[10:], strict=True):
        for task in theirs:
            assert torch.equal(mine[task]["idx"], theirs[task]["idx"])
    assert done > 0
    for name, value in straight.after.items():
        torch.testing.assert_close(resumed.after[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_resume_with_other_tasks_or_labels_is_refused(make_cfg, tmp_path):
    train(make_cfg("trainer.max_epochs=1", output="first"))
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"only in the checkpoint: \['sentiment'\]"):
        train(make_cfg("~data.tasks.sentiment", f"ckpt_path={ckpt}"))
    # The same labels in another order would silently swap the classes.
    swapped = "data.tasks.sentiment.label_names=[positive,negative]"
    with pytest.raises(
        ConfigError,
        match=r"has labels \['negative', 'positive'\] for task sentiment, the data has "
        r"\['positive', 'negative'\]",
    ):
        train(make_cfg(swapped, f"ckpt_path={ckpt}"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


@pytest.mark.slow
def test_resuming_into_the_same_run_folder_keeps_its_metrics(make_cfg, tmp_path):
    def logged_steps(folder: str) -> list[tuple[str, str]]:
        with (tmp_path / folder / "metrics.csv").open(newline="") as file:
            return [(r["epoch"], r["step"]) for r in csv.DictReader(file) if r["train/loss_step"]]

    train(make_cfg(output="straight"))
    stop = ("+callbacks.stop._target_=helpers.StopAfterEpoch", "+callbacks.stop.epoch=0")
    train(make_cfg(*stop, output="run"))
    train(make_cfg("ckpt_path=" + str(tmp_path / "run" / "checkpoints" / "last.ckpt")))
    steps = logged_steps("run")
    assert steps == logged_steps("straight")  # every step once, in order: none lost, none twice
    assert {epoch for epoch, _ in steps} == {"0", "1"}
    with (tmp_path / "run" / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["epoch"] for r in rows if r["val/acc_mean"]] == ["0", "1"]
    assert len([r for r in rows if r["test/acc_mean"]]) == 1  # the stopped run's test is gone


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_last_ckpt_that_resumes_exactly(make_cfg, tmp_path):
    common = ("experiment=gradual_unfreeze", "trainer.max_epochs=3", RECORD)
    train(make_cfg(*common, output="straight"))
    straight = Recorder.last

    sigterm = ("+callbacks.sigterm._target_=helpers.SigtermAtStep", "+callbacks.sigterm.step=10")
    with pytest.raises(RunStopped, match="stopped by SIGTERM at epoch 1, step 10"):
        train(make_cfg(*common, *sigterm, output="stopped"))
    assert not (tmp_path / "stopped" / "summary.json").exists()  # not a finished run
    ckpt = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(ckpt, "ckpt_path")["global_step"] == 10  # mid-epoch 1 (7 per epoch)
    train(make_cfg(*common, f"ckpt_path={ckpt}", output="resumed"))
    resumed = Recorder.last
    assert len(resumed.batches) == len(straight.batches) - 10
    for mine, theirs in zip(resumed.batches, straight.batches[10:], strict=True):
        for task in theirs:
            assert torch.equal(mine[task]["idx"], theirs[task]["idx"])


@pytest.mark.slow
def test_resume_after_a_head_froze_is_exact(make_cfg, tmp_path):
    """only_head_frozen, alternating: epoch 0 has 14 steps (both tasks), later epochs only the
    sentiment task's 4; a checkpoint 2 steps into epoch 1 resumes with its remaining batches."""
    steps = tmp_path / "steps"
    common = (
        "experiment=only_head_frozen",
        "freezing.head=classification",
        "freezing.head_warmup_epochs=1",
        "trainer.max_epochs=3",
        "data.sampling=alternating",
        RECORD,
    )
    every_16_steps = (
        "+callbacks.steps._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.steps.dirpath={steps}",
        "+callbacks.steps.every_n_train_steps=16",
        "+callbacks.steps.save_top_k=-1",
    )
    train(make_cfg(*common, *every_16_steps, output="straight"))
    straight = Recorder.last
    assert straight.epoch_steps == {0: 14, 1: 4, 2: 4}
    (ckpt,) = steps.glob("*epoch=1-step=16.ckpt")
    train(make_cfg(*common, f"ckpt_path='{ckpt}'", output="resumed"))
    resumed = Recorder.last
    assert resumed.epoch_steps == {1: 2, 2: 4}
    for mine, theirs in zip(resumed.batches, straight.batches[16:], strict=True):
        assert mine.keys() == theirs.keys() == {"sentiment"}
        assert torch.equal(mine["sentiment"]["idx"], theirs["sentiment"]["idx"])
    for name, value in straight.after.items():
        torch.testing.assert_close(resumed.after[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_resume_with_other_splits_is_refused(make_cfg, ckpt, tmp_path):
    # `ckpt` (conftest): data=tiny at seed 42. Another seed or fraction carves other splits,
    # whose test examples the checkpoint may have trained on.
    with pytest.raises(
        ConfigError,
        match=r"last\.ckpt was trained on other data splits than this run's "
        r"\(classification/train, classification/val, classification/test, sentiment/train, "
        r"sentiment/val, sentiment/test differ; data\.seed=42 then, 7 now\), so its test "
        r"examples may have been trained on: resume with the seed, .* model\.init_from=",
    ):
        train(make_cfg(f"ckpt_path={ckpt}", "seed=7"))
    with pytest.raises(ConfigError, match=r"data\.test_fraction=0\.2 then, 0\.3 now\)"):
        train(make_cfg(f"ckpt_path={ckpt}", "data.test_fraction=0.3"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


def test_a_checkpoint_without_recorded_splits_resumes_with_a_note(make_cfg, ckpt, tmp_path, caplog):
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert set(checkpoint["data"]["splits"]) == {"classification", "sentiment"}
    del checkpoint["data"]  # as written before the splits were recorded
    older = tmp_path / "older.ckpt"
    torch.save(checkpoint, older)
    with caplog.at_level(logging.INFO, logger="mtl_lightning.core.checkpoint"):
        train(make_cfg(f"ckpt_path={older}", "seed=7", "trainer.max_epochs=1"))
    assert "does not record its data splits (written by an older version)" in caplog.text


def test_resume_with_another_tokenizer_encoder_or_pooling_is_refused(
    make_cfg, ckpt, tiny_encoders, tmp_path
):
    # `ckpt` (conftest): the tiny BERT with the packaged uncased tokenizer, mean pooling.
    cased = tmp_path / "cased"
    shutil.copytree(tiny_encoders["bert"], cased)
    AutoTokenizer.from_pretrained(cased, do_lower_case=False).save_pretrained(cased)
    resume = f"ckpt_path={ckpt}"
    with pytest.raises(
        ConfigError,
        match=rf"last\.ckpt was trained with another tokenizer than this run's "
        rf"data\.tokenizer={cased}: it reads 'What does NASA stand for\? .*' as 'what does nasa "
        r"stand for \? cafe , \.\.\.', this run as '\[UNK\] does \[UNK\] stand for \? \[UNK\] , "
        r"\.\.\.'; set model\.encoder\.name_or_path and data\.tokenizer to ",
    ):
        train(make_cfg(resume, f"model.encoder.name_or_path={cased}"))
    with pytest.raises(
        ConfigError,
        match=r"last\.ckpt holds a bert encoder that does not fit model\.encoder\.name_or_path="
        r".*\(distilbert; e\.g\. encoder\.model\..* differs\): set model\.encoder\.name_or_path=",
    ):
        train(make_cfg(resume, encoder="distilbert"))
    with pytest.raises(
        ConfigError,
        match=r"last\.ckpt was trained with model\.encoder\.pooling=mean and "
        r"model\.encoder\.normalize=false, and its heads read embeddings made that way, but this "
        r"run has model\.encoder\.pooling=cls and model\.encoder\.normalize=true: set "
        r"model\.encoder\.pooling=mean and model\.encoder\.normalize=false\.$",
    ):
        train(make_cfg(resume, "model.encoder.pooling=cls", "model.encoder.normalize=true"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


def test_resume_only_head_frozen_with_another_head_is_refused(make_cfg, tmp_path):
    """The forgetting a resumed run logs is measured against the head that froze: resuming with
    another `freezing.head` would log the second head's change against the first's value."""
    common = (
        "experiment=only_head_frozen",
        "freezing.head_warmup_epochs=1",
        "trainer.max_epochs=2",
    )
    train(make_cfg(*common, "freezing.head=classification", output="first"))
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resume = (*common, "trainer.max_epochs=3", f"ckpt_path={ckpt}")
    with pytest.raises(ConfigError, match=r"froze the head of classification, not freezing\.head"):
        train(make_cfg(*resume, "freezing.head=sentiment", output="other"))
    # Nor with another warm-up: the head would have frozen in another epoch.
    with pytest.raises(ConfigError, match=r"from epoch 1, not from freezing\.head_warmup_epochs=2"):
        train(make_cfg(*resume, "freezing.head_warmup_epochs=2", output="later"))
    metrics = train(make_cfg(*resume, "freezing.head=classification", output="same"))
    assert "val/classification/forgetting" in metrics
