"""The on-disk token cache: hits skip the tokenizer, anything that changes the ids misses."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from mtl_lightning.data import token_cache
from mtl_lightning.data.sources.base import SPLITS
from mtl_lightning.model.encoder import load_tokenizer


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Counts the texts that reach the tokenizer through the cache."""
    counted: list[int] = []
    tokenize = token_cache.tokenize

    def counting(tokenizer, texts, max_length):
        counted.append(len(texts))
        return tokenize(tokenizer, texts, max_length)

    monkeypatch.setattr(token_cache, "tokenize", counting)
    return counted


def _setup(cfg):
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule


def _ids(datamodule) -> dict:
    return {
        (task, split): splits[split].input_ids
        for task, splits in datamodule.datasets.items()
        for split in SPLITS
    }


def _entries(cfg) -> list[Path]:
    return sorted((Path(cfg.data.data_dir) / ".token_cache").glob("*.npz"))


def test_second_setup_reads_the_cache(make_cfg, calls, monkeypatch):
    cfg = make_cfg()
    first = _ids(_setup(cfg))
    assert len(calls) == 2 * len(SPLITS) and len(_entries(cfg)) == 2 * len(SPLITS)

    def fail(*args, **kwargs):
        raise AssertionError("the tokenizer ran although every entry is cached")

    monkeypatch.setattr(token_cache, "tokenize", fail)
    assert _ids(_setup(cfg)) == first


def test_max_length_is_part_of_the_key(make_cfg, calls):
    _setup(make_cfg())
    calls.clear()
    short = _setup(make_cfg("data.max_length=8"))
    assert len(calls) == 2 * len(SPLITS)  # every entry missed
    assert max(len(ids) for ids in _ids(short).values() for ids in ids) == 8


def test_corrupt_entries_are_recomputed(make_cfg, calls):
    cfg = make_cfg()
    first = _ids(_setup(cfg))
    entries = _entries(cfg)
    entries[0].write_bytes(b"not a cache entry")
    entries[1].write_bytes(entries[1].read_bytes()[:100])  # cut short, as by a full disk
    calls.clear()
    assert _ids(_setup(cfg)) == first
    assert len(calls) == 2  # only the damaged entries
    calls.clear()
    assert _ids(_setup(cfg)) == first and not calls  # and they were written again


def test_the_cache_can_be_turned_off(make_cfg, calls):
    cfg = make_cfg("data.token_cache=false")
    _setup(cfg)
    _setup(cfg)
    assert len(calls) == 2 * 2 * len(SPLITS) and not _entries(cfg)


def test_key_follows_texts_and_tokenizer_definition(tiny_encoders, tmp_path):
    tokenizer = load_tokenizer(tiny_encoders["bert"])
    cache = token_cache.TokenCache(tokenizer, 64, tmp_path)
    before = token_cache.tokenizer_fingerprint(tokenizer)
    tokenizer(["a call sets truncation state"], truncation=True, max_length=4)
    assert token_cache.tokenizer_fingerprint(tokenizer) == before  # state, not definition
    assert cache.key(["a", "b"]) == cache.key(["a", "b"])
    assert cache.key(["a", "b"]) != cache.key(["ab"]) != cache.key(["a", "c"])
    tokenizer.add_tokens(["newword"])  # the vocabulary changes the ids: a different key
    assert token_cache.TokenCache(tokenizer, 64, tmp_path).key(["a"]) != cache.key(["a"])
