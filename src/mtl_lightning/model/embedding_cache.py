"""Sentence embeddings of a frozen encoder, computed once per example and reused.

A frozen encoder (no parameter requires grad, eval mode) is a deterministic function of the
tokens, so its embedding of an example never changes while it stays frozen: heads can train from
the cache in every epoch after the first. The module empties the cache whenever that stops being
true: as soon as any encoder parameter trains, and whenever weights are loaded. Entries are keyed
by (stage, task, example index): within a run, an index names the same tokens every epoch.
"""

from __future__ import annotations

import torch


class EmbeddingCache:
    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = 0

    def __len__(self) -> int:
        return sum(int(filled.sum()) for _, filled in self.tables.values())

    def clear(self) -> None:
        self.tables.clear()

    def get(self, key: tuple[str, str], idx: torch.Tensor) -> torch.Tensor | None:
        """The cached embeddings of a batch, or None unless every example is cached."""
        table = self.tables.get(key)
        if table is not None and int(idx.max()) < len(table[1]) and bool(table[1][idx].all()):
            self.hits += len(idx)
            return table[0][idx]
        return None

    def put(self, key: tuple[str, str], idx: torch.Tensor, embeddings: torch.Tensor) -> None:
        values, filled = self.tables.get(key, (embeddings.new_empty(0, embeddings.shape[1]), None))
        if filled is None:
            filled = torch.zeros(0, dtype=torch.bool, device=embeddings.device)
        needed = int(idx.max()) + 1
        if needed > len(filled):  # grow geometrically: indices arrive in random order
            size = max(needed, 2 * len(filled))
            values = torch.cat([values, values.new_zeros(size - len(values), values.shape[1])])
            filled = torch.cat([filled, filled.new_zeros(size - len(filled))])
        values[idx] = embeddings.detach()
        filled[idx] = True
        self.tables[key] = (values, filled)
