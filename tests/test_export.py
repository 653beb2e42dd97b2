"""Export: a trained run as a sentence-transformers folder, a plain HF model, heads and a card;
and a sentence-transformers folder as the encoder to train from (its pooling and length)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.st_folder import write_folder
from mtl_lightning.hub.export import export_checkpoint, load_heads
from mtl_lightning.model.encoder import PACKAGED_MINILM, Encoder, load_tokenizer, pool
from mtl_lightning.model.inference import Predictor
from mtl_lightning.model.module import load_module
from mtl_lightning.train import train

LABELS = {
    "classification": ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"],
    "sentiment": ["negative", "positive"],
}
# One sentence is longer than the tiny encoder's 128 positions: both sides must cut it alike.
TEXTS = [
    "Who wrote Hamlet?",
    "a thoroughly enjoyable , clever and moving film about growing up in a small town",
    "ok",
    " ".join(["long"] * 300),
]


def run_cli(
    module: str, *overrides: str, cwd: Path, ok: bool = True
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", f"mtl_lightning.{module}", *overrides]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    if ok:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def run_root(tiny_encoders, tmp_path_factory) -> Path:
    """One run of the training command (so its folder has Hydra's config and overrides), with
    an encoder folder that is deleted afterwards: export needs only the checkpoint and run."""
    root = tmp_path_factory.mktemp("export")
    encoder = root / "encoder"
    shutil.copytree(tiny_encoders["bert"], encoder)
    run_cli(
        "train",
        "experiment=gradual_unfreeze",
        "freezing.every_n_epochs=1",  # whole-epoch stages: the card's table shows each
        "data=tiny",
        "logger=csv",
        f"model.encoder.name_or_path={encoder}",
        f"paths.root_dir={root}",
        f"paths.data_dir={root / 'data'}",
        f"hydra.run.dir={root / 'run'}",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
        cwd=root,
    )
    shutil.rmtree(encoder)
    return root


@pytest.fixture(scope="module")
def ckpt(run_root) -> Path:
    return run_root / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def exported(run_root, ckpt) -> Path:
    output = run_root / "exported"
    run_cli("export", f"ckpt_path={ckpt}", f"output={output}", cwd=run_root)
    return output


@pytest.mark.subprocess
def test_sentence_transformers_encode_equals_the_encode_cli(run_root, ckpt, exported, tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    source = tmp_path / "sentences.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    output = tmp_path / "embeddings.npy"
    run_cli("encode", f"ckpt_path={ckpt}", f"input={source}", f"output={output}", cwd=tmp_path)
    model = sentence_transformers.SentenceTransformer(str(exported), device="cpu")
    assert model.max_seq_length == 128  # encode's 256, capped by the tiny encoder's positions
    np.testing.assert_allclose(model.encode(TEXTS), np.load(output), atol=1e-5)


@pytest.mark.subprocess
def test_the_root_is_a_plain_hugging_face_model(ckpt, exported):
    model = AutoModel.from_pretrained(exported, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported, local_files_only=True)
    batch = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    pooled = pool(hidden, batch["attention_mask"], "mean", normalize=False)
    expected = Predictor.from_checkpoint(ckpt, device="cpu").encode(TEXTS[:3])
    np.testing.assert_allclose(pooled.numpy(), expected, atol=1e-5)


@pytest.mark.subprocess
def test_heads_reload_from_safetensors_with_the_checkpoints_logits(ckpt, exported):
    assert not [p.name for p in exported.rglob("*") if p.suffix in (".bin", ".pkl", ".pt")]
    spec = json.loads((exported / "heads.json").read_text())
    assert {task: t["labels"] for task, t in spec["tasks"].items()} == LABELS
    assert {t["type"] for t in spec["tasks"].values()} == {"classification"}
    assert spec["tasks"]["classification"]["tensors"]["classifier.weight"] == [6, 32]
    assert set(load_file(exported / "heads.safetensors")) == {
        f"{task}.classifier.{name}" for task in LABELS for name in ("weight", "bias")
    }
    heads, labels = load_heads(exported)
    assert labels == LABELS
    module = load_module(ckpt, "ckpt_path").eval()
    with torch.inference_mode():  # as sentence-transformers' encode(convert_to_tensor=True) gives
        embedding = torch.randn(5, 32)
        expected = {task: module.heads[task](embedding) for task in LABELS}
    for task in LABELS:
        torch.testing.assert_close(heads[task](embedding), expected[task])


@pytest.mark.subprocess
def test_model_card_holds_what_the_run_recorded(run_root, exported):
    card = (exported / "README.md").read_text()
    summary = json.loads((run_root / "run" / "summary.json").read_text())
    for task, labels in LABELS.items():
        sizes = summary["examples"][task]
        assert f"| {task} | classification | {', '.join(labels)} | {sizes['train']} | " in card
        assert f"{summary['metrics'][f'test/{task}/acc']:.4f}" in card
    assert str(run_root / "encoder") in card  # the base encoder
    assert "Scenario: `gradual_unfreeze`" in card and "`freezing.every_n_epochs=1`" in card
    # The schedule: epoch 0 trains the heads only, epoch 1 also the top layer group (of 4).
    assert "| 0 | classification, sentiment | 0 of 4 |" in card
    assert "| 1 | classification, sentiment | 1 of 4 |" in card
    assert "forgetting" in card
    assert "transformers " in card and "torch " in card and "lightning " in card
    command = "python -m mtl_lightning.train experiment=gradual_unfreeze freezing.every_n_epochs=1"
    assert command in card


@pytest.mark.subprocess
def test_export_needs_no_sentence_transformers(ckpt, tmp_path):
    """sentence-transformers is a dev extra: export runs with it made unimportable."""
    script = (
        "import sys\n"
        "sys.modules['sentence_transformers'] = None  # import now raises ImportError\n"
        "from mtl_lightning.hub.export import export_checkpoint\n"
        f"export_checkpoint({str(ckpt)!r}, {str(tmp_path / 'out')!r})\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "modules.json").is_file()


@pytest.mark.subprocess
def test_push_to_hub_offline_is_one_sentence_and_keeps_the_folder(run_root, ckpt, tmp_path):
    output = tmp_path / "out"
    overrides = [f"ckpt_path={ckpt}", f"output={output}", "push_to_hub=someone/mtl-model"]
    result = run_cli("export", *overrides, cwd=tmp_path, ok=False)
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("Error: push_to_hub=someone/mtl-model: the Hugging Face hub is not reachable")
    )
    assert "Traceback" not in result.stderr
    assert (output / "modules.json").is_file()


@pytest.mark.subprocess
def test_export_errors_name_the_key(ckpt, tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path=.*missing.ckpt does not exist"):
        export_checkpoint(tmp_path / "missing.ckpt", tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="is not an empty folder: .* or overwrite=true"):
        export_checkpoint(ckpt, tmp_path / "full")


@pytest.fixture
def st_encoder(tiny_encoders, tmp_path):
    """The tiny BERT as a sentence-transformers folder declaring `pooling`, `normalize`, 64."""

    def make(pooling: str, normalize: bool) -> Path:
        folder = tmp_path / f"st_{pooling}_{normalize}"
        shutil.copytree(tiny_encoders["bert"], folder)
        versions = {"sentence_transformers": "3.0.0"}
        write_folder(folder, 32, pooling, normalize, max_seq_length=64, versions=versions)
        return folder

    return make


@pytest.mark.slow
@pytest.mark.parametrize(("pooling", "normalize"), [("cls", False), ("max", True)])
def test_a_sentence_transformers_folder_round_trips(
    make_cfg, st_encoder, tmp_path, pooling, normalize
):
    """Train from an ST folder with pooling/normalize left null: the folder's are used, kept in
    the checkpoint (the folder is deleted), exported, and sentence-transformers agrees."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    folder = st_encoder(pooling, normalize)
    train(make_cfg(f"model.encoder.name_or_path={folder}", "trainer.max_epochs=1"))
    shutil.rmtree(folder)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    assert (predictor.encoder.pooling, predictor.encoder.normalize) == (pooling, normalize)
    assert predictor.max_length == 64  # the folder's max_seq_length, kept by the tokenizer
    output = export_checkpoint(ckpt, tmp_path / "exported")
    model = sentence_transformers.SentenceTransformer(str(output), device="cpu")
    kinds = [type(module).__name__ for module in model]
    assert kinds == ["Transformer", "Pooling"] + (["Normalize"] if normalize else [])
    assert model[1].pooling_mode == pooling
    assert model.max_seq_length == 64
    embeddings = model.encode(TEXTS)
    np.testing.assert_allclose(embeddings, predictor.encode(TEXTS), atol=1e-5)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    card = (output / "README.md").read_text()  # a run of train(cfg): its CSV logger's config
    assert f"pooling: {pooling}; normalised: {'yes' if normalize else 'no'}" in card
    assert "Scenario: `full_finetune`" in card and "Not recorded: the run was not started" in card


def test_settings_given_win_over_the_folders(st_encoder):
    folder = st_encoder("cls", True)
    assert (Encoder(str(folder)).pooling, Encoder(str(folder)).normalize) == ("cls", True)
    encoder = Encoder(str(folder), pooling="mean", normalize=False)
    assert (encoder.pooling, encoder.normalize) == ("mean", False)
    assert load_tokenizer(str(folder)).model_max_length == 64


def test_a_pooling_we_do_not_implement_is_refused_unless_set(st_encoder):
    folder = st_encoder("mean", False)
    config = folder / "1_Pooling" / "config.json"
    settings = json.loads(config.read_text())
    settings |= {"pooling_mode_mean_tokens": False, "pooling_mode_weightedmean_tokens": True}
    config.write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match="pools by weightedmean .* set model.encoder.pooling"):
        Encoder(str(folder))
    assert Encoder(str(folder), pooling="mean").pooling == "mean"


