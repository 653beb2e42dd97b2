"""The retrieval task type: MNRL, GradCache, the no-duplicates sampler, the DDP gather, the IR
metrics, and training beside a classification task."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXPERIMENTS
from helpers import Recorder, train_cached_and_fresh
from torch import nn
from torch.nn import functional

from mtl_lightning.data.sampling.sampler import EpochSeed, NoDuplicatesBatchSampler
from mtl_lightning.model.module import MultiTaskModule
from mtl_lightning.tasks import build_task_type
from mtl_lightning.tasks.ranking import METRICS, per_query, relevant_ranks, top_k
from mtl_lightning.tasks.retrieval import cached_embed, mnrl_loss
from mtl_lightning.train import RunStopped, build_data, train

RECORD = "+callbacks.recorder._target_=helpers.Recorder"
RETRIEVAL = ("data=tiny_retrieval", "data.batch_size=16")
SCENARIOS = [name for name in EXPERIMENTS if name != "single_task"]


# --- MNRL ---------------------------------------------------------------------------------


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v, strict=True)) / (math.hypot(*u) * math.hypot(*v))


def _cross_entropy(logits, target):
    return math.log(sum(math.exp(x) for x in logits)) - logits[target]


ANCHORS = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
POSITIVES = [[2.0, 0.5], [0.5, 1.0], [1.0, -1.0]]
NEGATIVES = [[[0.0, 1.0]], [[1.0, 0.0]], [[-1.0, 1.0]]]


def test_mnrl_equals_the_hand_computed_loss_on_three_pairs():
    scale = 20.0
    # each anchor against the 3 positives: cross-entropy of its own, mean over anchors
    by_hand = [
        _cross_entropy([scale * _cos(a, p) for p in POSITIVES], i) for i, a in enumerate(ANCHORS)
    ]
    loss = mnrl_loss(torch.tensor(ANCHORS), torch.tensor(POSITIVES), scale=scale)
    assert loss.item() == pytest.approx(sum(by_hand) / 3, rel=1e-5)

    # with one hard negative each: 3 positives, then the 3 negatives, are every anchor's choices
    candidates = POSITIVES + [n[0] for n in NEGATIVES]
    by_hand = [
        _cross_entropy([scale * _cos(a, c) for c in candidates], i) for i, a in enumerate(ANCHORS)
    ]
    loss = mnrl_loss(
        torch.tensor(ANCHORS), torch.tensor(POSITIVES), torch.tensor(NEGATIVES), scale=scale
    )
    assert loss.item() == pytest.approx(sum(by_hand) / 3, rel=1e-5)

    # symmetric: the mean of that and each positive against the anchors
    backward = [
        _cross_entropy([scale * _cos(p, a) for a in ANCHORS], i) for i, p in enumerate(POSITIVES)
    ]
    forward = [
        _cross_entropy([scale * _cos(a, p) for p in POSITIVES], i) for i, a in enumerate(ANCHORS)
    ]
    loss = mnrl_loss(torch.tensor(ANCHORS), torch.tensor(POSITIVES), scale=scale, symmetric=True)
    assert loss.item() == pytest.approx((sum(forward) / 3 + sum(backward) / 3) / 2, rel=1e-5)


def test_the_task_type_reads_its_options_and_refuses_bad_ones():
    from mtl_lightning.core.errors import ConfigError

    kind = build_task_type("qa", [], {"type": "retrieval", "negative_columns": "neg"})
    assert kind.sentence_columns == ("text", "text_pair", "negative_0")
    assert kind.spec()["scale"] == 20.0 and kind.primary == "ndcg@10" and kind.no_duplicates
    with pytest.raises(ConfigError, match="type_options.primary=acc is unknown"):
        build_task_type("qa", [], {"type": "retrieval", "primary": "acc"})
    with pytest.raises(ConfigError, match="mini_batch_size=0 must be a positive integer"):
        build_task_type("qa", [], {"type": "retrieval", "mini_batch_size": 0})


# --- GradCache ----------------------------------------------------------------------------


def _tiny_module(tiny_encoders, **options) -> MultiTaskModule:
    torch.manual_seed(0)
    return MultiTaskModule(
        {"qa": []},
        encoder={"name_or_path": tiny_encoders["bert"]},
        task_types={"qa": {"type": "retrieval", **options}},
        frozen_cache=False,
    )


def _batch(n: int = 12, negatives: int = 1) -> dict:
    generator = torch.Generator().manual_seed(1)
    batch = {"task": "qa", "labels": torch.arange(n)[:, None].repeat(1, 2), "idx": torch.arange(n)}
    keys = [("input_ids", "attention_mask"), ("pair_input_ids", "pair_attention_mask")]
    keys += [(f"negative_{i}_input_ids", f"negative_{i}_attention_mask") for i in range(negatives)]
    for ids_key, mask_key in keys:
        lengths = torch.randint(3, 9, (n,), generator=generator)
        mask = (torch.arange(9)[None, :] < lengths[:, None]).long()
        batch[ids_key] = torch.randint(1000, 2000, (n, 9), generator=generator) * mask
        batch[mask_key] = mask
    return batch


def _loss_and_grads(module: MultiTaskModule, batch: dict):
    # Dropout off: pieces draw other dropout masks than the whole batch does, so only a
    # deterministic encoder computes the plain loss exactly (the replay of each piece's own
    # masks is the next test's).
    module.eval()
    module.zero_grad()
    torch.manual_seed(123)
    outputs = module.task_outputs(batch, "train")
    loss = module.task_types["qa"].loss(outputs, batch["labels"])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("symmetric", [False, True])
def test_gradcache_gives_the_plain_loss_and_gradients(tiny_encoders, symmetric):
    batch = _batch()
    plain_loss, plain = _loss_and_grads(
        _tiny_module(tiny_encoders, symmetric=symmetric, negative_columns=["neg"]), batch
    )
    cached_module = _tiny_module(
        tiny_encoders, symmetric=symmetric, negative_columns=["neg"], mini_batch_size=5
    )
    cached_loss, cached = _loss_and_grads(cached_module, batch)
    assert cached_loss.item() == pytest.approx(plain_loss.item(), abs=1e-5)
    assert plain.keys() == cached.keys() and len(plain) > 10  # the encoder's weights
    for name, grad in plain.items():
        torch.testing.assert_close(cached[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_gradcache_replays_each_pieces_dropout_masks():
    """A toy encoder with heavy dropout: the cached gradients equal those of encoding the same
    pieces with their graphs, which they would not if the second encoding drew new masks."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 8))
    inputs = torch.randn(10, 6)
    batch = {"input_ids": inputs, "attention_mask": torch.ones(10, 1), "idx": torch.arange(10)}

    def encode(part):
        return encoder(part["input_ids"])

    def grads(embed):
        encoder.zero_grad()
        torch.manual_seed(7)
        embeddings = embed()
        mnrl_loss(embeddings[:5], embeddings[5:]).backward()
        return [p.grad.clone() for p in encoder.parameters()]

    def pieces():
        return torch.cat([encode({"input_ids": inputs[s : s + 3]}) for s in range(0, 10, 3)])

    plain = grads(pieces)
    cached = grads(lambda: cached_embed(encode, batch, 3))
    fresh_masks = grads(lambda: cached_embed(encode, batch, 3, replay=False))
    assert not all(torch.allclose(a, b) for a, b in zip(plain, fresh_masks, strict=True))
    for a, b in zip(plain, cached, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --- the no-duplicates sampler ------------------------------------------------------------


def _duplicated_texts(n: int = 200) -> list[tuple[str, str]]:
    # many anchors share positives and some anchors repeat: a plain batch would repeat texts
    return [(f"q{i % 70}", f"d{i % 23}") for i in range(n)]


def _batches(sampler) -> list[list[int]]:
    return [list(b) for b in sampler]


def test_no_duplicates_sampler_never_repeats_a_text_and_keeps_the_epoch_length():
    texts = _duplicated_texts()
    lengths = [len(a) + len(b) for a, b in texts]
    seed = EpochSeed(42)
    sampler = NoDuplicatesBatchSampler(lengths, 16, seed, pool_factor=4, texts=texts)
    for epoch in range(3):
        seed.set_epoch(epoch)
        batches = _batches(sampler)
        assert len(batches) == len(sampler) == 13  # ceil(200 / 16), as without the sampler
        for batch in batches:
            words = [w for i in batch for w in texts[i]]
            assert len(words) == len(set(words)), batch
        seen = [i for b in batches for i in b]
        assert len(seen) == len(set(seen))  # no example twice in a pass
        assert len(seen) >= 180  # few sit out (only a text in more examples than batches)


def test_no_duplicates_sampler_resumes_exactly_mid_epoch():
    texts = _duplicated_texts()
    lengths = [len(a) + len(b) for a, b in texts]

    def sampler(skip: int) -> NoDuplicatesBatchSampler:
        made = NoDuplicatesBatchSampler(lengths, 16, EpochSeed(42, epoch=3), texts=texts, offset=5)
        made.skip = skip
        return made

    whole = _batches(sampler(0))
    assert _batches(sampler(6)) == whole[6:]
    assert min(i for b in whole for i in b) >= 5  # offset: a task's place in a concatenation


# --- DDP ----------------------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    projection = nn.Linear(4, 4)
    anchors, positives, negatives = torch.load(Path(out) / "inputs.pt")
    rows = slice(0, 3) if rank == 0 else slice(3, 5)  # uneven shards: 3 and 2 anchors
    loss = mnrl_loss(
        projection(anchors[rows]),
        projection(positives[rows]),
        projection(negatives[rows]),
        symmetric=True,
        gather=True,
    )
    loss.backward()
    # DDP averages the gradients of the ranks (each rank's loss a mean over its anchors)
    for p in projection.parameters():
        dist.all_reduce(p.grad)
        p.grad /= world
    torch.save([loss.detach(), [p.grad for p in projection.parameters()]], Path(out) / f"{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.ddp
def test_the_ddp_gather_equals_one_process_on_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    anchors, positives, negatives = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 2, 4)
    torch.save([anchors, positives, negatives], tmp_path / "inputs.pt")
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_ddp_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)

    torch.manual_seed(0)
    projection = nn.Linear(4, 4)
    # one process: the 3 + 2 anchors' losses weighted as DDP weighs them (the mean of the two
    # ranks' means); with even shards this is the plain mean over the global batch
    scores = _global_loss(projection, anchors, positives, negatives, ranks=[range(3), range(3, 5)])
    scores.backward()
    rank0 = torch.load(tmp_path / "0.pt")
    rank1 = torch.load(tmp_path / "1.pt")
    assert ((rank0[0] + rank1[0]) / 2).item() == pytest.approx(scores.item(), abs=1e-5)
    for p, g0, g1 in zip(projection.parameters(), rank0[1], rank1[1], strict=True):
        torch.testing.assert_close(g0, p.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g1, p.grad, rtol=1e-5, atol=1e-6)


