"""Plug-ins from a file outside the package, chosen by `_target_`, through train, report,
predict and export: the package is not edited for any of them."""

from __future__ import annotations

import csv
import json

import pytest
from omegaconf import OmegaConf, open_dict

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.hub.export import export_checkpoint
from mtl_lightning.model.inference import Predictor
from mtl_lightning.study.report import write_report
from mtl_lightning.tasks import TASK_TYPES, build_task_type, task_type_class
from mtl_lightning.train import build_data, train

SCENARIO = "freezing._target_=plugins.ProbeThenFinetune"
# A task of a type defined in plugins.py, named by its dotted path, on the tiny scored pairs.
REGRESSION = (
    "+data.tasks.scores={_target_:mtl_lightning.data.sources.base.TinySource,file:similarity,"
    "type:plugins.PairRegression}"
)
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


def test_a_task_type_from_a_test_file_trains_reports_predicts_and_exports(make_cfg, tmp_path):
    """Its metrics (R², and RMSE, better when lower) are logged, shown by the report under the
    type's names and compared with the type's own resampled metrics; predict and the card use
    its head."""
    runs = {}
    for job, experiment in enumerate(("full_finetune", "only_transformer_frozen")):
        output = f"sweep/{job}_{experiment}"
        cfg = make_cfg(f"experiment={experiment}", REGRESSION, "seed=3", output=output)
        runs[experiment] = train(cfg)
        (tmp_path / output / ".hydra").mkdir()
        OmegaConf.save(cfg, tmp_path / output / ".hydra" / "config.yaml")
    for metrics in runs.values():
        assert {"test/scores/r2", "test/scores/rmse", "test/classification/acc"} <= set(metrics)
        assert metrics["test/scores/rmse"] >= 0

    text = write_report(tmp_path / "sweep").read_text()
    numbers = json.loads((tmp_path / "sweep" / "report.json").read_text())
    assert numbers["metrics"]["scores"] == ["r2", "rmse"]
    assert numbers["metric_names"]["scores"]["rmse"]["higher_is_better"] is False
    assert "| scenario | seeds | test R² | R² 95% CI | test RMSE | RMSE 95% CI |" in text
    assert "Δ R² vs full_finetune" in text and "Δ RMSE vs full_finetune" in text
    # The paired difference is the type's metrics of the test predictions: the logged values.
    delta = numbers["deltas"]["only_transformer_frozen"]["scores"]["vs_reference"]
    for metric in ("r2", "rmse"):
        logged = runs["only_transformer_frozen"], runs["full_finetune"]
        expected = logged[0][f"test/scores/{metric}"] - logged[1][f"test/scores/{metric}"]
        assert delta[metric]["delta"] == pytest.approx(expected, abs=1e-4)

    ckpt = tmp_path / "sweep" / "0_full_finetune" / "checkpoints" / "last.ckpt"
    pair = {"text": "A man is playing a guitar.", "text_pair": "A man plays the guitar."}
    predicted = Predictor.from_checkpoint(ckpt).predict([pair])[0]
    assert isinstance(predicted["scores"]["score"], float)
    card = (export_checkpoint(ckpt, tmp_path / "export") / "README.md").read_text()
    assert "| scores | pair_regression |" in card and "| scores | RMSE |" in card
    assert 'w, b = heads["scores.regressor.weight"], heads["scores.regressor.bias"]' in card


def test_a_checkpoint_never_imports_an_unregistered_task_type():
    with pytest.raises(ConfigError, match=r"^task scores has task type 'os\.path\.Nothing'"):
        build_task_type("scores", [], {"type": "os.path.Nothing"})
    assert "os.path.Nothing" not in TASK_TYPES


def test_a_config_type_that_is_not_a_task_type_is_refused():
    with pytest.raises(ConfigError, match=r"^data\.tasks\.t\.type=os\.path\.join is not a Task"):
        task_type_class("t", "os.path.join")
    with pytest.raises(ConfigError, match=r"^data\.tasks\.t\.type=no_such\.Type cannot be im"):
        task_type_class("t", "no_such.Type")
