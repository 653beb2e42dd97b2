"""Plug-ins from a file outside the package, chosen by `_target_`, through train, report,
predict and export: the package is not edited for any of them."""

from __future__ import annotations

import csv

import pytest
from omegaconf import OmegaConf, open_dict

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.hub.export import export_checkpoint
from mtl_lightning.model.inference import Predictor
from mtl_lightning.study.report import write_report
from mtl_lightning.train import build_data, train

SCENARIO = "freezing._target_=plugins.ProbeThenFinetune"
SAMPLER = "data.sampling={_target_:plugins.TaskBlocks}"


def test_a_scenario_sampler_and_weighting_from_a_test_file_train_report_predict_and_export(
    make_cfg, tmp_path
):
    cfg = make_cfg(
        SCENARIO, "+freezing.probe_epochs=1", SAMPLER, "run_name=probe", output="sweep/0_probe"
    )
    with open_dict(cfg):
        cfg.weighting = OmegaConf.create({"_target_": "plugins.LastTaskCounted"})
    # The sampler's order: the first task's block of steps, then the second's.
    datamodule = build_data(cfg.data)
    tasks = [task for batch in datamodule.train_dataloader() for task in batch]  # {task: batch}
    half = len(tasks) // 2
    assert half > 0 and tasks == ["classification"] * half + ["sentiment"] * half

    run = tmp_path / "sweep" / "0_probe"
    metrics = train(cfg)
    assert 0 <= metrics["test/sentiment/acc"] <= 1
    with (run / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    # The scenario's plan, applied: the encoder is frozen in epoch 0 and trains (4 groups) in 1.
    unfrozen = [float(r["freeze/unfrozen_layers"]) for r in rows if r["freeze/unfrozen_layers"]]
    assert unfrozen == [0.0, 4.0]
    # The weighting's weights, as it logs them.
    weight = "train/weight/sentiment_step"
    assert {float(r[weight]) for r in rows if r[weight]} == {3.0}

    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")  # what a Hydra run writes
    report = write_report(tmp_path / "sweep").read_text()
    assert "probe_then_finetune+LastTaskCounted" in report

    ckpt = run / "checkpoints" / "last.ckpt"
    predicted = Predictor.from_checkpoint(ckpt).predict(["Who wrote Hamlet?"])[0]
    assert set(predicted) >= {"classification", "sentiment"}

    card = (export_checkpoint(ckpt, tmp_path / "export") / "README.md").read_text()
    assert "Scenario: `probe_then_finetune`." in card
    assert "`freezing.probe_epochs=1`" in card
    assert "| 0 | classification, sentiment | 0 of 4 |" in card
    assert "| 1 | classification, sentiment | 4 of 4 |" in card


def test_a_plugin_scenarios_own_rules_refuse_a_bad_value(make_cfg):
    with pytest.raises(ConfigError, match=r"^freezing\.probe_epochs=0 must be at least 1"):
        train(make_cfg(SCENARIO, "+freezing.probe_epochs=0"))
    with pytest.raises(ConfigError, match=r"^freezing\.probe_epoch is not a setting of probe_"):
        train(make_cfg(SCENARIO, "+freezing.probe_epoch=1"))  # a typo


def test_a_readout_from_a_test_file_scores_the_frozen_features(make_cfg, tmp_path):
    """The readout that picks the least similar centroid gets every two-class answer the
    nearest centroid gets right wrong: its accuracy is 1 minus the shipped one's."""
    frozen = "experiment=entire_network_frozen"
    shipped = train(make_cfg(frozen, output="sweep/0_centroid"))
    plugin = "callbacks.frozen_readout.readout={_target_:plugins.FarthestCentroid,_partial_:true}"
    own = train(make_cfg(frozen, plugin, output="sweep/1_farthest"))
    assert own["test/sentiment/acc"] == pytest.approx(1 - shipped["test/sentiment/acc"])
