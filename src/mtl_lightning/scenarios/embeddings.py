"""Sentence embeddings of every task and split, written into a run (a static feature extractor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mtl_lightning.core.names import inside
from mtl_lightning.data.datamodule import MultiTaskDataModule
from mtl_lightning.data.sources.base import SPLITS
from mtl_lightning.model.module import MultiTaskModule
from mtl_lightning.tasks.base import COLUMN_KEYS


def compute_embeddings(
    module: MultiTaskModule,
    datamodule: MultiTaskDataModule,
    column: tuple[str, str] = ("input_ids", "attention_mask"),
) -> dict[tuple[str, str], torch.Tensor]:
    """`{(split, task): embeddings}` of every example, in data order (row i = example i), of
    the sentence column `column` (its batch keys; a pair task's second sentences are
    `("pair_input_ids", "pair_attention_mask")`, for the pair tasks only)."""
    module.eval()
    computed = {}
    for split in SPLITS:
        for task, loader in datamodule.split_loaders(split).items():
            if column[0] not in COLUMN_KEYS["text"] and loader.dataset.pair_ids is None:
                continue  # a single-sentence task has no second column
            embeddings = torch.empty(len(loader.dataset), module.encoder.hidden_size)
            for batch in loader:  # length-sorted batches; `idx` puts each row back in place
                embeddings[batch["idx"]] = (
                    module.embed(batch[column[0]], batch[column[1]]).float().cpu()
                )
            computed[split, task] = embeddings
    return computed


def export_embeddings(
    module: MultiTaskModule,
    datamodule: MultiTaskDataModule,
    out_dir: Path,
    embeddings: dict[tuple[str, str], torch.Tensor] | None = None,
) -> list[Path]:
    """Write `<task>_<split>.npz` (embeddings, labels, texts, label_names; for a pair task also
    pair_embeddings and text_pairs) in data order; `embeddings` from `compute_embeddings` if
    already computed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if embeddings is None:
        embeddings = compute_embeddings(module, datamodule)
    pair_embeddings = compute_embeddings(module, datamodule, COLUMN_KEYS["text_pair"])
    written = []
    for (split, task), values in embeddings.items():
        dataset = datamodule.datasets[task][split]
        pairs = {}
        if (split, task) in pair_embeddings:
            pairs = {
                "pair_embeddings": pair_embeddings[split, task].numpy(),
                "text_pairs": np.asarray(dataset.text_pairs),
            }
        path = inside(out_dir, f"{task}_{split}.npz")
        np.savez(
            path,
            embeddings=values.numpy(),
            labels=np.asarray(dataset.labels),
            texts=np.asarray(dataset.texts),
            label_names=np.asarray(datamodule.label_names[task]),
            **pairs,
        )
        written.append(path)
    return written