def test_the_packaged_minilm_is_read_as_a_sentence_transformers_folder():
    encoder = Encoder(PACKAGED_MINILM)
    assert (encoder.pooling, encoder.normalize) == ("mean", True)  # its 1_Pooling, 2_Normalize
    assert load_tokenizer(PACKAGED_MINILM).model_max_length == 256  # its max_seq_length


@pytest.mark.slow
def test_data_max_length_above_the_folders_max_seq_length_is_refused(make_cfg, st_encoder):
    folder = st_encoder("mean", False)  # max_seq_length 64
    cfg = make_cfg(f"model.encoder.name_or_path={folder}", "data.max_length=100")
    with pytest.raises(ConfigError, match="data.max_length=100 is above the 64 tokens"):
        train(cfg)


def test_a_hub_models_sentence_transformers_files_are_read_from_the_cache(
    st_encoder, tmp_path, monkeypatch
):
    """A hub id in the local HF cache (offline): its snapshot's ST files are read."""
    from huggingface_hub import constants

    from mtl_lightning.model.encoder import folder_settings

    repo = tmp_path / "hub" / "models--someone--tiny-st"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(st_encoder("cls", True), repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    settings = folder_settings("someone/tiny-st")
    assert (settings.pooling, settings.normalize, settings.max_seq_length) == ("cls", True, 64)
