"""`retrieval`: an anchor, its positive and optional hard negatives; in-batch negatives.

A bi-encoder trained as sentence-transformers' MultipleNegativesRankingLoss (MNRL; Henderson et
al. 2017): each anchor (`text`) is scored against every positive (`text_pair`) and every hard
negative of the batch by cosine × `scale` (20), and the loss is the cross-entropy of its own
positive among them. `symmetric` also scores each positive against the batch's anchors and
averages the two (MultipleNegativesSymmetricRankingLoss). The task has no label column.

Options (`type_options`):
- `scale` (20), `symmetric` (false);
- `negative_columns`: the source columns of hard negatives (null: none), e.g. those that
  `python -m mtl_lightning.mine` writes;
- `no_duplicates` (true): training batches never hold one text twice
  (`mtl_lightning.data.sampling.sampler.NoDuplicatesBatchSampler`);
- `mini_batch_size` (null): GradCache (Gao et al. 2021, sentence-transformers'
  CachedMultipleNegativesRankingLoss): the batch is encoded in pieces of this size without a
  graph, the loss's gradient of the embeddings computed, then each piece encoded again with its
  graph and its part of that gradient backpropagated. The loss and gradients are those of the
  whole batch, memory that of one piece;
- `gather_across_ranks` (true): under DDP, each rank's anchors are scored against every
  rank's candidates (all_gather with the gradient through the local part), as one process
  would score the global batch;
- `projection` (false): a linear map (started as the identity) before the cosine. Without it
  the task has no head: the exported sentence-transformers folder is the retrieval model;
- `primary` (`ndcg@10`): one of `mtl_lightning.tasks.ranking.METRICS`.

A type without a head: its task trains the encoder alone. `only_head_frozen` with
`freezing.head=<retrieval task>` takes the task out of the loss from the freezing epoch, as for
any head, and `val/<task>/forgetting` is its primary metric then minus now; the "head" that is
frozen is empty, so what is measured is how far the encoder drifts from the retrieval it
learnt. A scenario that freezes the whole encoder (`only_transformer_frozen`) leaves such a task
nothing to train: it is left out of the loss (with `projection: true`, the projection trains).

Evaluation ranks, for each distinct anchor of the split, the split's distinct positives (and a
source's `corpus` documents), by cosine (`mtl_lightning.tasks.ranking`); an anchor's relevant
documents are the positives of all its rows. Metrics: nDCG@10, MRR@10, Recall@1, Recall@10, MAP@100.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional
from torch.utils.checkpoint import get_device_states, set_device_states
from torchmetrics import Metric, MetricCollection
from torchmetrics.utilities import dim_zero_cat

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.tasks.base import ReportMetric, TaskType
from mtl_lightning.tasks.ranking import CHUNK_SIZE, METRICS, per_query, relevant_ranks

MNRL_CITATION = """@misc{henderson2017efficient,
    title={Efficient Natural Language Response Suggestion for Smart Reply},
    author={Matthew Henderson and Rami Al-Rfou and Brian Strope and Yun-hsuan Sung and Laszlo Lukacs and Ruiqi Guo and Sanjiv Kumar and Balint Miklos and Ray Kurzweil},
    year={2017},
    eprint={1705.00652},
    archivePrefix={arXiv},
    primaryClass={cs.CL}
}"""  # noqa: E501 (sentence-transformers' MultipleNegativesRankingLoss.citation)
GRADCACHE_CITATION = """@misc{gao2021scaling,
    title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
    author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
    year={2021},
    eprint={2101.06983},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}"""


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's rows of `tensor`, concatenated in rank order, the gradient flowing back to
    each rank's own rows (torch.distributed.nn's all_gather: a rank's rows get the gradients
    of every rank's loss); and where this rank's rows start. Ranks may hold different numbers
    of rows (a last, smaller batch): they are padded to the largest for the gather."""
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(tensor)], device=tensor.device))
    counts = [int(s) for s in sizes]
    from torch.distributed.nn.functional import all_gather  # only under DDP

    padded = functional.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, max(counts) - len(tensor)))
    parts = all_gather(padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)]), sum(counts[:rank])


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mnrl_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    scale: float = 20.0,
    symmetric: bool = False,
    gather: bool = False,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """MNRL: the mean over anchors of the cross-entropy of `scale` × the cosines of anchor i
    against [every positive, every negative], its target positive i. `negatives`: `[batch,
    k, dim]` hard negatives (k per anchor), or None. `symmetric`: the mean of that and the
    cross-entropy of each positive against the anchors. `gather` (under DDP): the candidates
    (and, symmetric, the anchors) are every rank's. `rows`: the positives' rows of `anchors`,
    when there are more positives than anchors (evaluation's documents without a query)."""
    anchors = functional.normalize(anchors, dim=-1)
    positives = functional.normalize(positives, dim=-1)
    candidates = [positives]
    if negatives is not None and negatives.shape[1]:
        candidates.append(functional.normalize(negatives, dim=-1).reshape(-1, anchors.shape[-1]))
    start = 0
    all_anchors = anchors
    if gather and distributed():
        gathered = [gather_with_grad(c) for c in candidates]
        start = gathered[0][1]
        candidates = [g for g, _ in gathered]
        if symmetric:
            all_anchors = gather_with_grad(anchors)[0]
    targets = torch.arange(start, start + len(anchors), device=anchors.device)
    if rows is not None:
        targets = rows.to(anchors.device)
    scores = scale * anchors @ torch.cat(candidates).T
    loss = functional.cross_entropy(scores, targets)
    if symmetric:
        own = positives if rows is None else positives[rows]
        backward = scale * own @ all_anchors.T
        reverse = torch.arange(start, start + len(own), device=anchors.device)
        loss = (loss + functional.cross_entropy(backward, reverse)) / 2
    return loss


