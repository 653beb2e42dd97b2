"""Every config key a user sets, with its type and range: a bad value is refused in one sentence.

`RULES` is the one table of what each key accepts. `check_train_config(cfg)` runs it (and the
checks that need several keys or the machine: fractions, devices, GPUs, an end for the
learning-rate schedule) on the composed config before anything is built; `check_predict_config`
and `check_encode_config` do the same for their commands. Constructors that Python users call
directly check their own arguments with `check_values`, against the same rules.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.accelerators import AcceleratorRegistry
from omegaconf import DictConfig, OmegaConf

from mtl_lightning.errors import ConfigError
from mtl_lightning.model.encoder import POOLINGS
from mtl_lightning.names import check_task_names

_ABSENT = object()
# Lightning's estimated_stepping_batches is infinite then; `configure_optimizers` needs steps.
NO_END = (
    "trainer.max_epochs=-1 sets no end, and the learning-rate schedule (warmup, then linear "
    "decay to 0) needs one: set trainer.max_steps=<steps> as well, or a positive "
    "trainer.max_epochs."
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


KINDS: dict[type, tuple[Callable[[Any], bool], str]] = {
    int: (_is_int, "an integer"),
    float: (_is_number, "a number"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    str: (lambda v: isinstance(v, str), "a string"),
}


@dataclass(frozen=True)
class Rule:
    """What one key accepts: a value of `kind` for which `ok(value)` holds (`need` says so in
    words), or null when `nullable`; `fix` ends the refusal (default: `example` as a value)."""

    kind: type
    need: str = ""
    ok: Callable[[Any], bool] = lambda value: True
    example: Any = None
    nullable: bool = False
    fix: Callable[[Any], str] | None = None

    def problem(self, key: str, value: Any) -> str | None:
        """The sentence refusing `value` for `key`, or None when it is fine."""
        if value is None and self.nullable:
            return None
        is_kind, kind_words = KINDS[self.kind]
        if is_kind(value) and self.ok(value):
            return None
        shown = f"'{value}'" if isinstance(value, str) and self.kind is not str else value
        if is_kind(value):
            wanted = self.need
        else:
            wanted = kind_words + (f", {self.need}" if self.need else "")
        if self.nullable:
            wanted += ", or null"
        if self.fix is not None and is_kind(value):
            return f"{key}={shown} must be {wanted}: {self.fix(value)}."
        example = "" if self.example is None else f": e.g. {key}={self.example}"
        return f"{key}={shown} must be {wanted}{example}."


def int_at_least(example: int, least: int = 1, **kwargs) -> Rule:
    return Rule(int, f"at least {least}", lambda v: v >= least, example, **kwargs)


def _decay_fix(value: float) -> str:
    if value <= 0:
        return "it divides each lower layer's learning rate (1 keeps all equal, ULMFiT uses 2.6)"
    return (
        f"it divides each lower layer's learning rate (1 keeps all equal, ULMFiT uses 2.6), so "
        f"the multiplier {value} is model.layerwise_lr_decay={1 / value:.3g} (1/{value})"
    )


def _limit_ok(value: int) -> bool:
    return value == -1 or value >= 1


RULES: dict[str, Rule] = {
    # conf/train.yaml
    "seed": Rule(int, example=42),
    "ckpt_path": Rule(str, example="<run>/checkpoints/last.ckpt", nullable=True),
    "fork_from": Rule(str, example="<run>/checkpoints/epoch00.ckpt", nullable=True),
    "optimized_metric": Rule(str, example="val/primary_mean"),
    "freezing.scenario": Rule(str, example="full_finetune"),
    "freezing.head": Rule(str, example="classification"),
    "freezing.head_warmup_epochs": int_at_least(1, least=0, nullable=True),
    "freezing.every_n_epochs": Rule(float, "above 0 (0.25: a quarter epoch)", lambda v: v > 0, 1),
    "freezing.unfreeze_every_steps": int_at_least(200, nullable=True),
    "freezing.unfreeze_embeddings": Rule(bool, example="true"),
    "freezing.keep_frozen_layers": int_at_least(2, least=0),
    "freezing.plateau_patience": int_at_least(2, nullable=True),
    "freezing.plateau_monitor": Rule(str, example="val/primary_mean"),
    "freezing.plateau_mode": Rule(str, "max or min", ("max", "min").__contains__, "max"),
    # conf/model/*.yaml
    "model.encoder.name_or_path": Rule(str, example="sentence-transformers/all-MiniLM-L6-v2"),
    # null: a sentence-transformers folder's own pooling and normalisation, else mean, none.
    "model.encoder.pooling": Rule(
        str, f"one of {', '.join(POOLINGS)}", POOLINGS.__contains__, "mean", nullable=True
    ),
    "model.encoder.normalize": Rule(bool, example="false", nullable=True),
    "model.head_dropout": Rule(
        float, "at least 0 and below 1", lambda v: 0 <= v < 1, 0.1
    ),  # a probability of zeroing
    "model.loss_weighting": Rule(str, example="static"),
    # 0 is allowed: those weights stay where they are (a control run, e.g. zero forgetting).
    "model.lr": Rule(float, "at least 0", lambda v: v >= 0, "5e-5"),
    "model.head_lr": Rule(float, "at least 0", lambda v: v >= 0, "1e-3"),
    "model.layerwise_lr_decay": Rule(float, "at least 1", lambda v: v >= 1, fix=_decay_fix),
    "model.weight_decay": Rule(float, "at least 0", lambda v: v >= 0, 0.01),
    "model.warmup_ratio": Rule(
        float, "between 0 and 1 (a share of the training steps)", lambda v: 0 <= v <= 1, 0.1
    ),
    "model.init_from": Rule(str, example="<run>/checkpoints/last.ckpt", nullable=True),
    "model.frozen_cache": Rule(bool, example="true"),
    "model.frozen_cache_max_gb": Rule(float, "at least 0", lambda v: v >= 0, 4.0),
    # conf/data/*.yaml (data.tasks.* are checked by their sources)
    "data.tokenizer": Rule(str, example="sentence-transformers/all-MiniLM-L6-v2"),
    "data.data_dir": Rule(str, example="data"),
    "data.batch_size": int_at_least(32),
    "data.eval_batch_size": int_at_least(128),
    "data.max_length": int_at_least(64),  # 0 would turn truncation off
    "data.sampling": Rule(str, example="joint"),
    "data.temperature": Rule(
        float,
        "above 0",
        lambda v: v > 0,
        fix=lambda v: (
            "use 1 for proportional sampling, larger values for more equal task shares (default 2)"
        ),
    ),
    "data.token_cache": Rule(bool, example="true"),
    "data.val_fraction": Rule(float, "at least 0 and below 1", lambda v: 0 <= v < 1, 0.1),
    "data.test_fraction": Rule(float, "at least 0 and below 1", lambda v: 0 <= v < 1, 0.1),
    "data.seed": Rule(int, example=42),
    "data.num_workers": int_at_least(2, least=0),
    "data.bucket_pool": Rule(
        int, "at least 1", lambda v: v >= 1, fix=lambda v: "1 is random batching"
    ),
    "data.max_train_examples": int_at_least(1000, least=2, nullable=True),
    # conf/trainer/*.yaml (accelerator, devices and strategy: `check_trainer`)
    "trainer.max_epochs": Rule(int, "at least 1 (or -1 for no limit)", _limit_ok, 3, nullable=True),
    "trainer.max_steps": Rule(int, "at least 1 (or -1 for no limit)", _limit_ok, 1000),
    "trainer.log_every_n_steps": int_at_least(20),
    "trainer.num_sanity_val_steps": int_at_least(0, least=-1),
    "trainer.accumulate_grad_batches": int_at_least(1),
    "trainer.default_root_dir": Rule(str, example="logs"),
    "trainer.use_distributed_sampler": Rule(bool, example="false"),
}

# Lightning's accepted precision values (its own lists; none if they move).
_PRECISIONS: tuple = ()
try:
    from lightning.fabric import connector as _connector

    _PRECISIONS = tuple(
        dict.fromkeys(
            str(value)
            for name in (
                "_PRECISION_INPUT_STR",
                "_PRECISION_INPUT_STR_ALIAS",
                "_PRECISION_INPUT_INT",
            )
            for value in typing.get_args(getattr(_connector, name))
        )
    )
except (ImportError, AttributeError):  # pragma: no cover - a Lightning without these names
    pass

# conf/predict.yaml and conf/encode.yaml: the keys are top level there.
INFERENCE_RULES: dict[str, Rule] = {
    "ckpt_path": Rule(str, example="<run>/checkpoints/last.ckpt", nullable=True),
    "input": Rule(str, example="sentences.txt", nullable=True),
    "output": Rule(str, example="out.jsonl", nullable=True),
    "device": Rule(str, example="auto"),
    "batch_size": int_at_least(64),
    "max_length": int_at_least(256),  # 0 would turn truncation off
}
ENCODE_RULES: dict[str, Rule] = {
    **INFERENCE_RULES,
    "output": Rule(str, example="embeddings.npy", nullable=True),
    "encoder": Rule(str, example="sentence-transformers/all-MiniLM-L6-v2"),
    "pooling": Rule(
        str, f"one of {', '.join(POOLINGS)}", POOLINGS.__contains__, "mean", nullable=True
    ),
    "normalize": Rule(bool, example="false", nullable=True),
}


def check_values(prefix: str, values: Mapping[str, Any]) -> None:
    """Check constructor arguments named like the keys under `prefix` (e.g. "data")."""
    for name, value in values.items():
        rule = RULES.get(f"{prefix}.{name}")
        problem = rule.problem(f"{prefix}.{name}", value) if rule else None
        if problem:
            raise ConfigError(problem)


def _check_table(cfg: DictConfig, rules: Mapping[str, Rule]) -> None:
    for key, rule in rules.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:  # removed with ~key, or a trainer config without it
            continue
        problem = rule.problem(key, value)
        if problem:
            raise ConfigError(problem)


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """The carved-out shares leave train something (each one's own range is in `RULES`)."""
    check_values("data", {"val_fraction": val_fraction, "test_fraction": test_fraction})
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} add up to "
            f"{val_fraction + test_fraction:g}, leaving no training examples: keep their sum "
            "below 1 (e.g. 0.1 each)."
        )


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
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible: use trainer=cpu (or "
            "trainer=default, which picks a GPU when there is one)."
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
    _check_table(cfg, RULES)
    tasks = cfg.data.get("tasks")
    if isinstance(tasks, Mapping):
        check_task_names([t for t, source in tasks.items() if source is not None], "data.tasks")
    check_fractions(cfg.data.get("val_fraction", 0.1), cfg.data.get("test_fraction", 0.1))
    loss_weights = cfg.model.get("loss_weights")
    if loss_weights is not None and not isinstance(loss_weights, Mapping):
        raise ConfigError(
            f"model.loss_weights={loss_weights} must be a mapping of task to weight, or null: "
            "e.g. model.loss_weights={classification:1,sentiment:2}."
        )
    weight_rule = Rule(float, "at least 0", lambda v: v >= 0, 1.0)
    for task, weight in (loss_weights or {}).items():
        problem = weight_rule.problem(f"model.loss_weights.{task}", weight)
        if problem:
            raise ConfigError(problem)
    points = cfg.get("fork_points")
    if points is not None and not (
        isinstance(points, Sequence)
        and not isinstance(points, str)
        and all(_is_int(p) and p >= 0 for p in points)
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
    _check_table(cfg, INFERENCE_RULES)


def check_encode_config(cfg: DictConfig) -> None:
    _check_table(cfg, ENCODE_RULES)
