"""Export: a trained run as a sentence-transformers folder, a plain HF model, heads and a card;
and a sentence-transformers folder as the encoder to train from (its pooling and length)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.provenance import project_commit
from mtl_lightning.core.st_folder import write_folder
from mtl_lightning.hub.export import export_checkpoint, load_heads, model_card, read_run
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
    assert model.max_seq_length == 64  # encode's default: the run's data.max_length
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
        loss = "cross-entropy on the head's logits"
        assert (
            f"| {task} | classification | {', '.join(labels)} | {loss} | {sizes['train']} | "
            in card
        )
        assert f"| {task} | Accuracy | {summary['metrics'][f'test/{task}/acc']:.4f} |" in card
    assert str(run_root / "encoder") in card  # the base encoder
    assert "Scenario: `gradual_unfreeze`" in card and "`freezing.every_n_epochs=1`" in card
    # The schedule: epoch 0 trains the heads only, epoch 1 also the top layer group (of 4).
    assert "| 0 | classification, sentiment | 0 of 4 |" in card
    assert "| 1 | classification, sentiment | 1 of 4 |" in card
    assert "forgetting" not in card  # only only_head_frozen measures it
    assert "transformers " in card and "torch " in card and "lightning " in card
    command = "python -m mtl_lightning.train experiment=gradual_unfreeze freezing.every_n_epochs=1"
    assert command in card


@pytest.fixture(scope="module")
def types_root(tiny_encoders, tmp_path_factory) -> Path:
    """A run of one task of each type (data=tiny_types) over 3 epochs, its encoder deleted."""
    root = tmp_path_factory.mktemp("export_types")
    encoder = root / "encoder"
    shutil.copytree(tiny_encoders["bert"], encoder)
    run_cli(
        "train",
        "data=tiny_types",
        "logger=csv",
        f"model.encoder.name_or_path={encoder}",
        f"paths.root_dir={root}",
        f"paths.data_dir={root / 'data'}",
        f"hydra.run.dir={root / 'run'}",
        "trainer.max_epochs=3",
        "trainer.accelerator=cpu",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
        cwd=root,
    )
    shutil.rmtree(encoder)
    return root


@pytest.fixture(scope="module")
def best_export(types_root) -> tuple[Path, Path]:
    """The types run's best checkpoint (the one its test metrics are of), exported with a
    license and a max_length above training's; (checkpoint, folder)."""
    (ckpt,) = (types_root / "run" / "checkpoints").glob("best-epoch*.ckpt")
    output = types_root / "exported_best"
    # Longer than training cut (64): the card says what that means.
    run_cli(
        "export",
        f"ckpt_path={ckpt}",
        f"output={output}",
        "license=mit",
        "max_length=128",
        cwd=types_root,
    )
    return ckpt, output


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---", 2)[1])


def test_the_card_says_which_epoch_was_exported_and_which_was_tested(
    types_root, best_export, tmp_path
):
    """The test metrics are the best checkpoint's: the card names both epochs, and keeps the
    metrics out of its metadata when the exported weights are others."""
    ckpt, exported = best_export
    summary = json.loads((types_root / "run" / "summary.json").read_text())
    chosen = summary["best_epochs"]["chosen"]
    assert ckpt.name == f"best-epoch{chosen:02d}.ckpt"
    card = (exported / "README.md").read_text()
    assert f"exported from `{ckpt.name}`, epoch {chosen} " in card
    assert f"best checkpoint by `val/primary_mean`, epoch {chosen}, on each task" in card
    assert "These are the exported weights" in card
    assert "model-index" in front_matter(card)
    # last.ckpt (epoch 2) of a run whose best epoch was another: crafted by editing its summary.
    run = tmp_path / "run"
    shutil.copytree(types_root / "run", run)
    summary["best_epochs"]["chosen"] = 0 if chosen != 0 else 1
    (run / "summary.json").write_text(json.dumps(summary))
    card = model_card_of(run / "checkpoints" / "last.ckpt")
    assert "exported from `last.ckpt`, epoch 2 " in card
    tested = summary["best_epochs"]["chosen"]
    assert f"`last.ckpt` is of epoch 2, the metrics below of epoch {tested}" in card
    assert "The exported weights are not the ones tested" in card
    assert "model-index" not in front_matter(card)


def model_card_of(ckpt: Path, name_or_path: str | None = None, **run_changes) -> str:
    """`model_card` of a checkpoint and its run folder, as export writes it (optionally with
    another base encoder name, or parts of the run record replaced)."""
    module = load_module(ckpt, "ckpt_path")
    if name_or_path is not None:
        module.hparams.encoder = {**module.hparams.encoder, "name_or_path": name_or_path}
    run = read_run(ckpt) | run_changes
    return model_card(module, ckpt, run, 128, {})


