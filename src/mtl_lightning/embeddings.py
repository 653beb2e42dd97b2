"""Sentence embeddings of every task and split, written into a run (a static feature extractor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mtl_lightning.data.datamodule import MultiTaskDataModule
from mtl_lightning.data.sources import SPLITS
from mtl_lightning.model.module import MultiTaskModule


def export_embeddings(
    module: MultiTaskModule, datamodule: MultiTaskDataModule, out_dir: Path
) -> list[Path]:
    """Write `<task>_<split>.npz` (embeddings, labels, texts, label_names; for a pair task also
    pair_embeddings and text_pairs) in data order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    module.eval()
    written = []
    for split in SPLITS:
        for task, loader in datamodule.split_loaders(split).items():
            dataset = loader.dataset
            columns = {"embeddings": ("input_ids", "attention_mask")}
            pairs = {}
            if dataset.text_pairs is not None:
                columns["pair_embeddings"] = ("pair_input_ids", "pair_attention_mask")
                pairs = {"text_pairs": np.asarray(dataset.text_pairs)}
            arrays = {
                name: torch.empty(len(dataset), module.encoder.hidden_size) for name in columns
            }
            for batch in loader:  # length-sorted batches; `idx` puts each row back in place
                for name, (ids, mask) in columns.items():
                    arrays[name][batch["idx"]] = module.embed(batch[ids], batch[mask]).float().cpu()
            path = out_dir / f"{task}_{split}.npz"
            np.savez(
                path,
                **{name: array.numpy() for name, array in arrays.items()},
                labels=np.asarray(dataset.labels),
                texts=np.asarray(dataset.texts),
                label_names=np.asarray(datamodule.label_names[task]),
                **pairs,
            )
            written.append(path)
    return written