def _global_loss(projection, anchors, positives, negatives, ranks):
    """One process: each rank's anchors scored against every candidate of the global batch,
    the ranks' mean losses averaged (symmetric: positives against all anchors)."""

    a = functional.normalize(projection(anchors), dim=-1)
    p = functional.normalize(projection(positives), dim=-1)
    n = functional.normalize(projection(negatives), dim=-1).reshape(-1, 4)
    candidates = torch.cat([p, n])
    losses = []
    for rows in ranks:
        rows = torch.tensor(list(rows))
        forward = functional.cross_entropy(20 * a[rows] @ candidates.T, rows)
        backward = functional.cross_entropy(20 * p[rows] @ a.T, rows)
        losses.append((forward + backward) / 2)
    return sum(losses) / len(losses)


# --- IR metrics ---------------------------------------------------------------------------


def _queries(scores: list[list[float]]) -> torch.Tensor:
    """Query vectors whose cosines with the identity's rows (the documents) are `scores`."""
    return torch.tensor(scores)


def test_ir_metrics_on_hand_ranked_queries_with_ties_and_a_miss():
    documents = torch.eye(12)
    low = [0.01 * i for i in range(12, 0, -1)]  # distinct small scores, decreasing
    a = [0.9] + low[1:]  # relevant doc 0 first
    b = [0.8, 0.8, 0.7, 0.7] + low[4:]  # relevant doc 3 tied with doc 2 (not relevant): 4th
    c = [0.5] * 11 + [0.1]  # relevant doc 11 last: 12th
    d = [0.9, 0.6] + low[2:5] + [0.6] + low[6:]  # relevant 1 and 5 tied: 2nd and 3rd
    e = [0.3] * 12  # everything tied: relevant doc 0 ranks below the 11 others
    relevant = [[0], [3], [11], [1, 5], [0]]
    ranks = relevant_ranks(_queries([a, b, c, d, e]), documents, relevant, chunk_size=5)
    assert ranks[:, 0].tolist() == [1, 4, 12, 2, 12]
    assert ranks[3].tolist() == [2, 3]
    values = per_query(ranks)
    log2 = math.log2
    expected = {
        "mrr@10": [1, 1 / 4, 0, 1 / 2, 0],
        "ndcg@10": [1, 1 / log2(5), 0, (1 / log2(3) + 1 / log2(4)) / (1 + 1 / log2(3)), 0],
        "recall@1": [1, 0, 0, 0, 0],
        "recall@10": [1, 1, 0, 1, 0],
        "map@100": [1, 1 / 4, 1 / 12, (1 / 2 + 2 / 3) / 2, 1 / 12],
    }
    assert set(values) == set(METRICS)
    for name, wanted in expected.items():
        np.testing.assert_allclose(values[name].tolist(), wanted, rtol=1e-6, err_msg=name)


