"""The work of a full fine-tuning epoch without Lightning: the reference for its overhead.

Same model (`MultiTaskModule`, on the GPU if there is one), same batches (the datamodule's
length-bucketed `CombinedLoader`, re-seeded per epoch as Lightning does), same optimizer groups
(fused AdamW, layer-wise LR, no decay on biases and norms) and the same linear warmup/decay,
stepped per batch; the loss is the sum of the tasks' cross-entropies. Nothing else: no metrics,
no logging, no checkpoints, no validation. `benchmarks/run.py` times it next to the Lightning run
of the same config (on a GPU, both wait for its work at the end of every batch).
"""

from __future__ import annotations

import time

import lightning as L
import torch
from omegaconf import DictConfig
from transformers import get_linear_schedule_with_warmup

from mtl_lightning.train import build_data, build_module


def run_plain_loop(cfg: DictConfig, batches: list | None = None) -> dict:
    """Train `cfg` (full fine-tuning) for `trainer.max_epochs`; seconds and examples per epoch.
    `batches`, if given, receives each step's example indices per task."""
    L.seed_everything(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    datamodule = build_data(cfg.data)
    module = build_module(cfg.model, datamodule.label_names).to(device).train()
    module.requires_grad_(True)
    loader = datamodule.train_dataloader()
    epochs = cfg.trainer.max_epochs
    # joint sampling (max_size_cycle): an epoch is as many steps as the largest task has batches
    steps = epochs * max(len(dataloader) for dataloader in loader.flattened)
    optimizer = torch.optim.AdamW(module.param_groups(), fused=True)
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
            if batches is not None:
                batches.append({task: b["idx"].tolist() for task, b in batch.items()})
            loss = 0.0
            for task, b in batch.items():
                logits = module(b["input_ids"].to(device), b["attention_mask"].to(device), task)
                loss = loss + loss_fn(logits, b["labels"].to(device))
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            seen += sum(len(b["labels"]) for b in batch.values())
            if device.type == "cuda":
                torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        examples.append(seen)
    return {"epoch_seconds": seconds, "epoch_examples": examples}
