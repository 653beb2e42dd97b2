"""Baseline for a pair-classification task: sentence-transformers' trainer with `SoftmaxLoss`.

Trains the default encoder (all-MiniLM-L6-v2, the copy this project ships) with
`SentenceTransformerTrainer` and `SoftmaxLoss` (SBERT's classifier on (u, v, |u - v|), plus u * v
as this project's pair head reads it; `--no-product` drops it) on STS-B's pairs cut at a score
(`mtl_lightning.data.sources.stsb.StsbSource`, kind pair_classification: 5,749 train, 1,379 test
pairs at the default threshold 4), at the budget of this project's `full_finetune` defaults:
3 epochs, batch 32, encoder lr 5e-5 and the classifier's 1e-3 (`learning_rate_mapping`, as
`model.head_lr`; `--head-lr 1e-2` as `+model.head_lrs.<task>=1e-2`), warm-up ratio 0.1, linear
decay, weight decay 0.01, max length 64. The trainer keeps its last model (its checkpoints hold
the encoder, not the loss's classifier).
Prints one JSON line with the val and test accuracy of the trained classifier, and the frozen
probe's (a logistic regression on the untrained encoder's features, C chosen on val) for the
same pairs:

    MTL_DATA_DIR=data .venv/bin/python benchmarks/st_pair.py --seed 1
    MTL_DATA_DIR=data .venv/bin/python benchmarks/st_pair.py --seed 1 --head-lr 1e-2
    MTL_DATA_DIR=data .venv/bin/python benchmarks/st_pair.py --probe-only

Needs the `bench` extra (sentence-transformers, accelerate, scikit-learn) and `datasets`.
docs/task-types.md#mixing-task-types quotes its output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from mtl_lightning.core.resolve import PACKAGED_MINILM, resolve_encoder_path
from mtl_lightning.data.sources.base import Rows
from mtl_lightning.data.sources.stsb import StsbSource

LABELS = ("different", "paraphrase")


def features(model, rows, product: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's inputs (u, v, |u - v| [, u * v]) from the model's own embeddings."""
    u = model.encode(rows.texts, batch_size=128, convert_to_tensor=True)
    v = model.encode(rows.text_pairs, batch_size=128, convert_to_tensor=True)
    parts = [u, v, (u - v).abs()] + ([u * v] if product else [])
    labels = torch.tensor([LABELS.index(label) for label in rows.labels])
    return torch.cat(parts, -1), labels


def probe(model, data, product: bool) -> dict[str, float]:
    """A logistic regression on the frozen encoder's features, C chosen on the val split."""
    from sklearn.linear_model import LogisticRegression

    x = {split: features(model, data[split], product) for split in ("train", "val", "test")}
    fitted = [
        LogisticRegression(C=c, max_iter=3000).fit(x["train"][0].numpy(), x["train"][1].numpy())
        for c in (0.1, 1, 10, 100)
    ]
    best = max(fitted, key=lambda lr: lr.score(x["val"][0].numpy(), x["val"][1].numpy()))
    return {
        split: float(best.score(x[split][0].numpy(), x[split][1].numpy()))
        for split in ("val", "test")
    } | {"C": best.C}


def train(
    model, data, seed: int, epochs: int, product: bool, head_lr: float
) -> tuple[object, float]:
    from datasets import Dataset
    from sentence_transformers.losses import SoftmaxLoss
    from st_retrieval import fit  # the same trainer settings as the retrieval baseline

    rows = data["train"]
    dataset = Dataset.from_dict(
        {
            "sentence1": rows.texts,
            "sentence2": rows.text_pairs,
            "label": [LABELS.index(label) for label in rows.labels],
        }
    )
    loss = SoftmaxLoss(
        model,
        model.get_embedding_dimension(),
        num_labels=len(LABELS),
        concatenation_sent_multiplication=product,
    )
    # The classifier at its own rate, as this project's heads (model.head_lr / model.head_lrs).
    mapping = {r"^classifier\.": head_lr}
    seconds = fit(model, dataset, loss, seed, epochs, learning_rate_mapping=mapping)
    return loss, seconds


@torch.no_grad()
def accuracy(model, loss, rows, product: bool) -> float:
    model.eval()
    x, y = features(model, rows, product)
    return float((loss.classifier(x).argmax(-1).cpu() == y).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=4.0)
    parser.add_argument(
        "--head-lr", type=float, default=1e-3, help="the classifier's rate (model.head_lr's)"
    )
    parser.add_argument("--no-product", action="store_true", help="SBERT's (u, v, |u - v|)")
    parser.add_argument("--probe-only", action="store_true", help="the frozen probe, no training")
    parser.add_argument("--max-train", type=int, help="train on the first N pairs (a smoke run)")
    args = parser.parse_args(argv)
    data_dir = Path(os.environ.get("MTL_DATA_DIR", Path(__file__).resolve().parents[1] / "data"))
    data = StsbSource("pair_classification", threshold=args.threshold).load(data_dir)
    if args.max_train:
        rows, n = data["train"], args.max_train
        data["train"] = Rows(rows.texts[:n], rows.labels[:n], rows.text_pairs[:n])

    from sentence_transformers import SentenceTransformer
    from transformers import set_seed

    set_seed(args.seed)
    model = SentenceTransformer(resolve_encoder_path(PACKAGED_MINILM)[0], device="cpu")
    model.max_seq_length = 64  # as data.max_length
    product = not args.no_product
    test_labels = data["test"].labels
    result = {
        "pairs": {split: len(rows.labels) for split, rows in data.items()},
        "test_majority": max(test_labels.count(label) for label in LABELS) / len(test_labels),
        "features": "u, v, |u-v|" + (", u*v" if product else ""),
    }
    if args.probe_only:
        result["frozen_probe"] = probe(model, data, product)
    else:
        loss, seconds = train(model, data, args.seed, args.epochs, product, args.head_lr)
        result.update(
            model="sentence-transformers trainer, SoftmaxLoss",
            seed=args.seed,
            head_lr=args.head_lr,
            train_seconds=round(seconds, 1),
            val_acc=accuracy(model, loss, data["val"], product),
            test_acc=accuracy(model, loss, data["test"], product),
        )
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
