"""Shared fixtures: tiny random encoders saved like real ones, and the real config, composed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from transformers import AutoModel, AutoTokenizer, BertConfig, DistilBertConfig

from mtl_lightning.model.encoder import packaged_minilm_path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download

TINY_CONFIGS = {
    "bert": BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    ),
    "distilbert": DistilBertConfig(
        vocab_size=30522, dim=32, n_layers=3, n_heads=2, hidden_dim=64, max_position_embeddings=128
    ),
}


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict[str, str]:
    """Random 3-layer BERT and DistilBERT folders with the packaged (uncased BERT) tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_minilm_path()))
    folders = {}
    for name, config in TINY_CONFIGS.items():
        folder = tmp_path_factory.mktemp(f"tiny_{name}")
        torch.manual_seed(0)  # the same random weights in every session (test_behaviour_lock)
        AutoModel.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = str(folder)
    return folders


@pytest.fixture
def make_cfg(tiny_encoders, tmp_path) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml as a user would, shrunk: tiny data, tiny encoder, CSV logger."""

    def make(*overrides: str, encoder: str = "bert", output: str = "run") -> DictConfig:
        base = [
            "data=tiny",
            "logger=csv",
            f"model.encoder.name_or_path={tiny_encoders[encoder]}",
            f"paths.root_dir={tmp_path}",
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.output_dir={tmp_path / output}",
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=1",
            "trainer.accelerator=cpu",
            "++trainer.enable_progress_bar=false",
            "++trainer.enable_model_summary=false",
        ]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=base + list(overrides))

    return make


def compose_cfg(name: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="session")
def run_root(tiny_encoders, tmp_path_factory) -> Path:
    """One tiny training run (like `make_cfg`), whose encoder folder is deleted afterwards:
    shared by the tests that predict, encode or craft checkpoints from it (a module may
    override it with a run of its own, as test_export does)."""
    root = tmp_path_factory.mktemp("predict")
    encoder = root / "encoder"
    shutil.copytree(tiny_encoders["bert"], encoder)
    from mtl_lightning.train import train

    train(
        compose_cfg(
            "train",
            "experiment=full_finetune",
            "data=tiny",
            "logger=csv",
            f"model.encoder.name_or_path={encoder}",
            f"paths.root_dir={root}",
            f"paths.data_dir={root / 'data'}",
            f"paths.output_dir={root / 'run'}",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "++trainer.enable_progress_bar=false",
            "++trainer.enable_model_summary=false",
        )
    )
    shutil.rmtree(encoder)  # from here on, the checkpoint alone must be enough
    return root


@pytest.fixture(scope="session")
def ckpt(run_root) -> Path:
    return run_root / "run" / "checkpoints" / "last.ckpt"
