"""Ranking a corpus by cosine similarity, in chunks, and the IR metrics of the ranks.

Scores are cosines (embeddings are L2-normalised here). The corpus is scored `chunk_size`
documents (and 1,024 queries) at a time, so memory holds the embeddings, one chunk's scores
and the running results: 100,000 documents of 384 floats are 150 MB, and a chunk of 8,192
documents against 1,024 queries 32 MB (its comparisons a few times that).

Ties are broken against the relevant documents: a relevant document ranks below every
non-relevant one of the same score (and below the relevant ones of the same score earlier in
the corpus). A model whose embeddings collapse to one point then scores nothing, rather than
whatever the corpus order gives.

Metrics (binary relevance, as sentence-transformers' InformationRetrievalEvaluator):
`mrr@10` (1 / the rank of the first relevant document, 0 beyond 10), `ndcg@10` (DCG of the
relevant documents in the top 10, 1 / log2(rank + 1) each, over the ideal DCG), `recall@1` and
`recall@10` (the share of the relevant documents in the top k), `map@100` (the mean over the
relevant documents in the top 100 of the precision at their rank, divided by
min(100, relevant)). Each is a per-query value; a split's value is their mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional

CHUNK_SIZE = 8192  # documents scored at a time
QUERY_CHUNK = 1024  # queries scored at a time
# name -> (kind, k)
METRICS: dict[str, tuple[str, int]] = {
    "ndcg@10": ("ndcg", 10),
    "mrr@10": ("mrr", 10),
    "recall@1": ("recall", 1),
    "recall@10": ("recall", 10),
    "map@100": ("map", 100),
}


def relevant_ranks(
    queries: torch.Tensor,
    documents: torch.Tensor,
    relevant: Sequence[Sequence[int]],
    chunk_size: int = CHUNK_SIZE,
) -> torch.Tensor:
    """The rank (1 = first) of each query's relevant documents in the corpus, by cosine,
    ties broken against them: `[queries, most relevant documents]`, padded with `inf`.

    `relevant[q]` lists the corpus rows relevant to query q (at least one each)."""
    queries = functional.normalize(queries.float(), dim=-1)
    documents = functional.normalize(documents.float(), dim=-1)
    width = max(len(r) for r in relevant)
    index = torch.full((len(relevant), width), -1, dtype=torch.long)
    for q, rows in enumerate(relevant):
        index[q, : len(rows)] = torch.tensor(sorted(rows), dtype=torch.long)
    index = index.to(queries.device)
    valid = index >= 0
    ahead = torch.zeros_like(index)  # documents ranked before each relevant one
    for first in range(0, len(queries), QUERY_CHUNK):
        part, rel = queries[first : first + QUERY_CHUNK], index[first : first + QUERY_CHUNK]
        # Each relevant document's score as the chunk's matrix product gives it, not as another
        # kernel would: a dot product summed in another order differs in the last bits, and a
        # relevant document would then rank behind itself about half the time.
        target = torch.zeros(rel.shape, dtype=part.dtype, device=part.device)
        for start, scores in _chunk_scores(part, documents, chunk_size):
            inside = (rel >= start) & (rel < start + scores.shape[1])
            picked = scores.gather(1, (rel - start).clamp(0, scores.shape[1] - 1))
            target = torch.where(inside, picked, target)
        for start, scores in _chunk_scores(part, documents, chunk_size):
            rows = torch.arange(start, start + scores.shape[1], device=queries.device)
            # is each chunk document relevant to the query, and before which relevant ones
            same = rows[None, :, None] == rel[:, None, :]  # [Q, chunk, R]
            is_relevant = same.any(-1, keepdim=True)
            earlier = rows[None, :, None] < rel[:, None, :]
            higher = (scores[:, :, None] > target[:, None, :]) & ~same
            tied = (scores[:, :, None] == target[:, None, :]) & ~same
            before = higher | (tied & (~is_relevant | earlier))
            ahead[first : first + QUERY_CHUNK] += before.sum(1)
    ranks = (ahead + 1).float()
    return ranks.masked_fill(~valid, float("inf"))


def _chunk_scores(queries: torch.Tensor, documents: torch.Tensor, chunk_size: int):
    """(first row, cosines of `queries` with the chunk's documents) for each chunk of the corpus;
    the same inputs give the same scores on each pass."""
    for start in range(0, len(documents), chunk_size):
        yield start, queries @ documents[start : start + chunk_size].T


def per_query(ranks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each metric of `METRICS` for each query, from `relevant_ranks`."""
    if not len(ranks):
        return {name: torch.zeros(0) for name in METRICS}
    ranks, _ = ranks.sort(-1)
    counts = torch.isfinite(ranks).sum(-1).float()
    values = {}
    for name, (kind, k) in METRICS.items():
        inside = ranks <= k
        if kind == "mrr":
            values[name] = torch.where(inside[:, 0], 1.0 / ranks[:, 0], 0.0)
        elif kind == "recall":
            values[name] = inside.sum(-1) / counts
        elif kind == "ndcg":
            dcg = torch.where(inside, 1.0 / torch.log2(ranks + 1), 0.0).sum(-1)
            positions = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float)
            ideal_terms = 1.0 / torch.log2(positions + 1)
            ideal = torch.stack([ideal_terms[: int(min(c, k))].sum() for c in counts.tolist()]).to(
                dcg
            )
            values[name] = dcg / ideal
        else:  # map: precision at each relevant document's rank (its place among them / rank)
            place = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float, device=ranks.device)
            precision = torch.where(inside, place / ranks, 0.0).sum(-1)
            values[name] = precision / counts.clamp(max=k)
    return values


def top_k(
    queries: torch.Tensor, documents: torch.Tensor, k: int, chunk_size: int = CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` highest cosines of each query and their corpus rows, best first (ties: the
    earlier row first), scoring `chunk_size` documents at a time."""
    queries = functional.normalize(queries.float(), dim=-1)
    documents = functional.normalize(documents.float(), dim=-1)
    k = min(k, len(documents))
    results_scores, results_rows = [], []
    for first in range(0, len(queries), QUERY_CHUNK):
        part = queries[first : first + QUERY_CHUNK]
        best_scores = part.new_empty(len(part), 0)
        best_rows = torch.empty(len(part), 0, dtype=torch.long, device=part.device)
        for start in range(0, len(documents), chunk_size):
            scores = part @ documents[start : start + chunk_size].T
            rows = torch.arange(start, start + scores.shape[1], device=part.device)
            best_scores = torch.cat([best_scores, scores], dim=1)
            best_rows = torch.cat([best_rows, rows.expand(len(part), -1)], dim=1)
            # the kept rows come before the chunk's (all earlier in the corpus), and are in
            # order among themselves: a stable sort keeps the earlier row first on a tie
            order = best_scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
            best_scores = best_scores.gather(1, order)
            best_rows = best_rows.gather(1, order)
        results_scores.append(best_scores)
        results_rows.append(best_rows)
    return torch.cat(results_scores), torch.cat(results_rows)
