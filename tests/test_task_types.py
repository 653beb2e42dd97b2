"""Task types: classification, pair_classification and similarity train together, in every
scenario, with exact caches and resume, from shipped or user files, and predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import EXPERIMENTS
from helpers import Recorder, train_cached_and_fresh

from mtl_lightning.callbacks.test_predictions import PREDICTIONS_DIR, read_predictions
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.model.inference import Predictor, read_rows
from mtl_lightning.predict import predict
from mtl_lightning.study import stats
from mtl_lightning.tasks.similarity import Similarity
from mtl_lightning.train import build_data, train

RECORD = "+callbacks.recorder._target_=helpers.Recorder"
TYPES = ("data=tiny_types", "data.batch_size=32")
SCENARIOS = [name for name in EXPERIMENTS if name != "single_task"]  # the five freezing ones
PRIMARY = {"classification": "acc", "paraphrase": "acc", "similarity": "spearman"}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", SCENARIOS)
def test_each_type_runs_through_each_scenario(make_cfg, tmp_path, experiment):
    # only_head_frozen: its head frozen after 1 of the 2 epochs (the experiment's warm-up is 2)
    warmup = ["freezing.head_warmup_epochs=1"] if experiment == "only_head_frozen" else []
    metrics = train(make_cfg(*TYPES, f"experiment={experiment}", *warmup, RECORD))
    for task, primary in PRIMARY.items():
        assert f"test/{task}/{primary}" in metrics
    # The monitored value is the mean of each task's primary metric.
    mean = np.mean([metrics[f"test/{task}/{primary}"] for task, primary in PRIMARY.items()])
    assert metrics["test/primary_mean"] == pytest.approx(mean, abs=1e-6)
    assert metrics["test/acc_mean"] == pytest.approx(
        (metrics["test/classification/acc"] + metrics["test/paraphrase/acc"]) / 2, abs=1e-6
    )
    run = tmp_path / "run"
    if experiment == "entire_network_frozen":
        with np.load(run / "embeddings" / "paraphrase_train.npz") as saved:
            assert saved["pair_embeddings"].shape == saved["embeddings"].shape
            assert len(saved["text_pairs"]) == len(saved["texts"])
        return
    recorder = Recorder.last
    changed = {n for n in recorder.after if not torch.equal(recorder.before[n], recorder.after[n])}
    trained_heads = {n.split(".")[1] for n in changed if n.startswith("heads.")}
    frozen = {"only_head_frozen": {"classification"}}.get(experiment, set())
    # only_head_frozen's frozen head trained in its warm-up epoch, then stopped: it changed,
    # and its weights at the end are those it froze with (the recorder's epoch-1 snapshot).
    assert trained_heads == set(PRIMARY)
    for head in frozen:
        for name in (n for n in recorder.after if n.startswith(f"heads.{head}.")):
            torch.testing.assert_close(recorder.after[name], recorder.epoch_start[1][name])
    assert {"paraphrase", "similarity"} <= trained_heads  # both new heads learn everywhere
    # The pair task has a confusion matrix (it has classes), the score does not; every task
    # has per-example test predictions, the score's as scores, for the report's paired tests.
    assert (run / "confusion_paraphrase.csv").is_file()
    assert not (run / "confusion_similarity.csv").exists()
    _, scores, cosines = read_predictions(run / PREDICTIONS_DIR / "similarity.csv")
    logged = metrics["test/similarity/spearman"]
    found = stats.score(Similarity("similarity"), scores, cosines)
    assert found["spearman"] == pytest.approx(logged, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "frozen", ["experiment=only_transformer_frozen", "freezing.keep_frozen_layers=2"]
)
def test_caches_are_exact_for_pairs(make_cfg, frozen):
    """Embedding cache (frozen encoder) and prefix cache (frozen lower layers) give the same
    weights and metrics as no cache, with pair tasks, whose second sentences are cached too."""
    common = (*TYPES, frozen, "~data.tasks.classification", "trainer.max_epochs=3", RECORD)
    with_cache, without, _ = train_cached_and_fresh(make_cfg, *common)
    for key in ("val/primary_mean", "test/paraphrase/acc", "test/similarity/spearman"):
        assert with_cache[key] == pytest.approx(without[key], abs=1e-5)
    datamodule = build_data(make_cfg(*common).data)
    # Every train and val example of both tasks, each sentence of each pair its own entry.
    examples = sum(
        len(splits[s]) for splits in datamodule.datasets.values() for s in ("train", "val")
    )
    if frozen.startswith("experiment"):
        assert with_cache["freeze/cached_embeddings"] == 2 * examples
        assert with_cache["freeze/cache_hits"] > 0
    else:
        assert with_cache["freeze/prefix_cached_examples"] == 2 * examples
        assert with_cache["freeze/prefix_cache_hits"] > 0


@pytest.mark.slow
def test_a_pair_task_resumes_exactly(make_cfg, tmp_path):
    common = (*TYPES, "experiment=gradual_unfreeze", "trainer.max_epochs=3", RECORD)
    train(make_cfg(*common, output="straight"))
    straight = Recorder.last
    stop = ("+callbacks.stop._target_=helpers.StopAfterEpoch", "+callbacks.stop.epoch=1")
    train(make_cfg(*common, *stop, output="stopped"))
    ckpt = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    train(make_cfg(*common, f"ckpt_path={ckpt}", output="resumed"))
    resumed = Recorder.last
    assert resumed.trainable.keys() == {2}
    for name, value in straight.after.items():
        torch.testing.assert_close(resumed.after[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert any(n.startswith("heads.similarity.") for n in straight.after)


def _write_csv(path, header, rows):
    import csv

    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _user_files(tmp_path):
    """docs/task-types.md's CSVs: questions, paraphrase and scored pairs, from the tiny corpus."""
    from mtl_lightning.data.sources.base import Rows, TinySource

    paths = {}
    for name, header in (
        ("classification", ("question", "label")),
        ("paraphrase", ("sentence1", "sentence2", "label")),
        ("similarity", ("sentence1", "sentence2", "score")),
    ):
        rows = Rows.of(TinySource(name).load(tmp_path)["train"])
        columns = (
            (rows.texts, rows.labels)
            if rows.text_pairs is None
            else (rows.texts, rows.text_pairs, rows.labels)
        )
        paths[name] = _write_csv(tmp_path / f"{name}.csv", header, zip(*columns, strict=True))
    return paths


