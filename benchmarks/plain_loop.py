"""The work of a full fine-tuning epoch without Lightning: the reference for its overhead.

Same model (`MultiTaskModule`), same batches (the datamodule's length-bucketed `CombinedLoader`,
re-seeded per epoch as Lightning does), same optimizer groups (fused AdamW, layer-wise LR, no
decay on biases and norms) and the same linear warmup/decay, stepped per batch; the loss is the
sum of the tasks' cross-entropies. Nothing else: no metrics, no logging, no checkpoints, no
validation. `benchmarks/run.py` times it next to the Lightning run of the same config.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import get_linear_schedule_with_warmup

from mtl_lightning.data.datamodule import MultiTaskDataModule
from mtl_lightning.model.module import MultiTaskModule
from mtl_lightning.train import build


def run_plain_loop(cfg: DictConfig) -> dict:
    """Train `cfg` (full fine-tuning) for `trainer.max_epochs`; seconds and examples per epoch."""
    L.seed_everything(cfg.seed)
    datamodule: MultiTaskDataModule = build(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.pop("init_from", None)
    module = MultiTaskModule(tasks=datamodule.label_names, **model_cfg).train()
    module.requires_grad_(True)
    loader = datamodule.train_dataloader()
    epochs = cfg.trainer.max_epochs
    optimizer = torch.optim.AdamW(module.param_groups(), fused=True)
    iter(loader)  # a CombinedLoader knows its length once iterated
    steps = epochs * len(loader)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(cfg.model.warmup_ratio * steps), steps
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    seconds, examples = [], []
    for epoch in range(epochs):
        for dataloader in loader.flattened:
            dataloader.batch_sampler.sampler.set_epoch(epoch)
        seen = 0
        start = time.perf_counter()
        for batch, _, _ in loader:
            loss = sum(
                loss_fn(module(b["input_ids"], b["attention_mask"], task), b["labels"])
                for task, b in batch.items()
            )
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            seen += sum(len(b["labels"]) for b in batch.values())
        seconds.append(time.perf_counter() - start)
        examples.append(seen)
    return {"epoch_seconds": seconds, "epoch_examples": examples}
