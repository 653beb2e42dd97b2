"""Sentence embeddings of every task and split, written into a run (a static feature extractor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mtl_lightning.data.datamodule import MultiTaskDataModule
from mtl_lightning.data.sources import SPLITS
from mtl_lightning.model.module import MultiTaskModule


def compute_embeddings(
    module: MultiTaskModule, datamodule: MultiTaskDataModule
) -> dict[tuple[str, str], torch.Tensor]:
    """`{(split, task): embeddings}` of every example, in data order (row i = example i)."""
    module.eval()
    computed = {}
    for split in SPLITS:
        for task, loader in datamodule.split_loaders(split).items():
            embeddings = torch.empty(len(loader.dataset), module.encoder.hidden_size)
            for batch in loader:  # length-sorted batches; `idx` puts each row back in place
                embeddings[batch["idx"]] = (
                    module.embed(batch["input_ids"], batch["attention_mask"]).float().cpu()
                )
            computed[split, task] = embeddings
    return computed


def export_embeddings(
    module: MultiTaskModule,
    datamodule: MultiTaskDataModule,
    out_dir: Path,
    embeddings: dict[tuple[str, str], torch.Tensor] | None = None,
) -> list[Path]:
    """Write `<task>_<split>.npz` (embeddings, labels, texts, label_names) in data order;
    `embeddings` from `compute_embeddings` if already computed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if embeddings is None:
        embeddings = compute_embeddings(module, datamodule)
    written = []
    for (split, task), values in embeddings.items():
        dataset = datamodule.datasets[task][split]
        path = out_dir / f"{task}_{split}.npz"
        np.savez(
            path,
            embeddings=values.numpy(),
            labels=np.asarray(dataset.labels),
            texts=np.asarray(dataset.texts),
            label_names=np.asarray(datamodule.label_names[task]),
        )
        written.append(path)
    return written
