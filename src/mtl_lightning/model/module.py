"""The LightningModule: shared encoder, one head per task, routing, losses, metrics, optimizer."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from lightning import LightningModule, Trainer
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mtl_lightning.core.checkpoint import check_settings, read_checkpoint
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.names import check_task_names, inside
from mtl_lightning.core.rules import Rule, check_task_mapping, check_values, is_int
from mtl_lightning.model.adapters import activate, adapter_parts, add_adapters
from mtl_lightning.model.embedding_cache import FrozenCache, SharedEmbeddings
from mtl_lightning.model.encoder import PACKAGED_MINILM, Encoder, layer_groups, load_tokenizer
from mtl_lightning.model.lr_schedule import staggered_warmup_schedule
from mtl_lightning.tasks import TaskType, build_task_type
from mtl_lightning.tasks.base import column_keys
from mtl_lightning.weighting import BY_NAME, LossWeighting
from mtl_lightning.weighting.base import backpropagate

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")
# The monitored mean over tasks (checkpoints, sweeps): of each task's primary metric.
PRIMARY_MEAN = "primary_mean"


# Lightning's estimated_stepping_batches is infinite then; `configure_optimizers` needs steps.
NO_END = (
    "trainer.max_epochs=-1 sets no end, and the learning-rate schedule (warmup, then linear "
    "decay to 0) needs one: set trainer.max_steps=<steps> as well, or a positive "
    "trainer.max_epochs."
)


def _decay_fix(value: float) -> str:
    if value <= 0:
        return "it divides each lower layer's learning rate (1 keeps all equal, ULMFiT uses 2.6)"
    return (
        f"it divides each lower layer's learning rate (1 keeps all equal, ULMFiT uses 2.6), so "
        f"the multiplier {value} is model.layerwise_lr_decay={1 / value:.3g} (1/{value})"
    )


# What each key of conf/model accepts (mtl_lightning.core.rules; `encoder.*`: ENCODER_RULES).
MODEL_RULES: dict[str, Rule] = {
    "head_dropout": Rule(float, "at least 0 and below 1", lambda v: 0 <= v < 1, 0.1),
    "loss_weighting": Rule(str, example="static"),
    # 0 is allowed: those weights stay where they are (a control run, e.g. zero forgetting).
    "lr": Rule(float, "at least 0", lambda v: v >= 0, "5e-5"),
    "head_lr": Rule(float, "at least 0", lambda v: v >= 0, "1e-3"),
    "layerwise_lr_decay": Rule(float, "at least 1", lambda v: v >= 1, fix=_decay_fix),
    "weight_decay": Rule(float, "at least 0", lambda v: v >= 0, 0.01),
    "warmup_ratio": Rule(
        float, "between 0 and 1 (a share of the training steps)", lambda v: 0 <= v <= 1, 0.1
    ),
    "init_from": Rule(str, example="<run>/checkpoints/last.ckpt", nullable=True),
    "frozen_cache": Rule(bool, example="true"),
    "frozen_cache_max_gb": Rule(float, "at least 0", lambda v: v >= 0, 4.0),
    "frozen_cache_dir": Rule(str, example="logs/frozen_embeddings", nullable=True),
}


HEAD_LRS_EXAMPLE = "+model.head_lrs.classification=1e-2"


def check_head_lrs(head_lrs: object, tasks: Collection[str] | None = None) -> None:
    """`model.head_lrs` is null or {task (of `tasks`, where given): a rate of at least 0}."""
    check_task_mapping(
        "model.head_lrs", head_lrs, MODEL_RULES["head_lr"], "learning rate", HEAD_LRS_EXAMPLE, tasks
    )


class GroupStarts(Protocol):
    """A schedule of when each encoder layer group starts training."""

    def group_starts(self, trainer: Trainer, names: list[str]) -> Mapping[str, int]: ...


class MultiTaskModule(LightningModule):
    """Encoder -> pooled sentence embedding(s) -> `heads[task]` -> outputs, one loss per task.

    `tasks` maps each task name to its label names (in class-id order; empty for a score), and
    `task_types` each task to its type's spec (`TaskType.spec()`; missing: classification); both
    come from the data, and are stored in the checkpoint with everything else needed to rebuild
    the model. The task types own heads, losses, metrics and outputs; this module routes.
    """

    def __init__(
        self,
        tasks: Mapping[str, list[str]],
        encoder: Mapping | None = None,
        head_dropout: float = 0.1,
        loss_weights: Mapping[str, float] | None = None,
        loss_weighting: str = "static",
        lr: float = 5e-5,
        head_lr: float = 1e-3,
        head_lrs: Mapping[str, float] | None = None,
        layerwise_lr_decay: float = 1.0,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        encoder_config: Mapping | None = None,
        frozen_cache: bool = True,
        frozen_cache_max_gb: float = 4.0,
        task_types: Mapping[str, Mapping] | None = None,
        weighting: LossWeighting | None = None,
        adapters: Mapping | None = None,
    ) -> None:
        """`weighting`: how the task losses combine (`mtl_lightning.weighting`, built by `train`
        from `conf/weighting`); None builds `loss_weighting` (`static` with `loss_weights`, or
        `uncertainty`), the spelling of `model.*` that stays as an alias. It is not a
        hyperparameter: a loaded checkpoint predicts without it.

        `adapters`: adapter layers (PEFT) to put on the encoder, as plain settings
        (`mtl_lightning.model.adapters`; given by a scenario such as `lora`); stored resolved,
        so that a checkpoint rebuilds them.

        `head_lrs`: {task: learning rate} for the heads that should not train at `head_lr`
        (e.g. a classifier's randomly initialised readout beside a similarity task's
        identity-initialised map); each named head is its own optimizer group `heads/<task>`."""
        super().__init__()
        check_task_names(tasks, "tasks")
        check_head_lrs(head_lrs, tasks)
        check_values(  # the rules of conf/model, for Python users too
            "model",
            {
                "head_dropout": head_dropout,
                "lr": lr,
                "head_lr": head_lr,
                "layerwise_lr_decay": layerwise_lr_decay,
                "weight_decay": weight_decay,
                "warmup_ratio": warmup_ratio,
                "frozen_cache": frozen_cache,
                "frozen_cache_max_gb": frozen_cache_max_gb,
            },
            MODEL_RULES,
        )
        self.save_hyperparameters(ignore=["weighting"])
        # model.frozen_cache: a frozen encoder's embeddings, or the output of its frozen lower
        # layers, computed once per example and reused every epoch (see `sentence_embedding`).
        self.frozen_cache = FrozenCache(frozen_cache_max_gb) if frozen_cache else None
        encoder_settings = dict(encoder or {"name_or_path": PACKAGED_MINILM})
        self.encoder = Encoder(**encoder_settings, config=encoder_config)
        # Pooling and normalisation as resolved (from a sentence-transformers folder where the
        # config left them null): the checkpoint must not need that folder to know them.
        self.hparams.encoder = {
            **encoder_settings,
            "pooling": self.encoder.pooling,
            "normalize": self.encoder.normalize,
        }
        if adapters:
            self.hparams.adapters = add_adapters(self.encoder.model, adapters)
        self._active_adapter: str | None = self.hparams.adapters["names"][0] if adapters else None
        self.task_types: dict[str, TaskType] = {
            task: build_task_type(task, labels, (task_types or {}).get(task))
            for task, labels in tasks.items()
        }
        if any(t.direction != "max" for t in self.task_types.values()):
            raise ConfigError(  # the checkpoint callback's mode is max (conf/callbacks)
                "Every task type's primary metric must be better when higher, for the "
                f"monitored {PRIMARY_MEAN}."
            )
        self.heads = nn.ModuleDict(
            {
                task: task_type.build_head(self.encoder.hidden_size, head_dropout)
                for task, task_type in self.task_types.items()
            }
        )
        if weighting is None:
            weighting = weighting_by_name(list(tasks), loss_weighting, loss_weights)
        self.weighting = weighting
        # Keys "train"/"val" would clash with nn.Module attributes, hence the suffix.
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_metrics": nn.ModuleDict(
                    {task: task_type.metrics() for task, task_type in self.task_types.items()}
                )
                for stage in STAGES
            }
        )
        self._trained_tasks: set[str] = set()  # the tasks with training metrics this epoch
        self.readout: nn.ModuleDict | None = None  # see `attach_readout`
        # What says when each encoder group starts training: given by the freezing callback at
        # setup (the module never looks for it among the trainer's callbacks).
        self.unfreezing: GroupStarts | None = None

    @property
    def tasks(self) -> dict[str, list[str]]:
        return dict(self.hparams.tasks)

    def encoder_groups(self):
        """Layer groups of the encoder, bottom (embeddings) to top."""
        if getattr(self, "_encoder_groups", None) is None:  # asked every step: found once
            self._encoder_groups = layer_groups(self.encoder.model)
        return self._encoder_groups

    @property
    def per_task_adapters(self) -> bool:
        """Whether each task has its own adapter on the encoder (`lora_per_task`)."""
        return bool((self.hparams.get("adapters") or {}).get("per_task"))

    def adapter_parts(self) -> dict[str, tuple[list[nn.Parameter], list[nn.Module]]]:
        """{adapter name: (its parameters, its modules)}; empty without adapters."""
        if not self.hparams.get("adapters"):
            return {}
        if getattr(self, "_adapter_parts", None) is None:  # asked at every plan: found once
            self._adapter_parts = adapter_parts(self.encoder.model)
        return self._adapter_parts

    def use_adapter(self, task: str) -> None:
        """With one adapter per task, make `task`'s the one that runs (before its batch)."""
        if self.per_task_adapters and self._active_adapter != task:
            activate(self.encoder.model, task)
            self._active_adapter = task

    def head_trains(self, task: str) -> bool:
        """A task whose head is frozen does not train: its loss would only move the encoder.

        A head without parameters (a retrieval task's, without projection) is frozen or not by
        its mode, which the freezing schedule sets with the plan; its task trains only the
        encoder, so it trains when the plan lets its head train and some encoder weight trains.
        """
        params = list(self.heads[task].parameters())
        if params:
            return any(p.requires_grad for p in params)
        return self.heads[task].training and any(p.requires_grad for p in self.encoder.parameters())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task: str):
        """A single-sentence task's outputs (logits) for one padded batch."""
        self.use_adapter(task)
        return self.task_types[task].outputs(
            self.heads[task], [self.encoder(input_ids, attention_mask)]
        )

    def task_outputs(self, batch: dict, stage: str) -> torch.Tensor:
        """The head's outputs for a batch of its task: each sentence column encoded alone (and
        cached alone: a pair's second sentences are their own cache entries)."""
        task_type = self.task_types[batch["task"]]
        self.use_adapter(batch["task"])  # one adapter per task: this task's
        embeddings = []
        for column in task_type.sentence_columns:
            ids_key, mask_key = column_keys(column)
            if ids_key not in batch:  # a further column this split lacks (val without negatives)
                continue
            column_batch = {
                "task": batch["task"] if column == "text" else f"{batch['task']}/{column}",
                "input_ids": batch[ids_key],
                "attention_mask": batch[mask_key],
                "idx": batch["idx"],
            }
            embeddings.append(
                task_type.embed(lambda part: self.sentence_embedding(part, stage), column_batch)
            )
        return task_type.outputs(self.heads[batch["task"]], embeddings)

    def frozen_groups(self) -> int:
        """How many encoder layer groups, from the bottom (embeddings first), are frozen: no
        parameter requires grad and no module is in train mode (so no dropout)."""
        count = 0
        for group in self.encoder_groups():
            if any(p.requires_grad for p in group.params) or any(
                m.training for module in group.modules for m in module.modules()
            ):
                break
            count += 1
        return count

    def sentence_embedding(self, batch: dict, stage: str) -> torch.Tensor:
        """The encoder's output for a batch, computing only what is not frozen (model.frozen_cache,
        see `FrozenCache`)."""
        if self.frozen_cache is None:
            return self.encoder(batch["input_ids"], batch["attention_mask"])
        return self.frozen_cache.sentence_embedding(
            self.encoder, self.frozen_groups(), len(self.encoder_groups()), batch, stage
        )

    def load_state_dict(self, *args, **kwargs):
        if self.frozen_cache is not None:  # new weights: whatever was cached is stale
            self.frozen_cache.clear()
        self._encoder_groups = None  # loading may assign new parameter objects
        self._adapter_parts = None
        return super().load_state_dict(*args, **kwargs)

    def on_fit_end(self) -> None:
        if self.frozen_cache is not None:
            self.frozen_cache.prefix.clear()  # its memory is not needed after training
        self._save_shared_embeddings()

    def _step(self, batch: dict, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and outputs of one task's batch; logs the loss and updates the metrics."""
        task = batch["task"]
        outputs = self.task_outputs(batch, stage)
        loss = self.task_types[task].loss(outputs, batch["labels"])
        metrics = self.metrics[f"{stage}_metrics"][task]
        # Detached: a metric that keeps outputs (Spearman's list state) would otherwise keep the
        # step's graph, and under a gradient method, whose backward frees none of the encoder's
        # saved activations, every step's activations with it.
        metrics.update(outputs.detach(), batch["labels"])
        size = len(batch["labels"])
        kwargs = {"batch_size": size, "add_dataloader_idx": False, "on_epoch": True}
        self.log(f"{stage}/{task}/loss", loss, on_step=stage == "train", **kwargs)
        if stage == "train":
            # Logged once, at the epoch's end (`on_train_epoch_end`): logging a Metric object at
            # every step costs Lightning a walk over its state, ~1 ms a metric on a CPU step.
            self._trained_tasks.add(task)
        else:
            for name, metric in metrics.items():
                self.log(f"{stage}/{task}/{name}", metric, on_step=False, **kwargs)
        if self.readout is not None and stage != "train" and task in self.readout:
            # A readout reads a single sentence's embedding (the cache serves it again).
            readout_metrics = self.readout_metrics[f"{stage}_metrics"][task]
            embedding = self.sentence_embedding(batch, stage)
            readout_metrics.update(self.readout[task](embedding), batch["labels"])
            for name, metric in readout_metrics.items():
                self.log(f"{stage}/{task}/readout_{name}", metric, on_step=False, **kwargs)
        return loss, outputs

    def attach_readout(self, readouts: Mapping[str, nn.Module], replace_heads: bool) -> None:
        """Score frozen embeddings with non-parametric readouts (`mtl_lightning.scenarios.readout`).

        `replace_heads`: the readouts take the heads' place, so `{stage}/{task}/acc|f1` are
        theirs (untrained heads would score chance). Else the heads stay, and each readout's
        metrics are logged beside theirs as `{stage}/{task}/readout_acc|readout_f1`.
        """
        if replace_heads:
            for task, readout in readouts.items():
                self.heads[task] = readout
            return
        self.readout = nn.ModuleDict(dict(readouts))
        self.readout_metrics = nn.ModuleDict(
            {
                f"{stage}_metrics": nn.ModuleDict(
                    {task: self.task_types[task].metrics() for task in readouts}
                )
                for stage in ("val", "test")
            }
        )

    def training_step(self, batch: dict[str, dict], batch_idx: int) -> torch.Tensor | None:
        self._log_padding(batch.values())
        losses = {
            task: self._step(task_batch, "train")[0]
            for task, task_batch in batch.items()
            if self.head_trains(task)
        }
        # The step's own task losses, for callbacks that look at each task's gradient
        # (on_before_backward) and for a weighting that combines their gradients (`backward`,
        # which lets go of them, and of their graph, once the step's gradients are written).
        self.step_task_losses = losses
        if not losses:  # e.g. an alternating step of a frozen-head task: nothing to learn
            return None
        total, weights = self.weighting.combine(losses)
        for task, weight in weights.items():  # Lightning detaches logged tensors
            self.log(f"train/weight/{task}", weight, on_step=True, on_epoch=True, batch_size=1)
        self.log("train/loss", total, on_step=True, on_epoch=True, batch_size=1)
        return total

    def on_train_start(self) -> None:
        wrapper = self.trainer.strategy.model
        if self.weighting.needs_task_gradients and isinstance(wrapper, DistributedDataParallel):
            # The weighting writes every gradient itself, averaged over the ranks (`backward`):
            # DDP's reducer must not also wait for, or all-reduce, them. What `no_sync()` sets,
            # for the whole fit (Lightning's manual optimisation sets it likewise per step).
            wrapper.require_backward_grad_sync = False

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        """A weighting that needs each task's gradient of the shared parameters writes the
        gradients itself, under DDP averaged over the ranks (`LossWeighting.backward`); any other
        backpropagates the total."""
        losses, self.step_task_losses = getattr(self, "step_task_losses", None), None
        if not (losses and self.weighting.needs_task_gradients):
            super().backward(loss, *args, **kwargs)
            return
        shared = [p for p in self.encoder.parameters() if p.requires_grad]
        if not shared:  # the encoder is frozen: no shared gradient to combine
            backpropagate(loss, [p for p in self.parameters() if p.requires_grad])
            return
        ids = {id(p) for p in shared}
        others = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        trainable = [[p for p in g.params if p.requires_grad] for g in self.encoder_groups()]
        last_shared = next(params for params in reversed(trainable) if params)
        self.weighting.backward(losses, shared, others, last_shared=last_shared)

    def _log_padding(self, batches) -> None:
        """`train/pad_fraction` of the epoch: padded tokens / all tokens of its batches."""
        padded = sum(b["pad_tokens"] for b in batches)
        total = padded + sum(b["real_tokens"] for b in batches)
        # Lightning's epoch value is the mean weighted by batch_size: sum(padded) / sum(total).
        self.log(
            "train/pad_fraction", padded / total, on_step=False, on_epoch=True, batch_size=total
        )

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """What `on_test_batch_end` callbacks read: `labels` and `preds` (class ids, or a type
        without classes' outputs) for the confusion matrices, and `rows`, the task type's
        `test_rows` (label and prediction columns), for the per-example test predictions."""
        _, outputs = self._step(batch, "test")
        task_type = self.task_types[batch["task"]]
        preds = task_type.class_ids(outputs)
        return {
            "preds": outputs if preds is None else preds,
            "labels": batch["labels"],
            "rows": task_type.test_rows(outputs, batch["labels"]),
        }

    def _log_means(self, stage: str) -> None:
        """`<stage>/primary_mean`: the mean of each task's primary metric (accuracy for classes,
        Spearman for similarity), the monitored value; `<stage>/acc_mean` over the tasks that
        have an accuracy."""
        metrics = self.metrics[f"{stage}_metrics"]
        primaries = [metrics[task][t.primary].compute() for task, t in self.task_types.items()]
        self.log(f"{stage}/{PRIMARY_MEAN}", torch.stack(primaries).float().mean())
        accs = [metrics[task]["acc"].compute() for task in self.tasks if "acc" in metrics[task]]
        if accs:
            self.log(f"{stage}/acc_mean", torch.stack(accs).mean())

    def on_train_epoch_start(self) -> None:
        self.weighting.on_train_epoch_start(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        # The epoch's training metrics, over every batch of it (as Lightning logs a Metric
        # object at its epoch's end: computed, synced across processes, then reset).
        for task in sorted(self._trained_tasks):
            for name, metric in self.metrics["train_metrics"][task].items():
                self.log(f"train/{task}/{name}", metric.compute(), on_step=False, on_epoch=True)
                metric.reset()
        self._trained_tasks.clear()
        # Visible in the logs: what the frozen encoder, or its frozen layers, did not recompute.
        if self.frozen_cache is not None:
            for name, value in self.frozen_cache.totals().items():
                self.log(name, value)

    def on_validation_epoch_end(self) -> None:
        self._log_means("val")

    def on_test_epoch_end(self) -> None:
        self._log_means("test")

    @torch.inference_mode()
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids, mask = input_ids.to(self.device), attention_mask.to(self.device)
        shared = self.frozen_cache is not None and self.frozen_cache.shared is not None
        if shared and self.frozen_groups() == len(self.encoder_groups()):
            return self.frozen_cache.frozen_embedding(self.encoder, ids, mask)
        return self.encoder(ids, mask)

    def share_frozen_embeddings(self, folder: str | None) -> None:
        """model.frozen_cache_dir: a wholly frozen encoder's sentence embeddings are read from,
        and added to, `folder`, shared with the other runs that use it (`SharedEmbeddings`);
        None: this run's own cache only. Not a hyperparameter: it changes no number."""
        if folder and self.frozen_cache is None:
            log.warning("model.frozen_cache_dir=%s is unused: model.frozen_cache=false.", folder)
        elif folder and self.hparams.get("adapters"):
            # Adapter weights switch per task (lora_per_task): not one frozen function of tokens.
            log.info("model.frozen_cache_dir unused: the encoder carries adapters.")
        elif self.frozen_cache is not None:
            self.frozen_cache.shared = SharedEmbeddings(folder) if folder else None

    def _save_shared_embeddings(self) -> None:
        if self.frozen_cache is not None and self.frozen_cache.shared is not None:
            self.frozen_cache.shared.save()

    def on_validation_end(self) -> None:
        self._save_shared_embeddings()

    def on_test_end(self) -> None:
        self._save_shared_embeddings()

    def param_groups(self) -> list[dict]:
        """Every optimizer group exists from the start, frozen or not: schedulers ignore groups
        added later, and unfreezing then only flips `requires_grad`.

        Heads get `head_lr` (a head named in `head_lrs`: its own rate, in the group
        `heads/<task>`); the top encoder layer `lr`, each layer below it `lr` divided by
        `layerwise_lr_decay` once more, the embeddings lowest. Biases and LayerNorm weights
        (every parameter with fewer than 2 dimensions) get no weight decay. A weighting's learned
        parameters (`weighting=uncertainty`'s log-variances) are the group `loss_weights`, at
        `head_lr` (`LossWeighting.param_group`).
        """
        hp = self.hparams
        groups = self.encoder_groups()
        own = dict(hp.get("head_lrs") or {})
        named = [
            (
                "heads",
                [p for t in self.heads if t not in own for p in self.heads[t].parameters()],
                hp.head_lr,
            ),
            *(
                (f"heads/{t}", list(self.heads[t].parameters()), own[t])
                for t in self.heads
                if t in own
            ),
        ]
        for depth, group in enumerate(reversed(groups)):
            named.append((group.name, group.params, hp.lr / hp.layerwise_lr_decay**depth))
        param_groups = []
        for name, params, lr in named:
            matrices = [p for p in params if p.ndim >= 2]
            vectors = [p for p in params if p.ndim < 2]
            for chosen, decay, suffix in (
                (matrices, hp.weight_decay, ""),
                (vectors, 0.0, "/no_decay"),
            ):
                if chosen:
                    param_groups.append(
                        {"params": chosen, "lr": lr, "weight_decay": decay, "name": name + suffix}
                    )
        weighting_group = self.weighting.param_group(hp.head_lr)
        if weighting_group is not None:
            param_groups.append(weighting_group)
        return param_groups

    def epoch_steps(self, epoch: int) -> int | None:
        """Optimizer steps of `epoch` (Lightning's `limit_train_batches` and gradient
        accumulation applied), or None when the data cannot say (not a MultiTaskDataModule)."""
        trainer = self.trainer
        epoch_batches = getattr(trainer.datamodule, "train_batches", None)
        if epoch_batches is None:
            return None
        batches, limit = epoch_batches(epoch), trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        return math.ceil(batches / trainer.accumulate_grad_batches)

    def stepping_batches(self) -> int | float:
        """Optimizer steps of the whole run, so that the LR schedule ends where training ends.

        Lightning's `estimated_stepping_batches` takes every epoch to be as long as the first;
        here each epoch is counted (they get shorter when a frozen head's task leaves the train
        loader).
        """
        trainer = self.trainer
        estimate = trainer.estimated_stepping_batches
        if self.epoch_steps(0) is None or trainer.max_epochs in (None, -1) or math.isinf(estimate):
            return estimate
        total = sum(self.epoch_steps(epoch) for epoch in range(trainer.max_epochs))
        return total if trainer.max_steps == -1 else min(total, trainer.max_steps)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.param_groups(), fused=True)
        steps = self.stepping_batches()
        if steps == float("inf"):  # max_epochs=-1 without max_steps: the schedule has no end
            raise ConfigError(NO_END)  # train() says so before building anything
        scheduler = staggered_warmup_schedule(
            optimizer, int(self.hparams.warmup_ratio * steps), steps, self._group_start_steps()
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _group_start_steps(self) -> Mapping[str, int]:
        """{encoder group name: the optimizer step it starts training}, from the schedule that
        set `unfreezing` (gradual_unfreeze: each group's warm-up starts when it unfreezes; read
        live, as a plateau can move a start)."""
        if self.unfreezing is None:
            return {}
        names = [group.name for group in reversed(self.encoder_groups())]  # top first
        return self.unfreezing.group_starts(self.trainer, names)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The encoder's architecture and its tokenizer's files travel with the weights, so that
        # `load_from_checkpoint` and prediction work where `model.encoder.name_or_path` does not
        # exist: the checkpoint alone is enough.
        checkpoint["hyper_parameters"]["encoder_config"] = self.encoder.model.config.to_dict()
        if getattr(self, "_tokenizer_files", None) is None:  # read once, not at every save
            name_or_path = (self.hparams.encoder or {}).get("name_or_path", PACKAGED_MINILM)
            with tempfile.TemporaryDirectory() as folder:
                load_tokenizer(name_or_path).save_pretrained(folder)
                files = [path for path in Path(folder).iterdir() if path.is_file()]
                self._tokenizer_files = {path.name: path.read_bytes() for path in files}
        checkpoint["tokenizer_files"] = self._tokenizer_files
        # What the data was (`MultiTaskDataModule.record`): a resume checks that it trains and
        # tests on the same splits, and predict and encode cut sentences where training did.
        record = getattr(getattr(self._trainer, "datamodule", None), "record", None)
        if record is not None:
            checkpoint["data"] = record()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Keep the tokenizer of a loaded checkpoint, so re-saving needs no `name_or_path` either.
        self._tokenizer_files = checkpoint.get("tokenizer_files")
        self.data_record = checkpoint.get("data")
        rename_weighting_keys(checkpoint["state_dict"])
        # Loaded to predict or export (no weighting given, so static), or resumed under another
        # method: the checkpoint's weighting state that this weighting has no place for is
        # dropped; what it has a place for (learned weights, a method's buffers) is loaded.
        if not any(True for _ in self.weighting.parameters()):
            mine = set(self.weighting.state_dict(prefix="weighting."))
            for key in [k for k in checkpoint["state_dict"] if k.startswith("weighting.")]:
                if key not in mine:
                    del checkpoint["state_dict"][key]

    @property
    def trained_max_length(self) -> int | None:
        """The `data.max_length` a loaded checkpoint was trained with (None: not recorded)."""
        record = getattr(self, "data_record", None)
        length = record.get("max_length") if isinstance(record, Mapping) else None
        return length if is_int(length) and length >= 1 else None

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer loaded with the checkpoint; checkpoints without one use `name_or_path`."""
        files = getattr(self, "_tokenizer_files", None)
        if files is None:
            return load_tokenizer((self.hparams.encoder or {}).get("name_or_path", PACKAGED_MINILM))
        return tokenizer_from_files(files)


def tokenizer_from_files(files: Mapping[str, bytes]) -> PreTrainedTokenizerBase:
    """The tokenizer whose files a checkpoint stores (`tokenizer_files`, names checked by
    `read_checkpoint`)."""
    with tempfile.TemporaryDirectory() as folder:
        for name, content in files.items():
            inside(folder, name).write_bytes(content)
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def weighting_by_name(
    tasks: list[str], name: str, weights: Mapping[str, float] | None
) -> LossWeighting:
    """The weighting `model.loss_weighting=<name>` (with `model.loss_weights`) names."""
    if name not in BY_NAME:
        raise ConfigError(f"model.loss_weighting={name} is unknown: use one of {tuple(BY_NAME)}.")
    if name != "static" and weights:
        raise ConfigError(
            f"model.loss_weights is fixed weighting, model.loss_weighting={name} learns "
            "the weights: set model.loss_weights=null or model.loss_weighting=static."
        )
    return BY_NAME[name](tasks, weights) if name == "static" else BY_NAME[name](tasks)


def rename_weighting_keys(state_dict: dict) -> None:
    """Checkpoints written before the weighting room hold `log_vars.<task>`: now
    `weighting.log_vars.<task>`."""
    for key in [k for k in state_dict if k.startswith("log_vars.")]:
        state_dict[f"weighting.{key}"] = state_dict.pop(key)


def load_module(path: str | Path, key: str) -> MultiTaskModule:
    """The trained module of a checkpoint (predict, encode, export): checked by
    `read_checkpoint` (given as config key `key`), its stored settings checked against the
    model's arguments, then loaded by Lightning, weights-only too."""
    checkpoint = read_checkpoint(path, key)
    where = f"{key}={path}"
    hparams = checkpoint["hyper_parameters"]
    check_settings(hparams, MultiTaskModule, "hyper_parameters", where)
    if hparams.get("encoder") is not None:
        check_settings(hparams["encoder"], Encoder, "hyper_parameters.encoder", where)
    return MultiTaskModule.load_from_checkpoint(
        Path(path).expanduser(), map_location="cpu", weights_only=True
    )
