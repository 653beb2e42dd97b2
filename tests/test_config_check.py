"""Bad values of the keys a user sets are refused in one sentence naming the key and the fix."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from mtl_lightning.config_check import check_train_config, check_trainer
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.data.datamodule import MultiTaskDataModule
from mtl_lightning.data.sources.base import TinySource
from mtl_lightning.encode import encode
from mtl_lightning.model.module import MultiTaskModule
from mtl_lightning.predict import predict
from mtl_lightning.scenarios.gradual_unfreeze import GradualUnfreeze
from mtl_lightning.train import build_data, build_module, train

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
TASKS = {"classification": ["a", "b", "c"], "sentiment": ["negative", "positive"]}


def compose_cfg(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["seed=abc"], r"^seed='abc' must be an integer: e\.g\. seed=42\.$"),
        (["trainer.max_epochs=abc"], r"^trainer\.max_epochs='abc' must be an integer"),
        (["data.batch_size=1.5"], r"^data\.batch_size=1\.5 must be an integer, at least 1"),
        (["data.token_cache=yes"], r"^data\.token_cache='yes' must be true or false"),
        (
            ["experiment=gradual_unfreeze", "freezing.unfreeze_embeddings=no"],
            r"^freezing\.unfreeze_embeddings='no' must be",
        ),
        (["model.lr=-1"], r"^model\.lr=-1 must be at least 0"),
        (["model.head_lr=-0.1"], r"^model\.head_lr=-0\.1 must be at least 0"),
        (
            ["model.layerwise_lr_decay=0.9"],
            r"^model\.layerwise_lr_decay=0\.9 must be at least 1: it divides .* the multiplier "
            r"0\.9 is model\.layerwise_lr_decay=1\.11 \(1/0\.9\)\.$",
        ),
        (["model.layerwise_lr_decay=0"], r"^model\.layerwise_lr_decay=0 must be at least 1"),
        (["model.head_dropout=1.5"], r"^model\.head_dropout=1\.5 must be at least 0 and below 1"),
        (["model.warmup_ratio=1.5"], r"^model\.warmup_ratio=1\.5 must be between 0 and 1"),
        (["model.encoder.pooling=avg"], r"^model\.encoder\.pooling=avg must be one of mean, cls"),
        (["model.weight_decay=-0.1"], r"^model\.weight_decay=-0\.1 must be at least 0"),
        (["+model.loss_weights.sentiment=-1"], r"^model\.loss_weights\.sentiment=-1 must be"),
        (["data.max_length=0"], r"^data\.max_length=0 must be at least 1"),
        (["data.max_length=-3"], r"^data\.max_length=-3 must be at least 1"),
        (
            ["data.val_fraction=0.7", "data.test_fraction=0.7"],
            r"^data\.val_fraction=0\.7 and data\.test_fraction=0\.7 add up to 1\.4, leaving no "
            r"training examples",
        ),
        (["data.val_fraction=-0.1"], r"^data\.val_fraction=-0\.1 must be at least 0"),
        (["data.num_workers=-1"], r"^data\.num_workers=-1 must be at least 0"),
        (
            ["experiment=gradual_unfreeze", "freezing.every_n_epochs=0"],
            r"^freezing\.every_n_epochs=0 must be above 0",
        ),
        (["freezing.keep_frozen_layers=-1"], r"^freezing\.keep_frozen_layers=-1 must be at"),
        (
            ["experiment=gradual_unfreeze", "freezing.plateau_patience=0"],
            r"^freezing\.plateau_patience=0 must be at least 1",
        ),
        (
            ["experiment=gradual_unfreeze", "freezing.plateau_mode=median"],
            r"^freezing\.plateau_mode=median must be max or min",
        ),
        (["trainer.max_epochs=-3"], r"^trainer\.max_epochs=-3 must be at least 1"),
        (["trainer.max_epochs=-1"], r"^trainer\.max_epochs=-1 sets no end.*trainer\.max_steps="),
        (["trainer.devices=2"], r"^trainer\.devices=2 starts 2 processes.*use trainer=ddp"),
        (["trainer.devices=0"], r"^trainer\.devices=0 must be a number of devices"),
        (["trainer.precision=17"], r"^trainer\.precision=17 is unknown: use one of"),
        (["trainer.accelerator=tpux"], r"^trainer\.accelerator=tpux is unknown"),
        (["trainer.deterministic=maybe"], r"^trainer\.deterministic=maybe must be true, false"),
        (
            ["optimized_metric=val/sentiment/loss"],
            r"^optimized_metric=val/sentiment/loss is a loss \(lower is better\), but "
            r"callbacks\.model_checkpoint\.mode=max keeps the epoch where it is highest: add "
            r"callbacks\.model_checkpoint\.mode=min\.$",
        ),
        (
            ["experiment=gradual_unfreeze", "freezing.plateau_monitor=val/loss"],
            r"^freezing\.plateau_monitor=val/loss is a loss .* add freezing\.plateau_mode=min\.$",
        ),
    ],
)
def test_bad_values_are_refused_in_one_sentence_before_anything_is_built(
    make_cfg, tmp_path, overrides, message
):
    with pytest.raises(ConfigError, match=message) as refused:
        train(make_cfg(*overrides))
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "run").exists()  # refused before any logger or trainer existed
    assert not (tmp_path / "data" / ".token_cache").exists()  # and before the data was read


def test_every_shipped_config_passes_the_checks(make_cfg):
    options = [
        *(f"experiment={p.stem}" for p in (CONF_DIR / "experiment").glob("*.yaml")),
        *(f"data={p.stem}" for p in (CONF_DIR / "data").glob("*.yaml")),
        *(f"debug={p.stem}" for p in (CONF_DIR / "debug").glob("*.yaml")),
        "trainer=ddp",
        "trainer=cpu",
        "model=distilbert",
    ]
    for option in options:
        check_train_config(make_cfg(option))


def test_a_loss_with_mode_min_passes(make_cfg):
    check_train_config(
        make_cfg(
            "optimized_metric=val/sentiment/loss",
            "callbacks.model_checkpoint.mode=min",
            "experiment=gradual_unfreeze",
            "freezing.plateau_monitor=val/loss",
            "freezing.plateau_mode=min",
        )
    )


@pytest.mark.parametrize(
    ("cuda", "message"),
    [
        # `make install` kept a CPU build: named as the cause, with the command that fixes it.
        (None, r'^trainer\.accelerator=gpu but this torch \S+ is a CPU build: install a CUDA one, '
         r'e\.g\. make install TORCH="torch==\d[^ ]* --index-url \S+/cu128" .*trainer=cpu\.$'),
        ("12.8", r"^trainer\.accelerator=gpu but no CUDA GPU is visible \(torch \S+, built for "
         r"CUDA 12\.8\): check nvidia-smi and CUDA_VISIBLE_DEVICES, or use trainer=cpu"),
    ],
)  # fmt: skip
def test_gpu_trainer_without_a_gpu_names_the_cause(monkeypatch, cuda, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    cfg = compose_cfg("train", "trainer=gpu")
    with pytest.raises(ConfigError, match=message):
        check_trainer(cfg.trainer)


def test_ddp_devices_pass(make_cfg):
    check_trainer(make_cfg("trainer=ddp").trainer)  # 2 CPU processes, samplers shard themselves


def test_keep_frozen_layers_must_leave_a_layer_to_train(make_cfg, tmp_path):
    # The tiny encoder has 3 layers: keeping 3 frozen would freeze the whole encoder silently.
    with pytest.raises(
        ConfigError, match=r"^freezing\.keep_frozen_layers=3 freezes all 3 layers.*below 3"
    ):
        train(make_cfg("freezing.keep_frozen_layers=3"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_max_epochs_minus_one_trains_until_max_steps(make_cfg, tmp_path):
    metrics = train(make_cfg("trainer.max_epochs=-1", "trainer.max_steps=3"))
    assert 0 <= metrics["test/acc_mean"] <= 1
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3  # it stopped at max_steps, within the first epoch


def test_max_epochs_minus_one_without_max_steps_in_python(make_cfg):
    """A Python user's Trainer without an end: configure_optimizers says what to set."""
    cfg = make_cfg()
    datamodule = build_data(cfg.data)
    module = build_module(cfg.model, datamodule.label_names)
    trainer = L.Trainer(
        max_epochs=-1, accelerator="cpu", logger=False, enable_checkpointing=False, barebones=True
    )
    with pytest.raises(ConfigError, match=r"^trainer\.max_epochs=-1 sets no end"):
        trainer.fit(module, datamodule=datamodule)