def files_overrides(paths) -> list[str]:
    """docs/task-types.md's data=files command: a pair and a similarity task added by config."""
    return [
        "data=files",
        f"data.tasks.classification.train={paths['classification']}",
        "data.tasks.classification.text_column=question",
        "~data.tasks.sentiment",
        "+data.tasks.paraphrase._target_=mtl_lightning.data.sources.files.FileSource",
        "+data.tasks.paraphrase.task=paraphrase",
        "+data.tasks.paraphrase.type=pair_classification",
        f"+data.tasks.paraphrase.train={paths['paraphrase']}",
        "+data.tasks.paraphrase.text_column=sentence1",
        "+data.tasks.paraphrase.text_pair_column=sentence2",
        "+data.tasks.sts._target_=mtl_lightning.data.sources.files.FileSource",
        "+data.tasks.sts.task=sts",
        "+data.tasks.sts.type=similarity",
        f"+data.tasks.sts.train={paths['similarity']}",
        "+data.tasks.sts.text_column=sentence1",
        "+data.tasks.sts.text_pair_column=sentence2",
        "+data.tasks.sts.label_column=score",
        "+data.tasks.sts.type_options.loss=cosine_mse",
        "+data.tasks.sts.type_options.score_range=[0,5]",
    ]


@pytest.mark.slow
def test_user_csv_files_train_and_predict_on_pairs(make_cfg, tmp_path):
    """A pair task and a similarity task from CSV files, by config alone, trained with a
    classification task; then predict reads rows with and without a second sentence."""
    paths = _user_files(tmp_path)
    metrics = train(make_cfg(*files_overrides(paths), "trainer.max_epochs=1"))
    assert {"test/paraphrase/acc", "test/sts/spearman", "test/classification/acc"} <= set(metrics)

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    rows = [
        {"text": "What is the capital of Peru?"},
        {"text": "A man plays a guitar.", "text_pair": "A man is playing a guitar."},
    ]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    output = tmp_path / "out.jsonl"
    predict(make_cfg_predict(ckpt, source, output))
    first, second = (json.loads(line) for line in output.read_text().splitlines())
    # A task whose input a row lacks is left out of that row's output.
    assert set(first) == {"text", "classification"}
    assert set(second) == {"text", "text_pair", "classification", "paraphrase", "sts"}
    assert set(second["paraphrase"]) == {"label", "probs"}
    assert second["paraphrase"]["label"] in second["paraphrase"]["probs"]
    assert sum(second["paraphrase"]["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    assert set(second["sts"]) == {"score"}
    # The score is the cosine of the two embeddings (each through the head), on the 0-5 range.
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    u, v = (torch.from_numpy(predictor.encode([row])) for row in rows[1].values())
    head = predictor.heads["sts"].projection
    cosine = torch.nn.functional.cosine_similarity(head(u), head(v)).item()
    assert second["sts"]["score"] == pytest.approx(5 * cosine, abs=1e-4)


def make_cfg_predict(ckpt, source, output):
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "predict", overrides=[f"ckpt_path={ckpt}", f"input={source}", f"output={output}"]
        )


def test_read_rows_txt_is_single_sentence_and_tables_carry_pairs(tmp_path):
    (tmp_path / "a.txt").write_text("one\ttwo\nthree\n", encoding="utf-8")
    assert read_rows(tmp_path / "a.txt") == [{"text": "one\ttwo"}, {"text": "three"}]
    table = _write_csv(tmp_path / "a.csv", ("text", "text_pair"), [("a", "b"), ("c", "")])
    assert read_rows(table) == [{"text": "a", "text_pair": "b"}, {"text": "c"}]


def test_config_errors_name_the_key(make_cfg, tmp_path):
    paths = _user_files(tmp_path)
    base = files_overrides(paths)
    missing = [o.replace("text_pair_column=sentence2", "text_pair_column=other") for o in base]
    with pytest.raises(ConfigError, match=r"no column 'other'.*data\.tasks\.paraphrase\.text_pair"):
        build_data(make_cfg(*missing).data)
    _write_csv(paths["similarity"], ("sentence1", "sentence2", "score"), [("a", "b", "high")] * 9)
    message = r"\(data\.tasks\.sts\.train\) line 2 has score 'high'.*not a number"
    with pytest.raises(ConfigError, match=message):
        build_data(make_cfg(*base).data)
    with pytest.raises(ConfigError, match=r"type=pair_classification needs two sentences"):
        build_data(make_cfg("+data.tasks.sentiment.type=pair_classification").data)
    with pytest.raises(ConfigError, match=r"type=regression is unknown"):
        build_data(make_cfg("+data.tasks.sentiment.type=regression").data)
    with pytest.raises(ConfigError, match=r"type_options.loss=l1 is unknown"):
        build_data(make_cfg(*TYPES, "data.tasks.similarity.type_options.loss=l1").data)


def test_hf_source_reads_pairs_and_scores(tmp_path):
    pytest.importorskip("datasets")
    from mtl_lightning.data.sources.base import Rows
    from mtl_lightning.data.sources.hf import HFSource

    rows = [("a cat", "a kitten", 4.5), ("a car", "the sea", 0.5), ("", "dropped", 1.0)]
    csv_file = _write_csv(tmp_path / "sts.csv", ("sentence1", "sentence2", "score"), rows)
    common = {"path": "csv", "data_files": str(csv_file), "text_column": "sentence1"}
    source = HFSource(
        "sts", **common, text_pair_column="sentence2", label_column="score", type="similarity"
    )
    assert source.load(tmp_path) == {
        "train": Rows(["a cat", "a car"], ["4.5", "0.5"], ["a kitten", "the sea"])
    }
    with pytest.raises(ConfigError, match=r"no column 'text_pair'.*sts\.text_pair_column"):
        HFSource("sts", **common, label_column="score", type="similarity").load(tmp_path)


@pytest.mark.slow
def test_predict_one_pair_from_the_command_line_keys(make_cfg, tmp_path):
    train(make_cfg(*TYPES, "trainer.max_epochs=1"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir

    overrides = [f"ckpt_path={ckpt}", "text='A man sings.'", "text_pair='A man is singing.'"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        (row,) = predict(compose("predict", overrides=overrides))
    assert set(row) == {"text", "text_pair", "classification", "paraphrase", "similarity"}
    pair = {"text": "A man sings.", "text_pair": "A man is singing."}
    expected = Predictor.from_checkpoint(ckpt, device="cpu").predict([pair])[0]
    assert row["similarity"]["score"] == pytest.approx(expected["similarity"]["score"], abs=1e-5)


def test_report_uses_each_tasks_primary_metric(tmp_path):
    """A sweep with a similarity task: its table shows Spearman and Pearson, and the overall
    table the monitored mean of primaries, not the accuracies' mean."""
    import csv

    from mtl_lightning.study.report import write_report

    folder = tmp_path / "sweep" / "0_full_finetune"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(
        "freezing:\n  scenario: full_finetune\nseed: 1\n"
    )
    rows = [
        {
            "epoch": 0,
            "val/primary_mean": 0.70,
            "val/acc_mean": 0.6,
            "val/qa/acc": 0.6,
            "val/qa/f1": 0.5,
            "val/sts/spearman": 0.80,
            "val/sts/pearson": 0.75,
        },
        {
            "epoch": 1,
            "test/primary_mean": 0.65,
            "test/acc_mean": 0.55,
            "test/qa/acc": 0.55,
            "test/sts/spearman": 0.75,
            "test/sts/pearson": 0.70,
        },
    ]
    with (folder / "metrics.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=sorted({k for r in rows for k in r} | {"step"}))
        writer.writeheader()
        writer.writerows(rows)
    text = write_report(tmp_path / "sweep").read_text()
    assert "| 0_full_finetune | full_finetune | 1 | all | 0.7000 | 0.6500 |" in text
    sts = text.split("### Task `sts`")[1]
    assert "best val Spearman | best val Pearson | test Spearman | test Pearson" in sts
    assert "| 0_full_finetune | full_finetune | 0.8000 | 0.7500 | 0.7500 | 0.7000 |" in sts
    assert (tmp_path / "sweep" / "val_acc_sts.png").is_file()


@pytest.mark.slow
def test_export_writes_and_reloads_every_types_head(make_cfg, tmp_path):
    from mtl_lightning.hub.export import export_checkpoint, load_heads
    from mtl_lightning.model.module import load_module

    train(make_cfg(*TYPES, "trainer.max_epochs=1"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    exported = export_checkpoint(ckpt, tmp_path / "exported")
    spec = json.loads((exported / "heads.json").read_text())
    assert {task: t["type"] for task, t in spec["tasks"].items()} == {
        "classification": "classification",
        "paraphrase": "pair_classification",
        "similarity": "similarity",
    }
    # (u, v, |u - v|, u * v), each 32 wide
    assert spec["tasks"]["paraphrase"]["tensors"]["classifier.weight"] == [2, 4 * 32]
    heads, labels = load_heads(exported)
    assert labels["similarity"] == [] and labels["paraphrase"] == ["not_paraphrase", "paraphrase"]
    module = load_module(ckpt, "ckpt_path").eval()
    u, v = torch.randn(5, 32), torch.randn(5, 32)
    with torch.inference_mode():
        for task in ("paraphrase", "similarity"):
            torch.testing.assert_close(heads[task](u, v), module.heads[task](u, v))
    card = (exported / "README.md").read_text()
    assert "| similarity | similarity | scores in [0.0, 5.0] |" in card
    assert "| paraphrase | pair_classification | not_paraphrase, paraphrase |" in card


def test_data_resolves_tokenizers_below_model_and_inference_pads_without_the_datamodule():
    """One job per room: `mtl_lightning.core.resolve` finds encoders and tokenizers for data/ and
    model/ alike; inference pads with tasks/collate.py, not through the datamodule."""
    import ast
    from pathlib import Path

    import mtl_lightning

    package = Path(mtl_lightning.__file__).parent

    def imports(path: Path) -> set[str]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    for path in (package / "data").rglob("*.py"):
        assert not {m for m in imports(path) if m.startswith("mtl_lightning.model")}, path
    assert "mtl_lightning.model" not in str(imports(package / "core" / "resolve.py"))
    inference = imports(package / "model" / "inference.py")
    assert "mtl_lightning.data.datamodule" not in inference
    assert "mtl_lightning.tasks.collate" in inference


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ("data.sampling=alternating",),
        ("data.sampling=proportional",),
        ("data.sampling=temperature", "model.loss_weighting=uncertainty"),
        # only_head_frozen: its head frozen after 1 of the 2 epochs (the experiment's is 2)
        (
            "+model.loss_weights.similarity=0.5",
            "experiment=only_head_frozen",
            "freezing.head_warmup_epochs=1",
        ),
        (
            "experiment=only_head_frozen",
            "freezing.head=similarity",
            "freezing.head_warmup_epochs=1",
        ),
    ],
)
def test_pair_and_score_tasks_in_every_sampling_mode_and_weighting(make_cfg, overrides):
    metrics = train(make_cfg(*TYPES, "trainer.max_epochs=2", *overrides))
    for task, primary in PRIMARY.items():
        assert f"test/{task}/{primary}" in metrics
    if "freezing.head=similarity" in overrides:  # the frozen head's primary metric, tracked
        assert "val/similarity/forgetting" in metrics
    if "model.loss_weighting=uncertainty" in overrides:
        assert metrics["train/weight/similarity"] != 1.0  # learned


@pytest.mark.ddp
@pytest.mark.subprocess
def test_ddp_replicas_stay_identical_with_pair_and_score_tasks(tiny_encoders, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    sums = tmp_path / "sums"
    command = [
        sys.executable, "-m", "mtl_lightning.train", "trainer=ddp", *TYPES, "logger=csv",
        "experiment=gradual_unfreeze", "trainer.max_epochs=2",
        "+trainer.enable_progress_bar=false",
        f"model.encoder.name_or_path={tiny_encoders['bert']}",
        f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}",
        "+callbacks.checksum._target_=helpers.ParamChecksum", f"+callbacks.checksum.out={sums}",
    ]  # fmt: skip
    path = os.pathsep.join(p for p in (str(tests), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = json.loads((sums / "rank0.json").read_text())
    rank1 = json.loads((sums / "rank1.json").read_text())
    assert rank0 == rank1
    assert any(name.startswith("heads.similarity.") for name in rank0["1"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metrics"]["test/similarity/spearman"] is not None
