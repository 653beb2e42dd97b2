"""Rank a corpus file for a file of queries; write the top k of each as JSONL.

python -m mtl_lightning.search ckpt_path=<run>/checkpoints/last.ckpt queries=q.csv corpus=c.csv \
    output=hits.jsonl top_k=10
python -m mtl_lightning.search ckpt_path=none encoder=<exported folder> queries=q.txt ...

Queries and documents are a `.txt` (one per line) or a table with a `text` column, and an
optional `id` column (else the row's number, from 0). A checkpoint's retrieval task (`task`;
null: its only one, if any) passes the embeddings through its projection, where it has one.
Each output line: `{"query_id", "query", "hits": [{"rank", "id", "text", "score"}, ...]}`,
scores being cosines, best first (`mtl_lightning.tasks.ranking.top_k`, in chunks).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from mtl_lightning.core.errors import ConfigError, one_line_errors
from mtl_lightning.data.sources.files import READERS
from mtl_lightning.model.inference import (
    DEFAULT_MAX_LENGTH,
    Predictor,
    check_output,
    read_texts,
    write_jsonl,
)
from mtl_lightning.tasks.ranking import top_k


def read_ids(path: str | Path, count: int) -> list:
    """The `id` column of a table file, else 0 .. count - 1."""
    path = Path(path).expanduser()
    reader = READERS.get(path.suffix.lower())
    if reader is None:  # a .txt
        return list(range(count))
    table = reader(path)
    if "id" not in table.columns:
        return list(range(count))
    return [row.get("id") for row in table.rows]


def load_predictor(cfg: DictConfig) -> Predictor:
    """A checkpoint's model (`ckpt_path`), or a plain encoder or exported folder
    (`ckpt_path=none encoder=<folder>`)."""
    if cfg.ckpt_path is None:
        raise ConfigError(
            "ckpt_path is missing: give ckpt_path=<run>/checkpoints/last.ckpt, or ckpt_path=none "
            "encoder=<exported folder or hub id> for a plain encoder."
        )
    settings = {"device": cfg.device, "batch_size": cfg.batch_size}
    if str(cfg.ckpt_path).lower() == "none":
        max_length = cfg.max_length or DEFAULT_MAX_LENGTH
        return Predictor.from_encoder(cfg.encoder, max_length=max_length, **settings)
    return Predictor.from_checkpoint(cfg.ckpt_path, max_length=cfg.max_length, **settings)


def retrieval_embedder(predictor: Predictor, task: str | None):
    """`texts -> embeddings` as the model ranks them: its retrieval task's (projected) ones,
    or the encoder's."""
    retrieval = [t for t, kind in predictor.task_types.items() if kind.name == "retrieval"]
    if task is not None and task not in retrieval:
        raise ConfigError(
            f"task={task} is not a retrieval task of this checkpoint: use one of {retrieval}, or "
            "task=null."
        )
    if task is None and len(retrieval) == 1:
        task = retrieval[0]
    if task is None or predictor.heads is None:
        return lambda texts: torch.from_numpy(predictor.encode(texts))
    head, kind = predictor.heads[task], predictor.task_types[task]

    @torch.inference_mode()
    def embed(texts: Sequence[str]) -> torch.Tensor:
        embeddings = torch.from_numpy(predictor.encode(texts)).to(predictor.device)
        return kind.outputs(head, [embeddings])[:, 0].float().cpu()

    return embed


def search(cfg: DictConfig) -> list[dict]:
    """Write `output`: each query's top `top_k` documents of `corpus`; return the records."""
    for key in ("queries", "corpus", "output"):
        if cfg.get(key) is None:
            raise ConfigError(
                f"{key} is missing: e.g. queries=q.csv corpus=docs.csv output=hits.jsonl."
            )
    if not isinstance(cfg.top_k, int) or isinstance(cfg.top_k, bool) or cfg.top_k < 1:
        raise ConfigError(f"top_k={cfg.top_k} must be a positive integer, e.g. top_k=10.")
    queries, documents = read_texts(cfg.queries), read_texts(cfg.corpus)
    if not documents:
        raise ConfigError(f"corpus={cfg.corpus} holds no documents: give a file with some.")
    query_ids = read_ids(cfg.queries, len(queries))
    document_ids = read_ids(cfg.corpus, len(documents))
    output = check_output(cfg.output, (".jsonl",), cfg.queries)
    embed = retrieval_embedder(load_predictor(cfg), cfg.get("task"))
    scores, rows = top_k(embed(queries), embed(documents), cfg.top_k)
    records = [
        {
            "query_id": query_id,
            "query": query,
            "hits": [
                {"rank": rank, "id": document_ids[row], "text": documents[row], "score": score}
                for rank, (row, score) in enumerate(zip(row_list, score_list, strict=True), 1)
            ],
        }
        for query_id, query, row_list, score_list in zip(
            query_ids, queries, rows.tolist(), scores.tolist(), strict=True
        )
    ]
    write_jsonl(output, records)
    print(
        f"Wrote the top {min(cfg.top_k, len(documents))} of {len(documents)} documents for "
        f"{len(queries)} queries to {output}.",
        file=sys.stderr,
    )
    return records


@hydra.main(version_base="1.3", config_path="../../conf", config_name="search")
@one_line_errors
def main(cfg: DictConfig) -> None:
    search(cfg)


if __name__ == "__main__":
    main()