@pytest.mark.slow
def test_fit_without_the_best_checkpoint_callback(make_cfg, tmp_path):
    """`~callbacks.model_checkpoint` (documented) leaves last.ckpt's callback, monitor=None."""
    metrics = train(make_cfg("~callbacks.model_checkpoint", "trainer.max_epochs=1"))
    assert 0 <= metrics["test/acc_mean"] <= 1
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert not list((tmp_path / "run" / "checkpoints").glob("best-*"))


def test_python_constructors_use_the_same_rules(tiny_encoders):
    encoder = {"name_or_path": tiny_encoders["bert"]}
    with pytest.raises(ConfigError, match=r"^model\.layerwise_lr_decay=0\.8 must be at least 1"):
        MultiTaskModule(TASKS, encoder, layerwise_lr_decay=0.8)
    with pytest.raises(ConfigError, match=r"^model\.head_dropout=1\.5 must be"):
        MultiTaskModule(TASKS, encoder, head_dropout=1.5)
    source = {"a": TinySource("classification")}
    with pytest.raises(ConfigError, match=r"^data\.val_fraction=-0\.2 must be at least 0"):
        MultiTaskDataModule(source, "unused", val_fraction=-0.2)
    with pytest.raises(ConfigError, match=r"add up to 1\.4"):
        MultiTaskDataModule(source, "unused", val_fraction=0.7, test_fraction=0.7)
    with pytest.raises(ConfigError, match=r"^data\.batch_size=0 must be at least 1"):
        MultiTaskDataModule(source, "unused", batch_size=0)
    with pytest.raises(ConfigError, match=r"^freezing\.every_n_epochs=0 must be above 0"):
        GradualUnfreeze(every_n_epochs=0)