def test_the_cards_usage_computes_every_head_as_the_model_does(best_export, monkeypatch):
    """The card's example, run as written: each task's output (logits; for the similarity task
    its score, through the head's projection) equals the trained model's."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    ckpt, exported = best_export
    card = (exported / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(exported)
    names: dict = {}
    exec(code.replace("<this folder>", str(exported)), names)  # the card's own code
    assert isinstance(names["model"], sentence_transformers.SentenceTransformer)
    module = load_module(ckpt, "ckpt_path").eval()
    embeddings, u, v = (torch.from_numpy(names[k]) for k in ("embeddings", "u", "v"))
    with torch.inference_mode():
        expected = {
            "classification": module.heads["classification"](embeddings),
            "paraphrase": module.heads["paraphrase"](u, v),
        }
        cosine = module.heads["similarity"](u, v)
    score = module.task_types["similarity"].predictions(cosine)[0]["score"]
    assert set(names["out"]) == {"classification", "paraphrase", "similarity"}
    for task, logits in expected.items():
        np.testing.assert_allclose(names["out"][task], logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(names["out"]["similarity"], [score], atol=1e-4)
    # The plain cosine of the embeddings is not the task's score, and the card says so.
    assert "model.similarity(u, v), the cosine of the embeddings themselves, is not it" in card
    assert "`model.similarity` (the cosine of the embeddings) is not the score" in card


def test_base_model_metadata_is_only_a_hub_id(best_export, st_encoder, tmp_path, monkeypatch):
    """A local folder's name (gone since, or relative to elsewhere) goes in the text only."""
    from huggingface_hub import constants

    ckpt, _ = best_export
    for local in ("enc_local", "models/enc_local", "./enc", str(tmp_path)):
        card = model_card_of(ckpt, local)
        assert "base_model" not in front_matter(card)
        assert f"- `{local}`: a local folder or a name not known to be a Hub id" in card
    card = model_card_of(ckpt, PACKAGED_MINILM)
    assert front_matter(card)["base_model"] == PACKAGED_MINILM
    assert "the base model's card gives `apache-2.0`" in card  # the packaged copy's card
    assert "wang-2020-minilm" in card  # its citation
    # A hub id in the local HF cache (offline: nothing is asked of the hub).
    repo = tmp_path / "hub" / "models--someone--tiny-st"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(st_encoder("mean", False), repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    card = model_card_of(ckpt, "someone/tiny-st")
    assert front_matter(card)["base_model"] == "someone/tiny-st"


def test_the_card_lists_only_the_freezing_settings_its_scenario_reads(exported, best_export):
    card = (exported / "README.md").read_text()  # gradual_unfreeze, every_n_epochs=1
    settings = (
        "Settings: `freezing.every_n_epochs=1`, `freezing.unfreeze_embeddings=true`, "
        "`freezing.keep_frozen_layers=0`.\n"
    )
    assert settings in card
    full_finetune = (best_export[1] / "README.md").read_text()
    assert "Settings: `freezing.keep_frozen_layers=0`.\n" in full_finetune
    for text in (card, full_finetune):
        section = text.split("## Freezing")[1].split("## Test metrics")[0]
        assert "None" not in section and "True" not in section and "False" not in section
        assert "freezing.head=" not in section and "plateau" not in section


def test_card_metadata_license_language_datasets_and_model_index(types_root, best_export):
    """The Hub metadata: license (export's key), language (the sources'), datasets (hub ids
    only) and model-index (the test metrics), valid for huggingface_hub."""
    from huggingface_hub import ModelCard

    ckpt, exported = best_export
    card = (exported / "README.md").read_text()
    meta = front_matter(card)
    assert meta["license"] == "mit" and meta["language"] == "en"
    assert "datasets" not in meta  # the tiny corpus is no Hub data set
    metrics = json.loads((types_root / "run" / "summary.json").read_text())["metrics"]
    results = ModelCard(card).data.eval_results
    found = {(r.dataset_name, r.metric_type): (r.task_type, r.metric_value) for r in results}
    assert found == {
        ("classification", "accuracy"): ("text-classification", metrics["test/classification/acc"]),
        ("classification", "f1"): ("text-classification", metrics["test/classification/f1"]),
        ("paraphrase", "accuracy"): ("text-classification", metrics["test/paraphrase/acc"]),
        ("paraphrase", "f1"): ("text-classification", metrics["test/paraphrase/f1"]),
        ("similarity", "spearman"): ("sentence-similarity", metrics["test/similarity/spearman"]),
        ("similarity", "pearson"): ("sentence-similarity", metrics["test/similarity/pearson"]),
    }
    # A task from a Hub data set: its id is the card's `datasets` and its model-index dataset.
    run = read_run(ckpt)
    run["config"]["data"]["tasks"]["classification"] = {
        "_target_": "mtl_lightning.data.sources.hf.HFSource",
        "task": "classification",
        "path": "CogComp/trec",
        "splits": {"train": "train", "val": None, "test": "test"},
        "label_column": "coarse_label",
    }
    card = model_card_of(ckpt, config=run["config"])
    meta = front_matter(card)
    assert meta["datasets"] == ["CogComp/trec"]
    assert "language" not in meta  # the Hub data set states none here
    types = {r["dataset"]["name"]: r["dataset"]["type"] for r in meta["model-index"][0]["results"]}
    assert types["classification"] == "CogComp/trec"
    assert (
        "| classification | the Hugging Face dataset `CogComp/trec`, splits train=train, " in card
    )


def test_card_tells_data_hyperparameters_losses_limits_versions_and_commit(best_export):
    _, exported = best_export
    card = (exported / "README.md").read_text()
    # The data and where it came from: the tiny corpus, val and test carved out of train.
    assert (
        "| similarity | the tiny corpus shipped in mtl-lightning, `data/tiny/similarity.tsv` |"
        in card
    )
    assert "| train | val, test |" in card
    assert "`data.val_fraction=0.2`, `data.test_fraction=0.2`" in card
    # The training length beside the exported one; other hyperparameters.
    assert "- `data.max_length`: 64 (the training truncation; the exported model's " in card
    assert "max_seq_length is 128)" in card
    assert "- `model.lr`: 5e-05" in card and "- `trainer.max_epochs`: 3" in card
    # Each task's loss; the similarity function; the best epochs.
    assert (
        "| similarity | similarity | scores in [0.0, 5.0] | cosent: CoSENT on cos(p(u), p(v))"
        in card
    )
    assert "cross-entropy on the head's logits of (u, v, \\|u - v\\|, u * v)" in card
    assert "similarity function: cosine (`model.similarity`" in card
    assert "Each task's own best val epoch: classification " in card
    # Intended use and limitations: the carved test split, the truncation.
    assert "## Intended use and limitations" in card
    assert "The test split of classification, paraphrase, similarity was carved out" in card
    assert "Training cut sentences at 64 tokens (`data.max_length`)" in card
    # Citations, versions.
    assert "## Citation" in card and "@inproceedings{reimers-2019-sentence-bert," in card
    assert "@article{10531646," in card  # CoSENT, the similarity task's loss
    assert "tokenizers " in card and "datasets " in card
    # The commit the run trained at (recorded in summary.json), or why there is none.
    commit = project_commit()
    if commit is None:
        assert "commit not recorded" in card
    else:
        assert f"commit `{commit['sha']}` (recorded when the run trained" in card


def test_project_commit_is_none_outside_a_git_checkout(tmp_path):
    assert project_commit(tmp_path / "mtl_lightning") is None
    (tmp_path / "site-packages" / "mtl_lightning").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # a venv in some checkout
    assert project_commit(tmp_path / "site-packages" / "mtl_lightning") is None


def test_a_run_records_the_commit_its_process_loaded_not_a_later_one(monkeypatch):
    """A multirun trains for hours; a commit made meanwhile is not the code its later runs ran."""
    from mtl_lightning.core import provenance

    found = iter([{"sha": "a" * 40, "dirty": False}, {"sha": "b" * 40, "dirty": False}])
    monkeypatch.setattr(provenance, "project_commit", lambda: next(found))
    provenance.loaded_commit.cache_clear()
    try:
        assert provenance.loaded_commit()["sha"] == "a" * 40
        assert provenance.loaded_commit()["sha"] == "a" * 40  # the checkout moved: still a
    finally:
        provenance.loaded_commit.cache_clear()


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


def test_export_checks_its_folder_first_and_leaves_nothing_half_written(
    ckpt, tmp_path, monkeypatch
):
    import mtl_lightning.hub.export as hub_export

    blocker = tmp_path / "a_file"
    blocker.write_text("")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    with monkeypatch.context() as patched:
        patched.setattr(hub_export, "load_module", no_model)
        with pytest.raises(
            ConfigError,
            match=rf"^output={re.escape(str(blocker / 'out'))} cannot be written: .*a_file is a "
            r"file, not a folder",
        ):
            export_checkpoint(ckpt, blocker / "out")

    def full_disk(folder, module):
        raise OSError(errno.ENOSPC, "No space left on device")

    output = tmp_path / "exported"
    with monkeypatch.context() as patched:
        patched.setattr(hub_export, "write_heads", full_disk)  # after the encoder's files
        with pytest.raises(
            ConfigError,
            match=rf"^output={re.escape(str(output))} cannot be written \(No space left on "
            r"device\): give a path in a folder you can write to, on a disk with free space\.$",
        ):
            export_checkpoint(ckpt, output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing half-written
    export_checkpoint(ckpt, output)  # so a second export is not refused
    assert {"heads.json", "modules.json", "README.md"} <= {p.name for p in output.iterdir()}
    # overwrite=true replaces the export's files and keeps what else the folder holds.
    (output / "notes.txt").write_text("mine")
    (output / "heads.json").write_text("stale")
    export_checkpoint(ckpt, output, overwrite=True)
    assert (output / "notes.txt").read_text() == "mine"
    assert json.loads((output / "heads.json").read_text())["format"] == "mtl-lightning-heads/1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "exported"]


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
