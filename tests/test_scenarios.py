"""Every experiment trains end to end, and the freezing schedule does what each scenario says."""

from __future__ import annotations

import csv
import re

import pytest
import torch
from conftest import EXPERIMENTS
from helpers import Recorder

from mtl_lightning.scenarios.build import build_scenario
from mtl_lightning.train import train

RECORDER = "+callbacks.recorder._target_=helpers.Recorder"


# experiment=single_task is the study baseline: one task fine-tuned alone (test_single_task.py).
SCENARIO_EXPERIMENTS = [name for name in EXPERIMENTS if name != "single_task"]


def test_each_experiment_selects_its_scenario_class(make_cfg):
    for experiment in EXPERIMENTS:
        cfg = make_cfg(f"experiment={experiment}", "data.only_tasks=sentiment")
        assert build_scenario(cfg.freezing).name == experiment
        assert cfg.run_name.startswith(experiment)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["bert", "distilbert"])
@pytest.mark.parametrize("experiment", SCENARIO_EXPERIMENTS)
def test_experiment_runs_end_to_end(make_cfg, tmp_path, experiment, encoder):
    # only_head_frozen: its head frozen after 1 of the 2 epochs (the experiment's warm-up is 2)
    warmup = ["freezing.head_warmup_epochs=1"] if experiment == "only_head_frozen" else []
    cfg = make_cfg(f"experiment={experiment}", "trainer.max_epochs=2", *warmup, encoder=encoder)
    metrics = train(cfg)
    run = tmp_path / "run"
    assert 0.0 <= metrics["val/acc_mean"] <= 1.0
    for task in ("classification", "sentiment"):
        assert f"test/{task}/acc" in metrics and f"test/{task}/f1" in metrics
    assert (run / "metrics.csv").is_file()
    if experiment == "entire_network_frozen":
        assert not (run / "checkpoints").exists()
        embeddings = run / "embeddings" / "sentiment_test.npz"
        with __import__("numpy").load(embeddings) as saved:
            assert saved["embeddings"].shape == (len(saved["texts"]), 32)
    else:
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert any(p.name.startswith("best-") for p in (run / "checkpoints").iterdir())


def _run_recorded(make_cfg, *overrides, encoder="bert"):
    metrics = train(make_cfg(RECORDER, *overrides, encoder=encoder))
    return Recorder.last, metrics


def _encoder_layer(name: str) -> int | None:
    """Layer index of an encoder parameter or module name (BERT and DistilBERT: `.layer.2.`)."""
    found = re.search(r"^encoder\..*\.layer\.(\d+)\.", name)
    return int(found.group(1)) if found else None


def _changed(recorder: Recorder) -> set[str]:
    return {n for n in recorder.before if not torch.equal(recorder.before[n], recorder.after[n])}


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["bert", "distilbert"])
def test_only_transformer_frozen_trains_heads_only(make_cfg, encoder):
    recorder, _ = _run_recorded(make_cfg, "experiment=only_transformer_frozen", encoder=encoder)
    for epoch, names in recorder.trainable.items():
        assert names and all(n.startswith("heads.") for n in names), epoch
        modes = recorder.training[epoch]
        assert not modes["encoder.model"] and not any(
            v for k, v in modes.items() if k.startswith("encoder.") and "dropout" in k
        )
        assert modes["heads.classification"] and modes["heads.sentiment"]
    changed = _changed(recorder)
    assert changed == {n for n in recorder.before if n.startswith("heads.")}


@pytest.mark.slow
def test_full_finetune_trains_everything_in_train_mode(make_cfg):
    recorder, _ = _run_recorded(make_cfg, "experiment=full_finetune")
    for epoch, names in recorder.trainable.items():
        assert names == set(recorder.before), epoch
        assert all(recorder.training[epoch].values())
    assert any(n.startswith("encoder.model.embeddings") for n in _changed(recorder))


@pytest.mark.slow
def test_only_head_frozen_keeps_the_named_head_after_warmup(make_cfg, tmp_path):
    recorder, _ = _run_recorded(
        make_cfg,
        "experiment=only_head_frozen",
        "freezing.head=sentiment",
        "freezing.head_warmup_epochs=1",  # the experiment's is 2 (test_continual)
        "trainer.max_epochs=3",
    )
    frozen = {n for n in recorder.before if n.startswith("heads.sentiment.")}
    assert frozen <= recorder.trainable[0]  # warm-up epoch: the head is trained first
    for epoch in (1, 2):
        assert not frozen & recorder.trainable[epoch]
        assert recorder.training[epoch]["heads.sentiment"] is False
        assert recorder.training[epoch]["encoder.model"] is True
        assert any(n.startswith("encoder.") for n in recorder.trainable[epoch])
    # The head trained in warm-up; from the freeze point (epoch 1's first step) to the end it is
    # bit-identical, while the encoder and the other head go on training.
    at_freeze = recorder.epoch_start[1]
    assert any(not torch.equal(recorder.before[n], at_freeze[n]) for n in frozen)
    for name in frozen:
        assert torch.equal(recorder.after[name], at_freeze[name]), name
    changed = {n for n in at_freeze if not torch.equal(at_freeze[n], recorder.after[n])}
    assert any(n.startswith("heads.classification.") for n in changed)
    assert any(n.startswith("encoder.") for n in changed)
    # After warm-up only the classification task trains: its batches are the only ones in
    # training steps of epochs 1-2, while validation still evaluates both tasks every epoch.
    assert all(
        list(step) == ["classification"] for step in recorder.batches[recorder.epoch_steps[0] :]
    )
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/sentiment/acc")]
    assert sorted(int(r["epoch"]) for r in rows) == [0, 1, 2]


