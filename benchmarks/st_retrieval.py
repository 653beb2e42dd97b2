"""Baseline for a retrieval task: sentence-transformers' own trainer with MNRL on the same pairs.

Trains the default encoder (all-MiniLM-L6-v2, the copy this project ships) with
`SentenceTransformerTrainer`, `MultipleNegativesRankingLoss` (scale 20) and no-duplicates batches,
at the budget this project's defaults use (lr 5e-5, warm-up ratio 0.1, weight decay 0.01, linear
decay, batch 32, max length 64), then scores a test file with sentence-transformers'
`InformationRetrievalEvaluator`. The same evaluator scores any other sentence-transformers folder
(an `mtl_lightning.export` of a run), and the untrained encoder, so that every model is measured
by one implementation:

    .venv/bin/python benchmarks/st_retrieval.py --train train.csv --test test.csv --seed 1
    .venv/bin/python benchmarks/st_retrieval.py --test test.csv --model exported/   # no training
    .venv/bin/python benchmarks/st_retrieval.py --test test.csv                     # zero-shot
    .venv/bin/python benchmarks/st_retrieval.py --stsb data --train-on-it --seed 1  # STS-B's

`--stsb DATA_DIR` takes the splits and distractors of `mtl_lightning.data.sources.stsb.retrieval()`
(STS-B's pairs scored >= 3; docs/data.md) instead of CSV files.

The CSV files hold `text` (the anchor) and `text_pair` (its positive). Queries are the test file's
distinct anchors; the corpus its distinct positives, plus `--corpus`'s `text` column; an anchor's
relevant documents are the positives of all its rows (as this project's retrieval evaluation).
Prints one JSON line. Needs the `bench` extra (sentence-transformers, accelerate) and `datasets`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import tempfile
import time

from mtl_lightning.core.resolve import PACKAGED_MINILM, resolve_encoder_path


def read_pairs(path: str) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [(row["text"], row["text_pair"]) for row in csv.DictReader(handle)]


def ir_inputs(pairs: list[tuple[str, str]]) -> tuple[dict, dict, dict]:
    """Queries, corpus and relevant documents, ids in order of first appearance."""
    query_ids: dict[str, str] = {}
    doc_ids: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for anchor, positive in pairs:
        qid = query_ids.setdefault(anchor, f"q{len(query_ids)}")
        did = doc_ids.setdefault(positive, f"d{len(doc_ids)}")
        relevant.setdefault(qid, set()).add(did)
    queries = {qid: text for text, qid in query_ids.items()}
    corpus = {did: text for text, did in doc_ids.items()}
    return queries, corpus, relevant


def evaluate(model, test: list[tuple[str, str]], extra_docs: list[str]) -> dict[str, float]:
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    queries, corpus, relevant = ir_inputs(test)
    known = set(corpus.values())
    for text in dict.fromkeys(extra_docs):
        if text not in known:
            corpus[f"d{len(corpus)}"] = text
    evaluator = InformationRetrievalEvaluator(
        queries,
        corpus,
        relevant,
        name="test",
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[1, 10],
        map_at_k=[100],
        batch_size=128,
        show_progress_bar=False,
    )
    scores = evaluator(model)
    wanted = {
        "mrr@10": "cosine_mrr@10",
        "ndcg@10": "cosine_ndcg@10",
        "recall@1": "cosine_recall@1",
        "recall@10": "cosine_recall@10",
        "map@100": "cosine_map@100",
    }
    out = {key: float(scores[f"test_{name}"]) for key, name in wanted.items()}
    out.update(queries=len(queries), corpus=len(corpus))
    return out


def fit(model, dataset, loss, seed: int, epochs: int, batch_size: int = 32, **overrides) -> float:
    """Train `model` on `dataset` with `loss` by `SentenceTransformerTrainer` at this project's
    default budget (lr 5e-5, warm-up 0.1, linear decay, weight decay 0.01; `overrides` change
    any training argument); returns the seconds of training. `st_pair.py` uses it too."""
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    with tempfile.TemporaryDirectory() as out:
        settings = dict(
            output_dir=out,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            learning_rate=5e-5,
            warmup_ratio=0.1,
            weight_decay=0.01,
            lr_scheduler_type="linear",
            seed=seed,
            data_seed=seed,
            save_strategy="no",
            logging_steps=50,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        args = SentenceTransformerTrainingArguments(**(settings | overrides))
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=dataset, loss=loss
        )
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the trainer's logs: stdout keeps one line
            trainer.train()
        return time.perf_counter() - start


def train(model, pairs: list[tuple[str, str]], seed: int, epochs: int, batch_size: int) -> float:
    from datasets import Dataset
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    dataset = Dataset.from_dict(
        {"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]}
    )
    loss = MultipleNegativesRankingLoss(model, scale=20.0)
    return fit(
        model, dataset, loss, seed, epochs, batch_size, batch_sampler=BatchSamplers.NO_DUPLICATES
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", help="CSV of text,text_pair to score")
    parser.add_argument("--train", help="CSV of text,text_pair to train on (omit: no training)")
    parser.add_argument("--corpus", help="CSV whose `text` column adds documents to the corpus")
    parser.add_argument(
        "--stsb",
        metavar="DATA_DIR",
        help="instead of the CSVs: the splits and distractors of mtl_lightning.data.sources."
        "stsb.retrieval() under this data folder (with --train-on-it: train on its train split)",
    )
    parser.add_argument("--train-on-it", action="store_true", help="with --stsb: train")
    parser.add_argument(
        "--model", help="a sentence-transformers folder (default: the shipped MiniLM)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--save", help="write the trained model to this folder")
    args = parser.parse_args(argv)
    if args.stsb:
        from mtl_lightning.data.sources.base import CORPUS
        from mtl_lightning.data.sources.stsb import retrieval

        examples = retrieval().load(args.stsb)
        split = {
            name: list(zip(rows.texts, rows.text_pairs, strict=True))
            for name, rows in examples.items()
            if name != CORPUS
        }
        train_pairs = split["train"] if args.train_on_it else None
        test_pairs, extra = split["test"], list(examples[CORPUS])
    elif args.test:
        train_pairs = read_pairs(args.train) if args.train else None
        test_pairs, extra = read_pairs(args.test), []
        if args.corpus:
            with open(args.corpus, newline="", encoding="utf-8") as handle:
                extra = [row["text"] for row in csv.DictReader(handle)]
    else:
        parser.error("give --test (and --train, --corpus) or --stsb")

    from sentence_transformers import SentenceTransformer
    from transformers import set_seed

    set_seed(args.seed)
    path = args.model or resolve_encoder_path(PACKAGED_MINILM)[0]
    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = args.max_length  # every model reads the same tokens
    if train_pairs:
        result = {"model": "sentence-transformers trainer, MNRL"}
    else:
        result = {"model": args.model or "all-MiniLM-L6-v2, zero-shot"}
    if train_pairs:
        pairs = train_pairs
        result.update(
            seed=args.seed,
            train_pairs=len(pairs),
            train_seconds=round(train(model, pairs, args.seed, args.epochs, args.batch_size), 1),
        )
        if args.save:
            model.save(args.save)
    result.update(evaluate(model, test_pairs, extra))
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
