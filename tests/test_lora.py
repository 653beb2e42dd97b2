"""`lora` and `lora_per_task` (issue 21, adapters): only adapters and heads train, per-task
adapters route each task and forget nothing when a task is added, the frozen-prefix cache and
resume stay exact, and the export loads in sentence-transformers and equals `encode`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_cfg
from helpers import Recorder, train_cached_and_fresh

from mtl_lightning.core.checkpoint import read_checkpoint
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.encode import encode
from mtl_lightning.hub.export import export_checkpoint
from mtl_lightning.model.adapters import activate
from mtl_lightning.model.inference import Predictor
from mtl_lightning.scenarios.build import build_scenario, scenario_name
from mtl_lightning.study.fork import schedule_problem
from mtl_lightning.train import train

RECORD = "+callbacks.recorder._target_=helpers.Recorder"
TASKS = ("classification", "sentiment")
TEXTS = ["What is the capital of France?", "A gripping, funny film.", "Who wrote Hamlet?"]


def _adapter_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def _lora_params(hidden: int, intermediate: int, layers: int, r: int) -> int:
    """LoRA's parameters on a BERT layer stack: r * (in + out) per adapted linear layer (query,
    key, value, attention output: hidden -> hidden; intermediate and output: hidden <->
    intermediate)."""
    per_layer = 4 * r * (2 * hidden) + 2 * r * (hidden + intermediate)
    return layers * per_layer


def _last(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


def _val_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as file:
        return [row for row in csv.DictReader(file) if row.get("val/classification/acc")]


def test_the_experiments_build_lora_and_refuse_bad_settings_naming_the_key(make_cfg):
    shared = build_scenario(make_cfg("experiment=lora").freezing)
    per_task = build_scenario(make_cfg("experiment=lora_per_task").freezing)
    assert (shared.name, per_task.name) == ("lora", "lora_per_task")
    assert scenario_name(make_cfg("experiment=lora_per_task")) == "lora_per_task"  # the report's
    assert shared.adapters(list(TASKS))["names"] == ["shared"]
    assert per_task.adapters(list(TASKS))["names"] == list(TASKS)
    for override, key in (
        ("freezing.r=0", "freezing.r"),
        ("freezing.dropout=1.5", "freezing.dropout"),
        ("freezing.target_modules=query", "freezing.target_modules"),
        ("+freezing.rank=4", "freezing.rank"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            train(make_cfg("experiment=lora", override))
    # A fork compares plans, which do not hold the adapters' settings: lora is never forked.
    problem = schedule_problem(shared, per_task, 1, TASKS, 4, 2, lambda e, t: 1)
    assert problem is not None and "lora" in problem


@pytest.mark.slow
def test_target_modules_and_layers_that_name_nothing_are_refused(make_cfg):
    with pytest.raises(ConfigError, match=r"freezing\.target_modules=\['nope'\]"):
        train(make_cfg("experiment=lora", "freezing.target_modules=[nope]"))
    with pytest.raises(ConfigError, match=r"freezing\.layers=\[7\]"):
        train(make_cfg("experiment=lora", "freezing.layers=[7]"))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["lora", "lora_per_task"])
def test_only_adapters_and_heads_train(make_cfg, tmp_path, experiment):
    metrics = train(make_cfg(f"experiment={experiment}", RECORD))
    recorder = Recorder.last
    for epoch, names in recorder.trainable.items():
        assert names == {n for n in recorder.before if _adapter_param(n) or n.startswith("heads.")}
        modes = recorder.training[epoch]
        assert not modes["encoder.model"]
        base_dropouts = [k for k in modes if k.startswith("encoder.") and k.endswith(".dropout")]
        assert base_dropouts and not any(modes[k] for k in base_dropouts)
        lora_dropouts = [k for k in modes if ".lora_dropout." in k]
        assert lora_dropouts and all(modes[k] for k in lora_dropouts)
    frozen = [n for n in recorder.before if not _adapter_param(n) and not n.startswith("heads.")]
    assert len(frozen) > 40
    for name in frozen:  # the base encoder, bit for bit
        assert torch.equal(recorder.before[name], recorder.after[name]), name
    changed = {n for n in recorder.before if not torch.equal(recorder.before[n], recorder.after[n])}
    assert any(".lora_B." in n for n in changed) and any(n.startswith("heads.") for n in changed)
    # The counts: LoRA's r * (in + out) per adapted layer, per adapter, and the heads.
    adapters = len(TASKS) if experiment == "lora_per_task" else 1
    heads = sum(v.numel() for n, v in recorder.before.items() if n.startswith("heads."))
    expected = adapters * _lora_params(hidden=32, intermediate=64, layers=3, r=8) + heads
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["trainable_params"] == expected
    assert metrics["freeze/trainable_params"] == expected
    total = sum(v.numel() for v in recorder.before.values())
    assert expected < 0.02 * total * adapters  # a tiny encoder: its embeddings dominate


@pytest.mark.slow
def test_each_task_trains_only_its_own_adapter(make_cfg):
    """Joint sampling puts both tasks in every step; each task's batch must run through its own
    adapter. With the classification loss weighted 0 (and no weight decay), only sentiment's
    adapter may change (a routing through one adapter for every task would change
    classification's instead)."""
    train(
        make_cfg(
            "experiment=lora_per_task", "data.sampling=joint", "trainer.max_epochs=1", RECORD,
            "model.loss_weights={classification:0.0,sentiment:1.0}", "model.weight_decay=0",
        )
    )  # fmt: skip
    recorder = Recorder.last
    changed = {n for n in recorder.before if not torch.equal(recorder.before[n], recorder.after[n])}
    assert any(".lora_B.sentiment." in n for n in changed)
    assert not any(".classification." in n and _adapter_param(n) for n in changed)


@pytest.mark.slow
def test_adding_a_task_adds_an_adapter_and_the_first_task_forgets_nothing(make_cfg, tmp_path):
    train(make_cfg("experiment=lora_per_task", "~data.tasks.sentiment", output="stage1"))
    stage1 = _last(tmp_path / "stage1")
    saved = read_checkpoint(stage1, "ckpt_path")["state_dict"]
    assert any(".lora_B.classification." in k for k in saved)
    assert not any(".sentiment." in k for k in saved)
    metrics = train(
        make_cfg("experiment=lora_per_task", f"model.init_from={stage1}", "model.lr=1e-2")
    )
    stage2 = _last(tmp_path / "run")
    state = read_checkpoint(stage2, "ckpt_path")["state_dict"]
    # The new task got its own adapter, and trained it; the first task's is as it was loaded.
    assert any(".lora_B.sentiment." in k and state[k].abs().sum() > 0 for k in state)
    for key, value in saved.items():
        if key.startswith("metrics."):  # the metrics' running state, not weights
            continue
        assert torch.equal(state[key], value), key
    # Its forgetting is exactly 0 at every validation, and its predictions are bit-identical.
    assert metrics["val/classification/forgetting"] == 0.0
    logged = [r for r in _val_rows(tmp_path / "run") if r.get("val/classification/forgetting")]
    assert len(logged) == 2
    assert all(float(row["val/classification/forgetting"]) == 0.0 for row in logged)
    before = Predictor.from_checkpoint(stage1, device="cpu").predict(TEXTS)
    after = Predictor.from_checkpoint(stage2, device="cpu").predict(TEXTS)
    assert [row["classification"] for row in after] == [row["classification"] for row in before]


@pytest.mark.slow
def test_adapters_start_from_a_checkpoint_trained_without_them(make_cfg, tmp_path):
    """Stage 1 fine-tunes task A fully; stage 2 adds task B with one adapter per task: the
    checkpoint's encoder weights become the adapted layers' base weights, A's adapter starts
    as the identity (LoRA's B is 0) and stays so, and A predicts exactly as stage 1 did."""
    train(make_cfg("experiment=full_finetune", "~data.tasks.sentiment", output="stage1"))
    stage1 = _last(tmp_path / "stage1")
    metrics = train(make_cfg("experiment=lora_per_task", f"model.init_from={stage1}"))
    assert metrics["val/classification/forgetting"] == 0.0
    before = Predictor.from_checkpoint(stage1, device="cpu").predict(TEXTS)
    after = Predictor.from_checkpoint(_last(tmp_path / "run"), device="cpu").predict(TEXTS)
    assert [row["classification"] for row in after] == [row["classification"] for row in before]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["lora", "lora_per_task"])