class RandomState:
    """The CPU and device random states at creation, restored inside `with` (dropout masks of
    a GradCache piece's second encoding equal its first), the outer ones kept."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.cpu = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)

    def __enter__(self) -> None:
        self.fork = torch.random.fork_rng(devices=self.devices)
        self.fork.__enter__()
        torch.set_rng_state(self.cpu)
        set_device_states(self.devices, self.device_states)

    def __exit__(self, *exc: object) -> None:
        self.fork.__exit__(*exc)


class CachedEncoding(torch.autograd.Function):
    """Embeddings computed piece by piece without a graph; backward encodes each piece again,
    with its graph and its saved random state, and backpropagates its rows of the gradient
    into the encoder (GradCache). `anchor` is an empty tensor that requires grad, so that
    autograd calls backward."""

    @staticmethod
    def forward(ctx, anchor, embeddings, encode, pieces, states, autocast):
        ctx.encode, ctx.pieces, ctx.states, ctx.autocast = encode, pieces, states, autocast
        return embeddings.clone()

    @staticmethod
    def backward(ctx, grad):
        start = 0
        autocast = ctx.autocast
        for piece, state in zip(ctx.pieces, ctx.states, strict=True):
            size = len(piece["input_ids"])
            with torch.enable_grad(), state:
                if autocast is None:
                    embeddings = ctx.encode(piece)
                else:
                    with torch.autocast(autocast[0], dtype=autocast[1]):
                        embeddings = ctx.encode(piece)
            if embeddings.requires_grad:
                torch.autograd.backward(embeddings, grad[start : start + size].to(embeddings))
            start += size
        return None, None, None, None, None, None


def cached_embed(
    encode: Callable[[dict], torch.Tensor], batch: dict, mini_batch_size: int, replay: bool = True
) -> torch.Tensor:
    """`encode(batch)` as GradCache computes it: the same values, memory of one piece.
    `replay=False` (tests only) draws new random numbers in the second encoding."""
    size = len(batch["input_ids"])
    pieces = [
        {k: v[s : s + mini_batch_size] if torch.is_tensor(v) else v for k, v in batch.items()}
        for s in range(0, size, mini_batch_size)
    ]
    states, parts = [], []
    for piece in pieces:
        states.append(RandomState(piece["input_ids"]) if replay else contextlib.nullcontext())
        with torch.no_grad():
            parts.append(encode(piece))
    device = batch["input_ids"].device.type
    autocast = None
    if torch.is_autocast_enabled(device):
        autocast = (device, torch.get_autocast_dtype(device))
    anchor = torch.empty(0, requires_grad=True)
    return CachedEncoding.apply(anchor, torch.cat(parts), encode, pieces, states, autocast)


class RetrievalHead(nn.Module):
    """Nothing, or (`projection`) a linear map started as the identity."""

    def __init__(self, hidden_size: int, projection: bool) -> None:
        super().__init__()
        self.projection = nn.Linear(hidden_size, hidden_size) if projection else None
        if self.projection is not None:
            with torch.no_grad():
                self.projection.weight.copy_(torch.eye(hidden_size))
                self.projection.bias.zero_()

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return embedding if self.projection is None else self.projection(embedding)


class RankingMetric(Metric):
    """One IR metric of a split: collects each example's anchor and positive embeddings and
    their ids (`Retrieval.encode_rows`), and at `compute` ranks the split's distinct positives
    for each distinct anchor. List states: DDP gathers every rank's (a padded shard's
    repeated examples have the same ids, and count once). The metrics of one stage share
    `ranked`, so the ranking is done once per compute, not once per metric."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, name: str, ranked: dict, chunk_size: int = CHUNK_SIZE) -> None:
        super().__init__()
        self.name, self.ranked, self.chunk_size = name, ranked, chunk_size
        for state in ("anchors", "positives", "anchor_ids", "positive_ids"):
            self.add_state(state, default=[], dist_reduce_fx="cat")

    def update(self, outputs: torch.Tensor, labels: torch.Tensor) -> None:
        # detached: a training step's graph must not live on in the metric
        self.anchors.append(outputs[:, 0].detach().float())
        self.positives.append(outputs[:, 1].detach().float())
        self.anchor_ids.append(labels[:, 0])
        self.positive_ids.append(labels[:, 1])

    def per_query(self) -> dict[str, torch.Tensor]:
        """Each metric of each distinct anchor (in anchor-id order)."""
        return self._ranked()[1]

    def ranks(self) -> torch.Tensor:
        """`relevant_ranks` of each distinct anchor (in anchor-id order), as last computed (after
        `compute`, which syncs DDP ranks: the whole split's)."""
        return self._ranked()[0]

    def _ranked(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        anchor_ids = dim_zero_cat(self.anchor_ids) if len(self.anchor_ids) else torch.zeros(0)
        key = (len(anchor_ids), int(anchor_ids.sum()) if len(anchor_ids) else 0)
        if self.ranked.get("key") != key:
            self.ranked.clear()
            ranks = self._rank(anchor_ids)
            self.ranked.update(key=key, ranks=ranks, values=per_query(ranks))
        return self.ranked["ranks"], self.ranked["values"]

    def _rank(self, anchor_ids: torch.Tensor) -> torch.Tensor:
        if not len(anchor_ids):
            return torch.zeros(0, 1)
        anchors, positives = dim_zero_cat(self.anchors), dim_zero_cat(self.positives)
        positive_ids = dim_zero_cat(self.positive_ids)
        queries, query_rows = unique_rows(anchor_ids)
        if len(queries) and int(queries[0]) < 0:  # documents without a query (corpus)
            queries, query_rows = queries[1:], query_rows[1:]
        documents, document_rows = unique_rows(positive_ids)
        row_of_document = {int(d): i for i, d in enumerate(documents.tolist())}
        relevant: dict[int, set[int]] = {int(q): set() for q in queries.tolist()}
        for q, d in zip(anchor_ids.tolist(), positive_ids.tolist(), strict=True):
            if q >= 0:
                relevant[q].add(row_of_document[d])
        if not relevant:
            return torch.zeros(0, 1)
        ranks = relevant_ranks(
            anchors[query_rows],
            positives[document_rows],
            [sorted(relevant[int(q)]) for q in queries.tolist()],
            self.chunk_size,
        )
        return ranks.cpu()

    def compute(self) -> torch.Tensor:
        values = self.per_query()[self.name]
        return values.mean() if len(values) else torch.tensor(0.0)

    def reset(self) -> None:
        super().reset()
        self.ranked.clear()


def rank_rows(ranks: torch.Tensor) -> tuple[list[int], list[float]]:
    """One row per (query, relevant document) of `relevant_ranks`: the query's number and the
    document's rank; what `test_predictions/<task>.csv` holds for a retrieval task."""
    queries, ranks_out = [], []
    for query, row in enumerate(ranks.tolist()):
        for rank in row:
            if math.isfinite(rank):
                queries.append(query)
                ranks_out.append(rank)
    return queries, ranks_out


def resampled_ranking_metrics(
    queries: np.ndarray, ranks: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Each IR metric on each resample: the mean of the per-query values, query q weighted by
    the mean weight of its rows (`rank_rows`; one row, its weight, for a query with one relevant
    document). A row of ones gives the metrics as logged."""
    queries = np.asarray(queries, dtype=np.int64)
    ranks = np.asarray(ranks, dtype=np.float64)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    distinct, position = np.unique(queries, return_inverse=True)
    width = int(np.bincount(position).max()) if len(position) else 1
    table = np.full((len(distinct), width), np.inf)
    filled = np.zeros(len(distinct), dtype=np.int64)
    for row, query in enumerate(position):
        table[query, filled[query]] = ranks[row]
        filled[query] += 1
    values = per_query(torch.from_numpy(table).float())
    # each query's weight: the mean of its rows' weights in the resample
    query_weights = np.zeros((len(weights), len(distinct)))
    np.add.at(query_weights.T, position, weights.T)
    query_weights /= np.maximum(filled, 1)
    total = query_weights.sum(1)
    return {
        name: (query_weights @ value.double().numpy()) / np.where(total > 0, total, 1.0)
        for name, value in values.items()
    }


def unique_rows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct ids, ascending, and the first row holding each."""
    distinct, inverse = torch.unique(ids, return_inverse=True)
    rows = torch.arange(len(ids), device=ids.device)
    first = torch.full((len(distinct),), len(ids), dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")
    return distinct, first


class Retrieval(TaskType):
    name = "retrieval"
    columns = ("text", "text_pair")
    categorical = False
    has_labels = False
    ranks_corpus = True
    primary = "ndcg@10"
    architecture = (
        "no head: the cosine of the two texts' embeddings (with type_options.projection, "
        "p(x) = x @ projection.weight.T + projection.bias first)"
    )
    hub_task = "sentence-similarity"
    # The primary first: an instance puts `type_options.primary` first.
    report_metrics = {
        "ndcg@10": ReportMetric("nDCG@10", "nDCG@10", hub="ndcg_at_10", card="nDCG@10"),
        "mrr@10": ReportMetric("MRR@10", "MRR@10", hub="mrr_at_10", card="MRR@10"),
        "recall@1": ReportMetric("Recall@1", "R@1", hub="recall_at_1", card="Recall@1"),
        "recall@10": ReportMetric("Recall@10", "R@10", hub="recall_at_10", card="Recall@10"),
        "map@100": ReportMetric("MAP@100", "MAP@100", hub="map_at_100", card="MAP@100"),
    }
    extra_columns_key = "negative_columns"

    def __init__(self, task: str, labels: Sequence[str] = (), **options: Any) -> None:
        super().__init__(task, (), **options)
        o = self.options
        self.scale = float(o.setdefault("scale", 20.0))
        self.symmetric = bool(o.setdefault("symmetric", False))
        self.projection = bool(o.setdefault("projection", False))
        self.gather = bool(o.setdefault("gather_across_ranks", True))
        o["negative_columns"] = list(self.extra_columns(o))
        self.mini_batch_size = o.setdefault("mini_batch_size", None)
        if self.mini_batch_size is not None and (
            isinstance(self.mini_batch_size, bool)
            or not isinstance(self.mini_batch_size, int)
            or self.mini_batch_size < 1
        ):
            raise ConfigError(
                f"data.tasks.{task}.type_options.mini_batch_size={self.mini_batch_size} must be "
                "a positive integer (the GradCache piece, e.g. 32), or null for none."
            )
        self.primary = o.setdefault("primary", "ndcg@10")
        if self.primary not in METRICS:
            raise ConfigError(
                f"data.tasks.{task}.type_options.primary={self.primary} is unknown: use one of "
                f"{list(METRICS)}."
            )
        self.report_metrics = {
            self.primary: type(self).report_metrics[self.primary],
            **type(self).report_metrics,
        }
        if not self.scale > 0:
            raise ConfigError(f"data.tasks.{task}.type_options.scale={self.scale} must be > 0.")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return (
            "scale",
            "symmetric",
            "negative_columns",
            "no_duplicates",
            "mini_batch_size",
            "gather_across_ranks",
            "projection",
            "primary",
        )

    @classmethod
    def extra_columns(cls, options: Mapping[str, Any]) -> tuple[str, ...]:
        columns = options.get("negative_columns") or ()
        if isinstance(columns, str):
            columns = (columns,)
        return tuple(str(c) for c in columns)

    @property
    def sentence_columns(self) -> tuple[str, ...]:
        count = len(self.options["negative_columns"])
        return (*self.columns, *(f"negative_{i}" for i in range(count)))

    @property
    def backpropagates_itself(self) -> bool:
        return self.mini_batch_size is not None

    @property
    def no_duplicates(self) -> bool:
        return bool(self.options.get("no_duplicates", True))

    def encode_labels(self, labels: Sequence[str], split: str) -> list:
        return [[i, i] for i in range(len(labels))]

    def encode_rows(self, rows: Any, split: str) -> list[list[int]]:
        """Per example `[anchor id, positive id]`: rows with the same anchor text are one query,
        rows with the same positive text one document. A row with an empty anchor (a `corpus`
        file's document) is a document without a query: anchor id -1."""
        anchors: dict[str, int] = {}
        documents: dict[str, int] = {}
        pairs = rows.text_pairs or rows.texts
        return [
            [
                anchors.setdefault(a, len(anchors)) if a else -1,
                documents.setdefault(p, len(documents)),
            ]
            for a, p in zip(rows.texts, pairs, strict=True)
        ]

    def embed(self, encode: Callable[[dict], torch.Tensor], column_batch: dict) -> torch.Tensor:
        size = self.mini_batch_size
        if size is None or not torch.is_grad_enabled() or len(column_batch["input_ids"]) <= size:
            return encode(column_batch)
        return cached_embed(encode, column_batch, size)

    def build_head(self, hidden_size: int, dropout: float) -> nn.Module:
        return RetrievalHead(hidden_size, self.projection)

    def outputs(self, head: nn.Module, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        """`[batch, columns, dim]`: each column's embeddings (projected), L2-normalised."""
        return torch.stack([functional.normalize(head(e), dim=-1) for e in embeddings], dim=1)

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        negatives = outputs[:, 2:] if outputs.shape[1] > 2 else None
        queries = labels[:, 0] >= 0
        if not bool(queries.all()):  # evaluation's corpus documents: candidates, not anchors
            if not bool(queries.any()):
                return outputs.sum() * 0.0
            rows = queries.nonzero().squeeze(1)
            return mnrl_loss(
                outputs[rows, 0], outputs[:, 1], negatives, self.scale, self.symmetric, rows=rows
            )
        return mnrl_loss(
            outputs[:, 0],
            outputs[:, 1],
            negatives,
            self.scale,
            self.symmetric,
            gather=self.gather and torch.is_grad_enabled(),
        )

    def metrics(self) -> MetricCollection:
        ranked: dict = {}  # shared: one ranking per compute for all five
        return MetricCollection(
            {name: RankingMetric(name, ranked) for name in METRICS}, compute_groups=False
        )

    def test_rows(self, outputs: torch.Tensor, labels: torch.Tensor) -> tuple[list, list]:
        """Per example its anchor and positive ids: the whole split's `split_test_rows`, one row
        per query and relevant document, take their place at the end of the test."""
        return labels[:, 0].tolist(), labels[:, 1].tolist()

    def split_test_rows(self, metrics: MetricCollection) -> tuple[list, list]:
        """`test_predictions/<task>.csv`: one row per (query, relevant document), `label` the
        query's number and `pred` the document's rank, from the test ranking (computed, and so
        gathered across DDP ranks, first)."""
        metric = metrics[self.primary]
        metric.compute()
        ranks = metric.ranked.get("ranks")
        return rank_rows(metric.ranks() if ranks is None else ranks)

    def resampled_metrics(
        self,
        labels: np.ndarray,
        preds_by_run: Mapping[str, np.ndarray],
        weights: np.ndarray,
    ) -> dict[str, dict[str, np.ndarray]]:
        """The IR metrics of each run on each resample, from `split_test_rows`' (query, rank)
        rows: per-query values, weighted means (`resampled_ranking_metrics`)."""
        return {
            run: resampled_ranking_metrics(labels, preds, weights)
            for run, preds in preds_by_run.items()
        }

    def label_description(self) -> str:
        return "none: (anchor, positive) pairs, ranked against the batch's other texts"

    def card_citations(self) -> list[tuple[str, str]]:
        cited = [("MultipleNegativesRankingLoss", MNRL_CITATION)]
        if self.mini_batch_size:
            cited.append(("CachedMultipleNegativesRankingLoss", GRADCACHE_CITATION))
        return cited

    def predictions(self, outputs: torch.Tensor) -> list[dict[str, Any]]:
        """The cosine of the two texts (of the projected embeddings, with a projection)."""
        cosines = (outputs[:, 0] * outputs[:, 1]).sum(-1).float().cpu().tolist()
        return [{"score": c} for c in cosines]

    def loss_in_words(self) -> str:
        kind = "symmetric MNRL" if self.symmetric else "MNRL"
        negatives = len(self.options["negative_columns"])
        hard = f" and {negatives} hard negative(s) per anchor" if negatives else ""
        cached = f"; GradCache in pieces of {self.mini_batch_size}" if self.mini_batch_size else ""
        return (
            f"{kind} (sentence-transformers' MultipleNegativesRankingLoss): cross-entropy over "
            f"cosine × {self.scale:g} of each anchor against the batch's positives{hard}{cached}"
        )

    def usage_lines(self, head: nn.Module) -> list[str]:
        task = self.task
        lines = [f"# {task}: retrieval; rank documents v for queries u by this cosine"]
        if self.projection:
            lines += [
                f'w, b = heads["{task}.projection.weight"], heads["{task}.projection.bias"]',
                "u, v = u @ w.T + b, v @ w.T + b",
            ]
        lines.append(
            f'out["{task}"] = (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * '
            "np.linalg.norm(v, axis=-1))"
        )
        return lines
