"""Token ids cached on disk: each dataset is tokenized once per tokenizer and `max_length`.

An entry is `<folder>/<sha256>.npz`, keyed by everything that changes the ids: the tokenizer's
full definition (vocabulary, normalizer, special tokens, ...), the tokenizer libraries' versions,
`max_length` and the texts themselves. So a changed text, tokenizer or length is a miss, never a
stale hit, and nothing needs invalidating by hand. Entries are written atomically; one that
cannot be read (a crash mid-copy, a full disk, a manual edit) is recomputed and replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tokenizers
import transformers
from transformers import PreTrainedTokenizerBase

from mtl_lightning.core.writing import replace_atomically

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the entry layout or the tokenizer call below changes


def tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> list[list[int]]:
    """The one tokenizer call whose result is cached: truncated ids with special tokens."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of the tokenizer's definition, not of its name: one path may hold other files."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        # Each call sets truncation and padding on the backend: state, not definition.
        definition.pop("truncation", None)
        definition.pop("padding", None)
    else:  # a pure-Python tokenizer: its vocabulary and settings define it
        definition = {
            "vocab": sorted(tokenizer.get_vocab().items()),
            "init_kwargs": tokenizer.init_kwargs,
        }
    description = {
        "class": type(tokenizer).__name__,
        "definition": definition,
        "versions": [transformers.__version__, tokenizers.__version__],
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


class TokenCache:
    """`cache(texts)` -> token ids, from `folder` when an entry exists; `folder=None` disables."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int, folder: Path | None
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.folder = folder
        self.fingerprint = tokenizer_fingerprint(tokenizer) if folder is not None else ""

    def key(self, texts: Sequence[str]) -> str:
        digest = hashlib.sha256(f"{FORMAT}:{self.fingerprint}:{self.max_length}".encode())
        for text in texts:
            # Length-prefixed, so that no two different lists of texts hash the same bytes.
            encoded = text.encode("utf-8")
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
        return digest.hexdigest()

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        if self.folder is None:
            return tokenize(self.tokenizer, texts, self.max_length)
        path = self.folder / f"{self.key(texts)}.npz"
        if path.is_file():
            ids = _read(path, len(texts))
            if ids is not None:
                return ids
            log.warning("Token cache entry %s is unreadable: tokenizing again.", path)
        ids = tokenize(self.tokenizer, texts, self.max_length)
        try:
            _write(path, ids)
        except (
            OSError
        ) as error:  # a cache is an optimisation: a read-only disk is no reason to stop
            log.warning("Cannot write token cache entry %s (%s): not caching it.", path, error)
        return ids


def _read(path: Path, count: int) -> list[list[int]] | None:
    """The cached ids, or None if the entry is damaged or does not hold `count` sequences."""
    try:
        with np.load(path, allow_pickle=False) as entry:
            flat, offsets = entry["ids"].tolist(), entry["offsets"].tolist()
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if len(offsets) != count + 1 or offsets[0] != 0 or offsets[-1] != len(flat):
        return None
    return [flat[start:end] for start, end in zip(offsets, offsets[1:], strict=False)]


def _write(path: Path, ids: list[list[int]]) -> None:
    """Write the entry under a temporary name, then rename: readers never see half a file, and
    concurrent writers (DDP ranks) each replace it with the same content."""
    offsets = np.cumsum([0] + [len(row) for row in ids], dtype=np.int64)
    # int32: every vocabulary fits, at half the size on disk.
    flat = np.fromiter((i for row in ids for i in row), dtype=np.int32, count=int(offsets[-1]))

    def write(partial: Path) -> None:
        with partial.open("wb") as file:
            np.savez(file, ids=flat, offsets=offsets)

    replace_atomically(path, write)