def test_cached_and_fresh_training_are_equal_under_lora(make_cfg, experiment):
    """Adapters on the top layer only: the prefix cache serves the two frozen layers below it."""
    common = (f"experiment={experiment}", "freezing.layers=[2]", "trainer.max_epochs=3", RECORD)
    cached_metrics, fresh_metrics, cached = train_cached_and_fresh(make_cfg, *common)
    assert cached_metrics["freeze/prefix_cache_hits"] > 0  # it did serve
    assert not any(".layer.0." in n or ".layer.1." in n for n in cached.trainable[0])
    for key in ("val/primary_mean", "test/classification/acc", "test/sentiment/acc"):
        assert cached_metrics[key] == pytest.approx(fresh_metrics[key], abs=1e-5)


@pytest.mark.slow
def test_lora_on_every_layer_leaves_no_prefix_to_cache(make_cfg):
    metrics = train(make_cfg("experiment=lora", "trainer.max_epochs=1"))
    assert "freeze/prefix_cache_hits" not in metrics


@pytest.mark.slow
def test_resume_is_exact_for_lora(make_cfg, tmp_path):
    common = ("experiment=lora_per_task", "trainer.max_epochs=3", RECORD)
    train(make_cfg(*common, output="straight"))
    straight = Recorder.last
    stop = ("+callbacks.stop._target_=helpers.StopAfterEpoch", "+callbacks.stop.epoch=0")
    train(make_cfg(*common, *stop, output="stopped"))
    train(make_cfg(*common, f"ckpt_path={_last(tmp_path / 'stopped')}", output="resumed"))
    resumed = Recorder.last
    assert resumed.trainable.keys() == {1, 2}
    changed = [n for n in straight.after if not torch.equal(straight.before[n], straight.after[n])]
    assert any(".lora_A." in n for n in changed)  # the comparison covers trained adapters
    for name, value in straight.after.items():
        torch.testing.assert_close(resumed.after[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_shared_adapter_is_merged_into_the_export(make_cfg, tmp_path):
    from sentence_transformers import SentenceTransformer

    train(make_cfg("experiment=lora", "trainer.max_epochs=1", "model.lr=1e-2"))
    folder = export_checkpoint(_last(tmp_path / "run"), tmp_path / "exported")
    assert not (folder / "adapters").exists()
    card = (folder / "README.md").read_text()
    assert "## Adapters" in card and "**merged**" in card
    predictor = Predictor.from_checkpoint(_last(tmp_path / "run"), device="cpu")
    expected = predictor.encode(TEXTS)
    exported = SentenceTransformer(str(folder), device="cpu").encode(TEXTS)
    assert abs(exported - expected).max() < 1e-5
    with pytest.raises(ConfigError, match="^adapter=classification: this encoder has no per-task"):
        encode(_encode_cfg(tmp_path, _last(tmp_path / "run"), "adapter=classification"))
    # The adapter matters: the base encoder alone (the folder unmerged) encodes otherwise.
    activate(predictor.encoder.model, None)
    assert abs(predictor.encode(TEXTS) - expected).max() > 1e-3


def _encode_cfg(tmp_path: Path, ckpt: Path, *overrides: str):
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    files = (f"input={tmp_path / 'in.txt'}", f"output={tmp_path / 'out.npy'}")
    return compose_cfg("encode", f"ckpt_path={ckpt}", "device=cpu", *files, *overrides)


def _allow_installed_peft(monkeypatch) -> None:
    """transformers 5 asks for peft >= 0.22 before its adapter methods (which sentence-transformers'
    `load_adapter` calls) run; where only an older peft can be installed (0.21.2 here), its gate
    is lowered to it: what reads the folder is PEFT's own code either way, and the test also
    reads each folder with `PeftModel.from_pretrained` alone."""
    import peft
    import transformers.integrations.peft as transformers_peft
    from packaging.version import Version

    if Version(peft.__version__) < Version(transformers_peft.MIN_PEFT_VERSION):
        monkeypatch.setattr(transformers_peft, "MIN_PEFT_VERSION", peft.__version__)


@pytest.mark.slow
def test_per_task_adapters_export_as_peft_folders_sentence_transformers_loads(
    make_cfg, tmp_path, monkeypatch
):
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer

    _allow_installed_peft(monkeypatch)

    train(make_cfg("experiment=lora_per_task", "trainer.max_epochs=1", "model.lr=1e-2"))
    ckpt = _last(tmp_path / "run")
    folder = export_checkpoint(ckpt, tmp_path / "exported")
    card = (folder / "README.md").read_text()
    heads = json.loads((folder / "heads.json").read_text())
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    model = SentenceTransformer(str(folder), device="cpu")
    base = predictor.encode(TEXTS)  # no adapter: the frozen base, the folder's root model
    assert abs(model.encode(TEXTS) - base).max() < 1e-5
    for task in TASKS:
        assert heads["tasks"][task]["adapter"] == f"adapters/{task}"
        assert f"`adapters/{task}`" in card
        model.load_adapter(str(folder / "adapters" / task), adapter_name=task)
        model.set_adapter(task)
        expected = predictor.encode(TEXTS, adapter=task)
        assert abs(model.encode(TEXTS) - expected).max() < 1e-5
        assert abs(expected - base).max() > 1e-3  # the adapter changes the embeddings
        alone = SentenceTransformer(str(folder), device="cpu")  # PEFT's loader, no transformers
        alone[0].auto_model = PeftModel.from_pretrained(
            alone[0].auto_model, str(folder / "adapters" / task)
        )
        assert abs(alone.encode(TEXTS) - expected).max() < 1e-5
        encode(_encode_cfg(tmp_path, ckpt, f"adapter={task}"))  # the command line's adapter=
        assert np.array_equal(np.load(tmp_path / "out.npy"), expected)
    # Predict: each task's output is its head on its own adapter's embeddings.
    rows = predictor.predict(TEXTS)
    for task in TASKS:
        embeddings = torch.from_numpy(predictor.encode(TEXTS, adapter=task))
        kind = predictor.task_types[task]
        with torch.inference_mode():
            expected = kind.predictions(kind.outputs(predictor.heads[task], [embeddings]))
        assert [row[task] for row in rows] == expected
    with pytest.raises(ConfigError, match="not one of this checkpoint's per-task adapters"):
        predictor.encode(TEXTS, adapter="nope")


@pytest.mark.ddp
@pytest.mark.subprocess
def test_ddp_replicas_stay_identical_under_lora_per_task(tiny_encoders, tmp_path):
    """Two processes (gloo): per-task adapters switched per batch on each rank, both ranks hold
    the same parameters at every epoch's end, and the adapters did train."""
    tests = Path(__file__).resolve().parent
    sums = tmp_path / "sums"
    command = [
        sys.executable, "-m", "mtl_lightning.train", "trainer=ddp", "data=tiny", "logger=csv",
        "experiment=lora_per_task", "trainer.max_epochs=2", "+trainer.enable_progress_bar=false",
        f"model.encoder.name_or_path={tiny_encoders['bert']}", f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}", "+callbacks.checksum._target_=helpers.ParamChecksum",
        f"+callbacks.checksum.out={sums}",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent / "src")]),
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = json.loads((sums / "rank0.json").read_text())
    rank1 = json.loads((sums / "rank1.json").read_text())
    assert rank0 == rank1 and rank0.keys() == {"0", "1"}
    trained = [n for n, value in rank0["1"].items() if ".lora_B." in n and value != 0]
    assert {n.split(".lora_B.")[1].split(".")[0] for n in trained} == set(TASKS)
