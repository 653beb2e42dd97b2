"""What a frozen encoder (or its frozen lower layers) computes, kept once per example and reused.

Frozen parts (no parameter requires grad, eval mode) are a deterministic function of the tokens,
so their output for an example never changes while they stay frozen. `EmbeddingCache` keeps the
sentence embeddings of a wholly frozen encoder (heads then train from it); `PrefixCache` keeps
the token states entering the lowest trainable layer (only the layers above it then run). The
module empties them whenever that stops being true: when what is frozen changes, and whenever
weights are loaded. Entries are keyed by (stage, task, example index): within a run, an index
names the same tokens every epoch.
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


class PrefixCache:
    """Token states entering the lowest trainable encoder layer, per example, within a budget.

    When only the top layers train, everything below them is a frozen (eval mode) function of the
    tokens: its output for an example is computed once, then only the trainable layers run. States
    are kept without padding (rows where the attention mask is 1) and padded again per batch, so
    an example's entry serves whatever batch it lands in. Entries live in host memory (copied to
    the batch's device when served), within `max_bytes`. `layer` is the layer the states enter;
    the module empties the cache when that changes and whenever weights are loaded.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.layer: int | None = None
        self.tables: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
        self.bytes = 0
        self.hits = 0

    def __len__(self) -> int:
        return sum(len(table) for table in self.tables.values())

    def clear(self) -> None:
        self.tables.clear()
        self.bytes = 0
        self.layer = None

    def get(
        self, key: tuple[str, str], idx: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor | None:
        """The batch's states, padded like `attention_mask`; None unless every example is cached."""
        table = self.tables.get(key, {})
        rows = [table.get(i) for i in idx.tolist()]
        if any(r is None for r in rows):
            return None
        flat = torch.cat(rows).to(attention_mask.device)
        states = flat.new_zeros(*attention_mask.shape, flat.shape[-1])
        states[attention_mask.bool()] = flat
        self.hits += len(rows)
        return states

    def put(
        self,
        key: tuple[str, str],
        idx: torch.Tensor,
        states: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> bool:
        """Keep the batch's states; False, keeping nothing, if that would exceed the budget."""
        mask = attention_mask.bool()
        table = self.tables.setdefault(key, {})
        new = [
            (i, rows)
            for i, rows in zip(idx.tolist(), states[mask].split(mask.sum(1).tolist()), strict=True)
            if i not in table
        ]
        size = sum(rows.numel() * rows.element_size() for _, rows in new)
        if self.bytes + size > self.max_bytes:
            return False
        for i, rows in new:
            # Its own storage (the batch's tensor can go), in host memory: a GPU keeps its own.
            table[i] = rows.detach().to("cpu", copy=True)
        self.bytes += size
        return True