@pytest.mark.slow
def test_only_head_frozen_head_is_bit_identical_once_frozen(make_cfg, tmp_path):
    first, _ = _run_recorded(make_cfg, "experiment=full_finetune", "trainer.max_epochs=1")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    recorder, metrics = _run_recorded(
        make_cfg,
        "experiment=only_head_frozen",
        f"model.init_from={ckpt}",
        "trainer.max_epochs=2",
    )
    # Stage 2 of the continual-learning workflow: forgetting is measured from the first epoch.
    drop = metrics["val/classification/acc_at_freeze"] - metrics["val/classification/acc"]
    assert metrics["val/classification/forgetting"] == pytest.approx(drop, abs=1e-6)
    frozen = {n for n in recorder.before if n.startswith("heads.classification.")}
    for name in frozen:  # loaded from the first run, then never touched
        assert torch.equal(recorder.before[name], first.after[name])
        assert torch.equal(recorder.after[name], recorder.before[name])
    assert not frozen & set().union(*recorder.trainable.values())
    changed = _changed(recorder)
    assert any(n.startswith("heads.sentiment.") for n in changed)
    assert any(n.startswith("encoder.") for n in changed)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["bert", "distilbert"])
def test_gradual_unfreeze_follows_the_schedule(make_cfg, encoder):
    recorder, metrics = _run_recorded(
        make_cfg,
        "experiment=gradual_unfreeze",
        "freezing.every_n_epochs=1",  # the pace in whole epochs (the experiment's is a quarter)
        "trainer.max_epochs=5",
        encoder=encoder,
    )
    # 3 layers + embeddings: epoch 0 heads only, then layer 2, 1, 0, then the embeddings.
    for epoch, names in recorder.trainable.items():
        layers = {_encoder_layer(n) for n in names} - {None}
        assert layers == set(range(3 - min(epoch, 3), 3)), epoch
        embeddings = any("embeddings" in n for n in names)
        assert embeddings == (epoch >= 4), epoch
        assert all(
            n.startswith("heads.") or _encoder_layer(n) is not None or "embeddings" in n
            for n in names
        )
        modes = recorder.training[epoch]
        for name, training in modes.items():
            layer = _encoder_layer(name + ".")
            if layer is not None:
                assert training == (layer >= 3 - epoch), (epoch, name)
    assert metrics["freeze/unfrozen_layers"] == 4.0


@pytest.mark.slow
def test_gradual_unfreeze_can_keep_embeddings_frozen(make_cfg):
    recorder, _ = _run_recorded(
        make_cfg,
        "experiment=gradual_unfreeze",
        "freezing.unfreeze_embeddings=false",
        "trainer.max_epochs=5",
    )
    assert not any("embeddings" in n for n in set().union(*recorder.trainable.values()))
    assert all(
        torch.equal(recorder.before[n], recorder.after[n])
        for n in recorder.before
        if "embeddings" in n
    )


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["joint", "alternating"])
def test_every_batch_goes_to_its_own_tasks_head(make_cfg, sampling):
    recorder, _ = _run_recorded(
        make_cfg, "experiment=full_finetune", f"data.sampling={sampling}", "trainer.max_epochs=1"
    )
    from mtl_lightning.data.datamodule import MultiTaskDataModule  # noqa: F401 (types below)

    assert recorder.batches
    for step in recorder.batches:
        for task, batch in step.items():
            assert batch["task"] == task
    tasks_per_step = [sorted(step) for step in recorder.batches]
    if sampling == "joint":
        assert all(t == ["classification", "sentiment"] for t in tasks_per_step)
        # Each training step calls each head once, and validation calls each on its own loader.
        training_calls = recorder.head_calls[: 2 * len(recorder.batches)]
        assert training_calls == ["classification", "sentiment"] * len(recorder.batches)
    else:
        order = [t[0] for t in tasks_per_step]
        assert all(len(t) == 1 for t in tasks_per_step)
        assert order == ["classification", "sentiment"] * (len(order) // 2)
        assert recorder.head_calls[: len(order)] == order


@pytest.mark.slow
def test_batches_hold_their_tasks_examples(make_cfg):
    cfg = make_cfg("data.sampling=alternating")
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    for step in datamodule.train_dataloader():
        for task, batch in step.items():
            dataset = datamodule.datasets[task]["train"]
            for row, index in enumerate(batch["idx"].tolist()):
                ids = dataset.input_ids[index]
                assert batch["input_ids"][row, : len(ids)].tolist() == ids
                assert batch["labels"][row].item() == dataset.labels[index]
                assert batch["attention_mask"][row].sum().item() == len(ids)
