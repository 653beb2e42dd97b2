"""Every config key a user sets, with its type and range: a bad value is refused in one sentence.

Each configured class keeps the rules of its own keys beside it (`mtl_lightning.core.rules`);
`RULES` gathers them under their config keys, with the top-level and trainer keys that belong to
no class. `check_train_config(cfg)` runs it (and the checks that need several keys or the
machine: fractions, devices, GPUs, an end for the learning-rate schedule) on the composed config
before anything is built; `check_predict_config` and `check_encode_config` do the same for their
commands.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.accelerators import AcceleratorRegistry
from omegaconf import DictConfig

from mtl_lightning.core.compat import precision_values
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.names import check_task_names
from mtl_lightning.core.rules import Rule, check_table, int_at_least, is_int, prefixed
from mtl_lightning.data.datamodule import DATA_RULES, check_fractions
from mtl_lightning.model.encoder import ENCODER_RULES
from mtl_lightning.model.module import MODEL_RULES, NO_END, check_head_lrs
from mtl_lightning.scenarios.build import check_scenario_keys
from mtl_lightning.weighting.static import check_loss_weights


def _limit_ok(value: int) -> bool:
    return value == -1 or value >= 1


RULES: dict[str, Rule] = {
    # conf/train.yaml
    "seed": Rule(int, example=42),
    "ckpt_path": Rule(str, example="<run>/checkpoints/last.ckpt", nullable=True),
    "fork_from": Rule(str, example="<run>/checkpoints/epoch00.ckpt", nullable=True),
    "optimized_metric": Rule(str, example="val/primary_mean"),
    "test_after_fit": Rule(bool, example="false"),
    **prefixed("model", MODEL_RULES),
    **prefixed("model.encoder", ENCODER_RULES),
    **prefixed("data", DATA_RULES),
    # conf/trainer/*.yaml (accelerator, devices and strategy: `check_trainer`)
    "trainer.max_epochs": Rule(int, "at least 1 (or -1 for no limit)", _limit_ok, 3, nullable=True),
    "trainer.max_steps": Rule(int, "at least 1 (or -1 for no limit)", _limit_ok, 1000),
    "trainer.log_every_n_steps": int_at_least(20),
    "trainer.num_sanity_val_steps": int_at_least(0, least=-1),
    "trainer.accumulate_grad_batches": int_at_least(1),
    "trainer.default_root_dir": Rule(str, example="logs"),
    "trainer.use_distributed_sampler": Rule(bool, example="false"),
}

# Lightning's accepted precision values (its own lists).
_PRECISIONS = precision_values()

# conf/predict.yaml and conf/encode.yaml: the keys are top level there.
INFERENCE_RULES: dict[str, Rule] = {
    "ckpt_path": Rule(str, example="<run>/checkpoints/last.ckpt", nullable=True),
    "input": Rule(str, example="sentences.txt", nullable=True),
    "output": Rule(str, example="out.jsonl", nullable=True),
    "device": Rule(str, example="auto"),
    "batch_size": int_at_least(64),
    # 0 would turn truncation off; null: the checkpoint's training length
    "max_length": int_at_least(256, nullable=True),
}
ENCODE_RULES: dict[str, Rule] = {
    **INFERENCE_RULES,
    "output": Rule(str, example="embeddings.npy", nullable=True),
    "encoder": ENCODER_RULES["name_or_path"],
    "pooling": ENCODER_RULES["pooling"],
    "normalize": ENCODER_RULES["normalize"],
    # A checkpoint with one adapter per task (lora_per_task): the task whose adapter encodes.
    "adapter": Rule(str, example="<task>", nullable=True),
}


def _device_count(devices: Any, accelerator: str) -> int | None:
    """How many processes `trainer.devices` starts (None: not a value Lightning accepts)."""
    uses_gpus = accelerator in ("gpu", "cuda") or (
        accelerator == "auto" and torch.cuda.is_available()
    )
    if isinstance(devices, bool):
        return None
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return torch.cuda.device_count() if uses_gpus else 1
        if text.lstrip("-").isdecimal():
            devices = int(text)
        elif all(part.strip().isdecimal() for part in text.strip(",").split(",")):
            return len(text.strip(",").split(","))  # "0,1": these GPU indices
        else:
            return None
    if isinstance(devices, int):
        if devices == -1:
            return torch.cuda.device_count() if uses_gpus else 1
        return devices if devices >= 1 else None
    if isinstance(devices, Iterable):
        return len(list(devices))
    return None


def check_trainer(trainer: DictConfig) -> None:
    """Accelerator, devices and strategy fit this machine and our samplers."""
    accelerator = trainer.get("accelerator", "auto")
    known = ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))
    if accelerator not in known:
        raise ConfigError(
            f"trainer.accelerator={accelerator} is unknown: use one of {list(known)} (or "
            "trainer=cpu, trainer=gpu)."
        )
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            # The likely cause: `make install` kept the CPU build it installed first.
            release = torch.__version__.split("+")[0]
            raise ConfigError(
                f"trainer.accelerator={accelerator} but this torch {torch.__version__} is a CPU "
                f'build: install a CUDA one, e.g. make install TORCH="torch=={release} '
                '--index-url https://download.pytorch.org/whl/cu128" (it reinstalls torch), or '
                "use trainer=cpu."
            )
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda}): check nvidia-smi and "
            "CUDA_VISIBLE_DEVICES, or use trainer=cpu (or trainer=default, which picks a GPU "
            "when there is one)."
        )
    deterministic = trainer.get("deterministic")
    if deterministic not in (None, True, False, "warn"):
        raise ConfigError(
            f"trainer.deterministic={deterministic} must be true, false or warn: e.g. "
            "trainer.deterministic=true."
        )
    precision = trainer.get("precision")
    if _PRECISIONS and precision is not None and str(precision) not in _PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision} is unknown: use one of {list(_PRECISIONS)}."
        )
    devices = trainer.get("devices", "auto")
    count = _device_count(devices, accelerator)
    if count is None:
        raise ConfigError(
            f"trainer.devices={devices} must be a number of devices (at least 1), -1 or auto for "
            "all, or a list of GPU indices: e.g. trainer.devices=1."
        )
    if count > 1 and trainer.get("use_distributed_sampler", True):
        raise ConfigError(
            f"trainer.devices={devices} starts {count} processes, and our batch samplers shard "
            "the data themselves: use trainer=ddp (with trainer.accelerator=gpu on GPUs)."
        )
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    if max_epochs == -1 and max_steps in (-1, None):
        raise ConfigError(NO_END)


def is_loss(metric: str) -> bool:
    """Whether a logged metric is a loss (lower is better): `val/loss`, `val/<task>/loss`."""
    return metric.rsplit("/", 1)[-1].endswith("loss")


def check_modes(cfg: DictConfig) -> None:
    """A loss monitored with mode max would keep (or wait for) the worst epoch: refuse it."""
    watched = [  # (key naming the metric, metric, key of its mode, mode)
        (
            f"callbacks.{name}.monitor",
            node.get("monitor"),
            f"callbacks.{name}.mode",
            node.get("mode"),
        )
        for name, node in (cfg.get("callbacks") or {}).items()
        if isinstance(node, Mapping)
    ]
    freezing = cfg.get("freezing") or {}
    watched.append(
        (
            "freezing.plateau_monitor",
            freezing.get("plateau_monitor"),
            "freezing.plateau_mode",
            freezing.get("plateau_mode"),
        )
    )
    for monitor_key, monitor, mode_key, mode in watched:
        if isinstance(monitor, str) and is_loss(monitor) and mode == "max":
            if monitor_key.startswith("callbacks.") and monitor == cfg.get("optimized_metric"):
                monitor_key = "optimized_metric"  # what the user set: the callback follows it
            raise ConfigError(
                f"{monitor_key}={monitor} is a loss (lower is better), but {mode_key}=max keeps "
                f"the epoch where it is highest: add {mode_key}=min."
            )


def check_train_config(cfg: DictConfig) -> None:
    """Refuse any bad value of conf/train.yaml's keys before anything is built."""
    check_table(cfg, RULES)
    # The scenario's own keys, by the rules its class keeps (an unknown key is refused).
    check_table(cfg, prefixed("freezing", check_scenario_keys(cfg.get("freezing")).RULES))
    ignores = cfg.get("fork_ignores")
    if ignores is not None and not (
        isinstance(ignores, Sequence)
        and not isinstance(ignores, str)
        and all(isinstance(key, str) for key in ignores)
    ):
        raise ConfigError(
            f"fork_ignores={ignores} must be a list of dotted config keys: e.g. "
            "fork_ignores=[paths,logger]."
        )
    tasks = cfg.data.get("tasks")
    if isinstance(tasks, Mapping):
        check_task_names([t for t, source in tasks.items() if source is not None], "data.tasks")
    check_fractions(cfg.data.get("val_fraction", 0.1), cfg.data.get("test_fraction", 0.1))
    # Values only: which tasks train is known once the data is built (data.only_tasks), where
    # StaticWeighting and the module check the names.
    check_loss_weights(cfg.model.get("loss_weights"))
    check_head_lrs(cfg.model.get("head_lrs"))
    points = cfg.get("fork_points")
    if points is not None and not (
        isinstance(points, Sequence)
        and not isinstance(points, str)
        and all(is_int(p) and p >= 0 for p in points)
    ):
        raise ConfigError(
            f"fork_points={points} must be a list of epochs (integers from 0): e.g. "
            "fork_points=[0], or [] for none."
        )
    if cfg.get("fork_from") and cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path and fork_from both say where training starts: give ckpt_path to resume "
            "this run, or fork_from to start from another run's epoch, not both."
        )
    if cfg.get("fork_from") and cfg.model.get("init_from"):
        raise ConfigError(
            "model.init_from and fork_from both say where the weights come from: a fork starts "
            "from the source run's whole state; drop model.init_from."
        )
    check_modes(cfg)
    check_trainer(cfg.trainer)


def check_frozen_layers(keep_frozen_layers: int, num_layers: int) -> None:
    """`freezing.keep_frozen_layers` leaves at least one encoder layer free to train."""
    if keep_frozen_layers and keep_frozen_layers >= num_layers:
        raise ConfigError(
            f"freezing.keep_frozen_layers={keep_frozen_layers} freezes all {num_layers} layers "
            f"of the encoder: keep it below {num_layers}, or use "
            "experiment=only_transformer_frozen to freeze the whole encoder."
        )


def check_predict_config(cfg: DictConfig) -> None:
    check_table(cfg, INFERENCE_RULES)


def check_encode_config(cfg: DictConfig) -> None:
    check_table(cfg, ENCODE_RULES)