def test_predict_and_encode_refuse_bad_values_by_their_own_keys(tiny_encoders, tmp_path):
    good = tmp_path / "sentences.txt"
    good.write_text("ok\n")
    io = (f"input={good}", f"output={tmp_path / 'out.jsonl'}")
    with pytest.raises(ConfigError, match=r"^max_length=0 must be at least 1"):
        predict(compose_cfg("predict", "ckpt_path=any.ckpt", *io, "max_length=0"))
    with pytest.raises(ConfigError, match=r"^batch_size='abc' must be an integer"):
        predict(compose_cfg("predict", "ckpt_path=any.ckpt", *io, "batch_size=abc"))
    npy = (f"input={good}", f"output={tmp_path / 'out.npy'}")
    with pytest.raises(ConfigError, match=r"^max_length=0 must be at least 1"):
        encode(compose_cfg("encode", "ckpt_path=none", *npy, "max_length=0"))
    with pytest.raises(ConfigError, match=r"^pooling=avg must be one of mean, cls, max"):
        encode(compose_cfg("encode", "ckpt_path=none", *npy, "pooling=avg"))
    with pytest.raises(ConfigError, match=r"^encoder=/no/such/encoder does not exist") as bad:
        encode(compose_cfg("encode", "ckpt_path=none", *npy, "encoder=/no/such/encoder"))
    assert "model." not in str(bad.value)
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"^encoder=\S+not_a_model is a folder without config"):
        encode(compose_cfg("encode", "ckpt_path=none", *npy, f"encoder={folder}"))
