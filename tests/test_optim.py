"""Optimizer groups: layer-wise learning rates, no decay on biases and LayerNorm, schedule caps."""

from __future__ import annotations

import csv
import re

import pytest
from helpers import Recorder

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.model.module import MultiTaskModule
from mtl_lightning.scenarios.full_finetune import FullFinetune
from mtl_lightning.scenarios.gradual_unfreeze import GradualUnfreeze
from mtl_lightning.train import train

TASKS = {"classification": ["a", "b", "c"], "sentiment": ["negative", "positive"]}


@pytest.fixture
def module(tiny_encoders) -> MultiTaskModule:
    encoder = {"name_or_path": tiny_encoders["bert"]}
    return MultiTaskModule(TASKS, encoder, lr=1e-4, head_lr=1e-3, layerwise_lr_decay=2.6)


def test_layerwise_learning_rates(module):
    groups = {g["name"]: g for g in module.param_groups()}
    assert groups["heads"]["lr"] == 1e-3
    for depth, name in enumerate(["layer_2", "layer_1", "layer_0", "embeddings"]):
        assert groups[name]["lr"] == pytest.approx(1e-4 / 2.6**depth)
        assert groups[name + "/no_decay"]["lr"] == groups[name]["lr"]
    # Every parameter is in exactly one group, frozen or not.
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in module.parameters())


def test_a_head_named_in_head_lrs_trains_at_its_own_rate(tiny_encoders):
    encoder = {"name_or_path": tiny_encoders["bert"]}
    module = MultiTaskModule(TASKS, encoder, head_lr=1e-3, head_lrs={"classification": 1e-2})
    groups = {g["name"]: g for g in module.param_groups()}
    heads = {name: {id(p) for p in group["params"]} for name, group in groups.items()}
    assert groups["heads/classification"]["lr"] == groups["heads/classification/no_decay"]["lr"]
    assert groups["heads/classification"]["lr"] == 1e-2 and groups["heads"]["lr"] == 1e-3
    own = heads["heads/classification"] | heads["heads/classification/no_decay"]
    assert own == {id(p) for p in module.heads["classification"].parameters()}
    assert heads["heads"] | heads["heads/no_decay"] == {
        id(p) for p in module.heads["sentiment"].parameters()
    }
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in module.parameters())
    # A run without head_lrs keeps one group for all heads, as before.
    plain = {g["name"] for g in MultiTaskModule(TASKS, encoder).param_groups()}
    assert {name for name in plain if name.startswith("heads")} == {"heads", "heads/no_decay"}


@pytest.mark.parametrize(
    ("head_lrs", "message"),
    [
        ({"questions": 1e-2}, "model.head_lrs names unknown tasks ['questions']"),
        ({"classification": -1.0}, "model.head_lrs.classification"),
        (0.01, "must be a mapping of task to learning rate"),
    ],
)
def test_head_lrs_refuses_unknown_tasks_and_bad_rates(tiny_encoders, head_lrs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        MultiTaskModule(TASKS, {"name_or_path": tiny_encoders["bert"]}, head_lrs=head_lrs)


def test_no_weight_decay_on_biases_and_layernorm(module):
    names = {id(p): n for n, p in module.named_parameters()}
    for group in module.param_groups():
        for param in group["params"]:
            name = names[id(param)]
            exempt = name.endswith("bias") or "LayerNorm" in name
            assert (group["weight_decay"] == 0.0) == exempt, name
            assert group["weight_decay"] in (0.0, module.hparams.weight_decay)


@pytest.mark.parametrize("scenario", [FullFinetune, GradualUnfreeze])
def test_keep_frozen_layers_caps_the_schedule(scenario):
    schedule = scenario(keep_frozen_layers=1)
    # 3 layers + embeddings: embeddings and layer 0 never train.
    depths = [schedule.plan(epoch, ["a"], 4).encoder_groups for epoch in range(6)]
    assert max(depths) == 2
    assert depths == ([2] * 6 if scenario is FullFinetune else [0, 1, 2, 2, 2, 2])


@pytest.mark.slow
def test_keep_frozen_layers_in_a_run(make_cfg):
    train(
        make_cfg(
            "+callbacks.recorder._target_=helpers.Recorder",
            "freezing.keep_frozen_layers=2",
            "trainer.max_epochs=1",
        )
    )
    recorder = Recorder.last
    trainable = recorder.trainable[0]
    assert not any("embeddings" in n or ".layer.0." in n or ".layer.1." in n for n in trainable)
    assert any(".layer.2." in n for n in trainable)


@pytest.mark.slow
def test_forgetting_is_logged_every_epoch_after_the_head_freezes(make_cfg, tmp_path):
    train(
        make_cfg(
            "experiment=only_head_frozen", "freezing.head_warmup_epochs=1", "trainer.max_epochs=3"
        )
    )
    with open(tmp_path / "run" / "metrics.csv") as f:
        logged = list(csv.DictReader(f))
    rows = [r for r in logged if r.get("val/classification/forgetting")]
    assert sorted(int(r["epoch"]) for r in rows) == [1, 2]
    # The accuracy at the freeze is the last validation before it (epoch 0's, by Lightning's
    # own loop), not a number computed some other way.
    (before,) = [r for r in logged if r["epoch"] == "0" and r.get("val/classification/acc")]
    for row in rows:
        assert row["val/classification/acc_at_freeze"] == before["val/classification/acc"]
        drop = float(row["val/classification/acc_at_freeze"]) - float(row["val/classification/acc"])
        assert float(row["val/classification/forgetting"]) == pytest.approx(drop, abs=1e-6)
