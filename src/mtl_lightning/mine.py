"""Mine hard negatives for a retrieval task's training pairs; write a file the task reads.

python -m mtl_lightning.mine ckpt_path=<ckpt or none> [encoder=<folder>] input=train.csv \
    output=train_negatives.csv num_negatives=1 range_min=0 range_max=50 margin=0.05

As sentence-transformers' `mine_hard_negatives`: each anchor (`text_column`) ranks the corpus
(the file's distinct positives, `text_pair_column`, plus an optional `corpus` file) by cosine;
its own positives (those of every row with this anchor) and the anchor itself are never
candidates. Of the rest, ranks `range_min + 1` to `range_max` are candidates, and a candidate
whose score is above the positive's minus `margin` is skipped (likely an unlabelled positive).
The first `num_negatives` left become the row's columns `negative_1` ... `negative_<n>`; a row
with fewer is dropped (and counted). Train on the output with
`data.tasks.<task>.type_options.negative_columns=[negative_1,...]`.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from mtl_lightning.core.errors import ConfigError, one_line_errors
from mtl_lightning.data.sources.files import READERS
from mtl_lightning.model.inference import check_output, read_texts, replacing
from mtl_lightning.search import load_predictor, retrieval_embedder
from mtl_lightning.tasks.ranking import top_k


def mine_negatives(
    anchors: list[str],
    positives: list[str],
    anchor_embeddings: torch.Tensor,
    documents: list[str],
    document_embeddings: torch.Tensor,
    num_negatives: int = 1,
    range_min: int = 0,
    range_max: int = 50,
    margin: float = 0.0,
) -> list[list[str] | None]:
    """Each row's negatives (None: fewer than `num_negatives` found), as the module says.
    `anchor_embeddings[i]` is `anchors[i]`'s; `documents` must hold every positive."""
    row_of = {text: row for row, text in enumerate(documents)}
    own: dict[str, set[int]] = defaultdict(set)  # anchor -> rows of its positives (and itself)
    for anchor, positive in zip(anchors, positives, strict=True):
        own[anchor].add(row_of[positive])
        if anchor in row_of:
            own[anchor].add(row_of[anchor])
    widest = max(len(rows) for rows in own.values())
    scores, rows = top_k(anchor_embeddings, document_embeddings, range_max + widest)
    anchor_unit = torch.nn.functional.normalize(anchor_embeddings.float(), dim=-1)
    document_unit = torch.nn.functional.normalize(document_embeddings.float(), dim=-1)
    found: list[list[str] | None] = []
    for i, (anchor, positive) in enumerate(zip(anchors, positives, strict=True)):
        positive_score = float(anchor_unit[i] @ document_unit[row_of[positive]])
        ranked = [
            (row, score)
            for row, score in zip(rows[i].tolist(), scores[i].tolist(), strict=True)
            if row not in own[anchor]
        ][range_min:range_max]
        negatives = [documents[row] for row, score in ranked if score <= positive_score - margin]
        found.append(negatives[:num_negatives] if len(negatives) >= num_negatives else None)
    return found


def mine(cfg: DictConfig) -> list[dict]:
    """Write `output`: `input`'s rows with their negatives; return those rows."""
    for key in ("input", "output"):
        if cfg.get(key) is None:
            raise ConfigError(f"{key} is missing: e.g. input=train.csv output=train_negatives.csv.")
    for key in ("num_negatives", "range_max"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value} must be a positive integer.")
    if (
        isinstance(cfg.range_min, bool)
        or not isinstance(cfg.range_min, int)
        or not (0 <= cfg.range_min < cfg.range_max)
    ):
        raise ConfigError(
            f"range_min={cfg.range_min} must be an integer from 0 to below "
            f"range_max={cfg.range_max}."
        )
    path = Path(cfg.input).expanduser()
    reader = READERS.get(path.suffix.lower())
    if reader is None or not path.is_file():
        raise ConfigError(
            f"input={cfg.input} must be an existing .csv, .tsv, .jsonl or .parquet file."
        )
    table = reader(path)
    for key in ("text_column", "text_pair_column"):
        if cfg[key] not in table.columns:
            raise ConfigError(
                f"input={cfg.input} has no column '{cfg[key]}' (columns: {table.columns}): set "
                f"{key} to the one holding the "
                f"{'anchors' if key == 'text_column' else 'positives'}."
            )
    output = check_output(cfg.output, (".csv",), cfg.input)
    anchors = [str(row[cfg.text_column]) for row in table.rows]
    positives = [str(row[cfg.text_pair_column]) for row in table.rows]
    documents = list(dict.fromkeys(positives + (read_texts(cfg.corpus) if cfg.corpus else [])))
    embed = retrieval_embedder(load_predictor(cfg), cfg.get("task"))
    negatives = mine_negatives(
        anchors,
        positives,
        embed(anchors),
        documents,
        embed(documents),
        cfg.num_negatives,
        cfg.range_min,
        cfg.range_max,
        float(cfg.margin),
    )
    names = [f"negative_{i + 1}" for i in range(cfg.num_negatives)]
    kept = [
        {**row, **dict(zip(names, found, strict=True))}
        for row, found in zip(table.rows, negatives, strict=True)
        if found is not None
    ]
    with replacing(output) as partial, partial.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=[*table.columns, *names])
        writer.writeheader()
        writer.writerows(kept)
    dropped = len(table.rows) - len(kept)
    print(
        f"Wrote {len(kept)} rows with {cfg.num_negatives} hard negative(s) each to {output}"
        f"{f'; dropped {dropped} with too few candidates' if dropped else ''}. Train on it with "
        f"type_options.negative_columns=[{','.join(names)}].",
        file=sys.stderr,
    )
    return kept


@hydra.main(version_base="1.3", config_path="../../conf", config_name="mine")
@one_line_errors
def main(cfg: DictConfig) -> None:
    mine(cfg)


if __name__ == "__main__":
    main()