def test_ranks_of_real_valued_embeddings_equal_a_full_sort():
    """Embeddings as an encoder gives them (384 floats, not hand-set exact scores): each relevant
    document's rank is one plus the documents scored above it, in whatever chunks the corpus is
    cut; a relevant document never ranks behind itself (its score summed in another order)."""
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(40, 384, generator=generator)
    documents = torch.randn(300, 384, generator=generator)
    documents[:40] += 2 * queries  # each query's own document scores high, not always first
    relevant = [[q] if q % 3 else [q, 40 + q] for q in range(40)]
    scores = functional.normalize(queries, dim=-1) @ functional.normalize(documents, dim=-1).T
    for chunk_size in (7, 64, 300):
        ranks = relevant_ranks(queries, documents, relevant, chunk_size=chunk_size)
        for q, rows in enumerate(relevant):
            wanted = sorted(int((scores[q] > scores[q, d]).sum()) + 1 for d in rows)
            assert ranks[q, : len(rows)].tolist() == wanted, (chunk_size, q)
    assert (ranks[:, 0] == 1).sum() >= 20  # the case above is not all misses


def test_per_query_rows_give_the_logged_metrics_and_their_weighted_resamples():
    from mtl_lightning.tasks.retrieval import rank_rows, resampled_ranking_metrics

    inf = float("inf")
    ranks = torch.tensor([[1, inf], [4, inf], [12, inf], [2, 3], [12, inf]])
    queries, query_ranks = rank_rows(ranks)
    assert queries == [0, 1, 2, 3, 3, 4] and query_ranks == [1, 4, 12, 2, 3, 12]
    logged = {name: float(v.mean()) for name, v in per_query(ranks).items()}
    weights = np.array(
        [
            [1, 1, 1, 1, 1, 1],  # the split itself
            [2, 0, 0, 0, 0, 0],  # query 0 twice, nothing else
            [0, 1, 0, 1, 1, 0],  # queries 1 and 3
        ]
    )
    resampled = resampled_ranking_metrics(queries, query_ranks, weights)
    for name, values in resampled.items():
        assert values[0] == pytest.approx(logged[name])
        assert values[1] == pytest.approx(1.0)  # query 0 ranks its document first
    assert resampled["mrr@10"][2] == pytest.approx((1 / 4 + 1 / 2) / 2)


def test_top_k_in_chunks_is_the_whole_ranking_with_ties_to_the_earlier_document():
    documents = torch.eye(12)
    scores = [[0.5, 0.9, 0.5, 0.1, 0.9, 0.3, 0.2, 0.5, 0.0, 0.0, 0.7, 0.5]]
    best, rows = top_k(_queries(scores), documents, k=6, chunk_size=5)
    assert rows[0].tolist() == [1, 4, 10, 0, 2, 7]
    whole = top_k(_queries(scores), documents, k=6, chunk_size=100)
    assert torch.equal(whole[1], rows)
    assert best[0, 0].item() == pytest.approx(0.9 / np.linalg.norm(scores[0]), rel=1e-6)


def test_the_metric_ranks_distinct_positives_for_distinct_anchors():
    """Two rows of one anchor: one query with two relevant documents; a positive shared by
    two anchors is one document."""
    kind = build_task_type("qa", [], {"type": "retrieval"})

    class Rows:
        texts = ["q1", "q1", "q2", "q3"]
        text_pairs = ["d1", "d2", "d3", "d1"]
        labels = [""] * 4

    labels = torch.tensor(kind.encode_rows(Rows, "val"))
    assert labels.tolist() == [[0, 0], [0, 1], [1, 2], [2, 0]]
    metric = kind.metrics()
    d = torch.eye(3)
    # q1 near d2 then d1; q2 near d1 (miss for d3 at rank 3 of 3); q3 near d1
    anchors = torch.tensor([[0.5, 0.9, 0.0], [0.5, 0.9, 0.0], [0.9, 0.5, 0.1], [1.0, 0.0, 0.0]])
    outputs = torch.stack([anchors, d[[0, 1, 2, 0]]], dim=1)
    metric.update(outputs[:2], labels[:2])
    metric.update(outputs[2:], labels[2:])
    values = {name: float(v) for name, v in metric.compute().items()}
    assert values["recall@1"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert values["mrr@10"] == pytest.approx((1 + 1 / 3 + 1) / 3)


# --- training -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("experiment", SCENARIOS)
def test_a_retrieval_task_trains_with_a_classification_task_in_each_scenario(make_cfg, experiment):
    overrides = [*RETRIEVAL, f"experiment={experiment}", RECORD]
    if experiment == "only_head_frozen":
        overrides += ["freezing.head=retrieval", "freezing.head_warmup_epochs=1"]  # of 2 epochs
    metrics = train(make_cfg(*overrides))
    for name in METRICS:
        assert 0 <= metrics[f"test/retrieval/{name}"] <= 1
    mean = (metrics["test/retrieval/ndcg@10"] + metrics["test/classification/acc"]) / 2
    assert metrics["test/primary_mean"] == pytest.approx(mean, abs=1e-6)
    if experiment == "entire_network_frozen":
        return
    recorder = Recorder.last
    changed = {n for n in recorder.after if not torch.equal(recorder.before[n], recorder.after[n])}
    assert any(n.startswith("heads.classification.") for n in changed)
    assert not any(n.startswith("heads.retrieval") for n in recorder.after)  # no head
    if experiment == "only_head_frozen":  # out of the loss once frozen: its loss not logged
        assert "val/retrieval/forgetting" in metrics
    if experiment == "full_finetune":  # the retrieval loss moves the encoder too
        assert any(n.startswith("encoder.") for n in changed)


@pytest.mark.slow
def test_retrieval_resumes_exactly_mid_epoch_in_alternating_mode(make_cfg, tmp_path):
    common = (*RETRIEVAL, "data.sampling=alternating", "trainer.max_epochs=2", RECORD)
    train(make_cfg(*common, output="straight"))
    straight = Recorder.last
    sigterm = ("+callbacks.sigterm._target_=helpers.SigtermAtStep", "+callbacks.sigterm.step=5")
    with pytest.raises(RunStopped):
        train(make_cfg(*common, *sigterm, output="stopped"))
    ckpt = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    train(make_cfg(*common, f"ckpt_path={ckpt}", output="resumed"))
    resumed = Recorder.last
    assert len(resumed.batches) == len(straight.batches) - 5
    for mine, theirs in zip(resumed.batches, straight.batches[5:], strict=True):
        for task in theirs:
            assert torch.equal(mine[task]["idx"], theirs[task]["idx"])
    for name, value in straight.after.items():
        torch.testing.assert_close(resumed.after[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_the_tiny_retrieval_data_has_no_label_column_and_batches_without_duplicates(make_cfg):
    datamodule = build_data(make_cfg(*RETRIEVAL).data)
    datamodule.setup("fit")
    dataset = datamodule.datasets["retrieval"]["train"]
    assert datamodule.task_types["retrieval"].name == "retrieval"
    sampler = datamodule._bucket_sampler("retrieval", "train", EpochSeed(1), sharded=False)
    assert isinstance(sampler, NoDuplicatesBatchSampler)
    for batch in sampler:
        texts = [t for i in batch for t in dataset.example_texts(i)]
        assert len(texts) == len(set(texts))


# --- search and mining --------------------------------------------------------------------


def test_mining_never_returns_a_positive_and_respects_the_rank_range_and_margin():
    from mtl_lightning.mine import mine_negatives

    documents = [f"d{i}" for i in range(8)]
    embeddings = torch.eye(8)
    a = [0.5, 0.9, 0.6, 0.45, 0.4, 0.3, 0.2, 0.1]
    b = [0.1, 0.95, 0.9, 0.8, 0.2, 0.3, 0.0, 0.0]
    anchors, positives = ["a", "b", "b"], ["d0", "d1", "d2"]
    vectors = torch.tensor([a, b, b])

    def mined(**options):
        return mine_negatives(anchors, positives, vectors, documents, embeddings, **options)

    # margin 0: only candidates scoring at most the positive's (d1, d2 score above d0 for a)
    assert mined(num_negatives=2, range_max=10) == [["d3", "d4"], ["d3", "d5"], ["d3", "d5"]]
    # margin 0.05 (cosines: a's vector has norm 1.3865, so d0 0.361, d3 0.325, d4 0.289):
    # d3 is within the margin of the positive, d4 and d5 are not
    assert mined(num_negatives=2, range_max=10, margin=0.05)[0] == ["d4", "d5"]
    # rank range: skip the 2 most similar candidates (positives excluded first)
    assert mined(num_negatives=1, range_min=2, range_max=10, margin=-1.0)[0] == ["d3"]
    # too few within range_max: the row gets None (dropped from the file)
    assert mined(num_negatives=2, range_max=2)[0] is None
    for row, found in enumerate(mined(num_negatives=3, range_max=10, margin=-1.0)):
        own = {p for a, p in zip(anchors, positives, strict=True) if a == anchors[row]}
        assert not own & set(found)  # never a positive of the anchor, whatever the margin


@pytest.mark.slow
def test_search_and_mine_from_the_command_functions(tiny_encoders, tmp_path):
    """search writes each query's top k as JSONL; mine writes a file a retrieval task reads."""
    import json

    from conftest import compose_cfg

    from mtl_lightning.mine import mine
    from mtl_lightning.search import search

    queries = tmp_path / "q.csv"
    queries.write_text("id,text\nq7,Who wrote Hamlet?\nq8,What do pandas eat?\n")
    corpus = tmp_path / "docs.txt"
    corpus.write_text("Hamlet was written by Shakespeare.\nPandas eat bamboo.\nOslo is cold.\n")
    encoder = tiny_encoders["bert"]
    records = search(
        compose_cfg(
            "search", "ckpt_path=none", f"encoder={encoder}", f"queries={queries}",
            f"corpus={corpus}", f"output={tmp_path / 'hits.jsonl'}", "top_k=2", "device=cpu",
        )
    )  # fmt: skip
    written = [json.loads(line) for line in (tmp_path / "hits.jsonl").read_text().splitlines()]
    assert written == json.loads(json.dumps(records))
    assert [r["query_id"] for r in written] == ["q7", "q8"]
    for record in written:
        assert [h["rank"] for h in record["hits"]] == [1, 2]
        assert record["hits"][0]["score"] >= record["hits"][1]["score"]
        assert {h["id"] for h in record["hits"]} <= {0, 1, 2}

    pairs = tmp_path / "pairs.csv"
    lines = ["text,text_pair"] + [f"question {i},answer {i} is here" for i in range(12)]
    pairs.write_text("\n".join(lines) + "\n")
    kept = mine(
        compose_cfg(
            "mine", "ckpt_path=none", f"encoder={encoder}", f"input={pairs}",
            f"output={tmp_path / 'negatives.csv'}", "num_negatives=2", "range_max=5",
            "margin=-1", "device=cpu",
        )
    )  # fmt: skip
    assert len(kept) == 12
    for row in kept:
        assert row["text_pair"] not in (row["negative_1"], row["negative_2"])
        assert row["negative_1"] != row["negative_2"]
    from mtl_lightning.data.sources.files import FileSource

    source = FileSource(
        "qa",
        train=str(tmp_path / "negatives.csv"),
        type="retrieval",
        type_options={"negative_columns": ["negative_1", "negative_2"]},
    )
    rows = source.load(tmp_path)["train"]
    assert rows.extra[0] == (kept[0]["negative_1"], kept[0]["negative_2"])


def test_a_corpus_file_joins_val_and_test_as_documents_without_a_query(tiny_encoders, tmp_path):
    from mtl_lightning.data.datamodule import MultiTaskDataModule
    from mtl_lightning.data.sources.files import FileSource

    pairs = tmp_path / "qa.csv"
    pairs.write_text("question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(20)))
    corpus = tmp_path / "docs.csv"
    corpus.write_text("answer\nextra one\n \nextra two\n")  # a blank document is dropped
    source = FileSource(
        "qa", train=str(pairs), type="retrieval", text_column="question",
        text_pair_column="answer", corpus=str(corpus),
    )  # fmt: skip
    datamodule = MultiTaskDataModule(
        {"qa": source}, tokenizer=tiny_encoders["bert"], data_dir=str(tmp_path), batch_size=4
    )
    datamodule.setup("fit")
    splits = datamodule.datasets["qa"]
    for split in ("val", "test"):
        assert splits[split].text_pairs[-2:] == ["extra one", "extra two"]
        assert [label[0] for label in splits[split].labels[-2:]] == [-1, -1]
        assert min(label[0] for label in splits[split].labels[:-2]) == 0
    assert "extra one" not in splits["train"].text_pairs
    # the metric ranks the documents, never asks them as queries; the loss skips them as anchors
    kind = datamodule.task_types["qa"]
    labels = torch.tensor(splits["val"].labels)
    outputs = torch.nn.functional.normalize(torch.randn(len(labels), 2, 8), dim=-1)
    metric = kind.metrics()
    metric.update(outputs, labels)
    assert metric["recall@10"].per_query()["recall@10"].shape == (len(labels) - 2,)
    assert torch.isfinite(kind.loss(outputs, labels))
    assert kind.loss(outputs[-2:], labels[-2:]).item() == 0.0


@pytest.mark.slow
def test_trained_retrieval_searches_exports_and_loads_in_sentence_transformers(make_cfg, tmp_path):
    """Done when: trained beside a classification task, the checkpoint searches a corpus, its
    export is a sentence-transformers folder that embeds as the checkpoint does, and searching
    with the export gives the checkpoint's hits."""
    import json

    from conftest import compose_cfg
    from sentence_transformers import SentenceTransformer

    from mtl_lightning.hub.export import export_checkpoint
    from mtl_lightning.model.inference import Predictor
    from mtl_lightning.search import search

    metrics = train(make_cfg(*RETRIEVAL, "trainer.max_epochs=1"))
    assert "test/retrieval/ndcg@10" in metrics and "test/classification/acc" in metrics
    # test_predictions: one row per (query, relevant document), the query and the rank; the
    # report's resampled metrics give the logged ones on the split itself
    from mtl_lightning.callbacks.test_predictions import PREDICTIONS_DIR, read_predictions
    from mtl_lightning.tasks import build_task_type

    _, queries, ranks = read_predictions(tmp_path / "run" / PREDICTIONS_DIR / "retrieval.csv")
    kind = build_task_type("retrieval", [], {"type": "retrieval"})
    ones = np.ones((1, len(queries)))
    scored = kind.resampled_metrics(np.array(queries), {"run": np.array(ranks)}, ones)["run"]
    for name in METRICS:
        assert scored[name][0] == pytest.approx(metrics[f"test/retrieval/{name}"], abs=1e-5)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    exported = export_checkpoint(ckpt, tmp_path / "exported")
    spec = json.loads((exported / "heads.json").read_text())
    assert spec["tasks"]["retrieval"]["type"] == "retrieval"
    assert spec["tasks"]["retrieval"]["tensors"] == {}  # no head
    texts = ["Who wrote Hamlet?", "Hamlet was written by William Shakespeare."]
    st = SentenceTransformer(str(exported), device="cpu").encode(texts)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    np.testing.assert_allclose(st, predictor.encode(texts), atol=1e-5)
    assert set(predictor.predict(["Who wrote Hamlet?"])[0]) == {"text", "classification"}

    queries = tmp_path / "q.txt"
    queries.write_text("Who wrote Hamlet?\nWhat is the capital of Peru?\n")
    corpus = tmp_path / "docs.txt"
    corpus.write_text("Lima is the capital city of Peru.\nHamlet was written by Shakespeare.\n")
    hits = {}
    sources = {"ckpt": [f"ckpt_path={ckpt}"], "st": ["ckpt_path=none", f"encoder={exported}"]}
    for name, source in sources.items():
        records = search(
            compose_cfg(
                "search", *source, f"queries={queries}", f"corpus={corpus}",
                f"output={tmp_path / name}.jsonl", "device=cpu",
            )
        )  # fmt: skip
        hits[name] = [[(h["id"], round(h["score"], 4)) for h in r["hits"]] for r in records]
    assert hits["ckpt"] == hits["st"] and len(hits["ckpt"][0]) == 2


def test_gradcache_is_refused_with_a_weighting_that_takes_each_tasks_gradient(make_cfg):
    from mtl_lightning.core.errors import ConfigError

    cached = "+data.tasks.retrieval.type_options.mini_batch_size=4"
    cfg = make_cfg(*RETRIEVAL, "weighting=pcgrad", cached)
    with pytest.raises(ConfigError, match=r"mini_batch_size \(GradCache\).*weighting=PCGrad"):
        train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ("data.sampling=temperature", "weighting=uncertainty"),
        ("data.sampling=proportional", "+data.tasks.retrieval.type_options.symmetric=true"),
        ("weighting=pcgrad", "+data.tasks.retrieval.type_options.projection=true"),
    ],
)
def test_retrieval_trains_in_other_sampling_modes_and_weightings(make_cfg, overrides):
    metrics = train(make_cfg(*RETRIEVAL, "trainer.max_epochs=1", *overrides))
    assert 0 <= metrics["test/retrieval/ndcg@10"] <= 1
    assert np.isfinite(metrics["train/retrieval/loss_epoch"])


@pytest.mark.slow
def test_the_prefix_cache_is_exact_for_retrieval(make_cfg):
    """Frozen lower layers served from the prefix cache give the weights and metrics of
    recomputing them, for both texts of a retrieval example (each its own cache entry)."""
    common = (*RETRIEVAL, "freezing.keep_frozen_layers=2", "trainer.max_epochs=2", RECORD)
    with_cache, without, _ = train_cached_and_fresh(make_cfg, *common)
    for key in ("val/primary_mean", "test/retrieval/ndcg@10", "test/retrieval/mrr@10"):
        assert with_cache[key] == pytest.approx(without[key], abs=1e-5)
    assert with_cache["freeze/prefix_cache_hits"] > 0


@pytest.mark.ddp
@pytest.mark.subprocess
def test_ddp_replicas_stay_identical_with_a_retrieval_task(tiny_encoders, tmp_path):
    """trainer=ddp, 2 CPU ranks: candidates gathered across ranks, replicas identical, the
    ranking metrics computed on the whole (gathered) test split."""
    import json
    import os
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    sums = tmp_path / "sums"
    command = [
        sys.executable, "-m", "mtl_lightning.train", "trainer=ddp", *RETRIEVAL, "logger=csv",
        "trainer.max_epochs=1", "+trainer.enable_progress_bar=false",
        f"model.encoder.name_or_path={tiny_encoders['bert']}",
        f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}",
        "+callbacks.checksum._target_=helpers.ParamChecksum", f"+callbacks.checksum.out={sums}",
    ]  # fmt: skip
    path = os.pathsep.join(p for p in (str(tests), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((sums / "rank0.json").read_text()) == json.loads(
        (sums / "rank1.json").read_text()
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 <= summary["metrics"]["test/retrieval/ndcg@10"] <= 1
    rows = (tmp_path / "run" / "test_predictions" / "retrieval.csv").read_text().splitlines()
    assert len(rows) - 1 >= 18  # every test query of both ranks' shards (18 test pairs)


@pytest.mark.slow
def test_the_study_report_compares_retrieval_runs_with_a_paired_statistic_over_queries(
    make_cfg, tmp_path
):
    """Two scenarios on the tiny retrieval task: the report shows the IR metrics under their
    names, and its paired difference over queries is that of the logged test metrics."""
    import json

    from omegaconf import OmegaConf

    from mtl_lightning.hub.export import export_checkpoint
    from mtl_lightning.study.report import write_report

    runs = {}
    for job, experiment in enumerate(("full_finetune", "only_transformer_frozen")):
        output = f"sweep/{job}_{experiment}"
        cfg = make_cfg(*RETRIEVAL, f"experiment={experiment}", "seed=3", output=output)
        runs[experiment] = train(cfg)
        (tmp_path / output / ".hydra").mkdir()
        OmegaConf.save(cfg, tmp_path / output / ".hydra" / "config.yaml")
    text = write_report(tmp_path / "sweep").read_text()
    numbers = json.loads((tmp_path / "sweep" / "report.json").read_text())
    assert numbers["metrics"]["retrieval"][0] == "ndcg@10"
    assert set(numbers["metrics"]["retrieval"]) == set(METRICS)
    assert "test nDCG@10" in text and "Δ nDCG@10 vs full_finetune" in text
    delta = numbers["deltas"]["only_transformer_frozen"]["retrieval"]["vs_reference"]
    for metric in ("ndcg@10", "mrr@10"):
        logged = runs["only_transformer_frozen"], runs["full_finetune"]
        expected = logged[0][f"test/retrieval/{metric}"] - logged[1][f"test/retrieval/{metric}"]
        assert delta[metric]["delta"] == pytest.approx(expected, abs=1e-4)
    ckpt = tmp_path / "sweep" / "0_full_finetune" / "checkpoints" / "last.ckpt"
    card = (export_checkpoint(ckpt, tmp_path / "export") / "README.md").read_text()
    assert "| retrieval | nDCG@10 |" in card and "henderson2017efficient" in card


@pytest.mark.slow
def test_hard_negatives_from_files_train_with_gradcache_beside_classification(make_cfg, tmp_path):
    """By config alone: a classification task and a retrieval task with a hard-negative column
    from the user's CSV files (val without negatives), GradCache on; trains and evaluates."""
    import csv

    from mtl_lightning.data.sources.base import Rows, TinySource

    def write(path, header, records):
        with path.open("w", newline="", encoding="utf-8") as file:
            csv.writer(file).writerows([header, *records])
        return path

    rows = Rows.of(TinySource("retrieval").load(tmp_path)["train"])
    positives = rows.text_pairs
    wrong = [positives[(i + 7) % len(positives)] for i in range(len(positives))]
    qa = write(
        tmp_path / "qa.csv",
        ["question", "answer", "wrong"],
        zip(rows.texts, positives, wrong, strict=True),
    )
    val = write(
        tmp_path / "qa_val.csv",
        ["question", "answer"],
        zip(rows.texts[:12], positives[:12], strict=True),
    )
    classes = Rows.of(TinySource("classification").load(tmp_path)["train"])
    questions = write(
        tmp_path / "questions.csv",
        ["question", "label"],
        zip(classes.texts, classes.labels, strict=True),
    )
    metrics = train(
        make_cfg(
            "data=files",
            f"data.tasks.classification.train={questions}",
            "data.tasks.classification.text_column=question",
            "~data.tasks.sentiment",
            "+data.tasks.qa._target_=mtl_lightning.data.sources.files.FileSource",
            "+data.tasks.qa.task=qa",
            "+data.tasks.qa.type=retrieval",
            f"+data.tasks.qa.train={qa}",
            f"+data.tasks.qa.val={val}",
            "+data.tasks.qa.text_column=question",
            "+data.tasks.qa.text_pair_column=answer",
            "+data.tasks.qa.type_options={negative_columns:[wrong],mini_batch_size:5}",
            "data.batch_size=16",
            "trainer.max_epochs=1",
        )
    )
    assert 0 <= metrics["test/qa/ndcg@10"] <= 1 and "test/classification/acc" in metrics
    assert np.isfinite(metrics["train/qa/loss_epoch"])
