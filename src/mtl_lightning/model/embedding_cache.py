"""What a frozen encoder (or its frozen lower layers) computes, kept once per example and reused.

Frozen parts (no parameter requires grad, eval mode) are a deterministic function of the tokens,
so their output for an example never changes while they stay frozen. `EmbeddingCache` keeps the
sentence embeddings of a wholly frozen encoder (heads then train from it); `PrefixCache` keeps
the token states entering the lowest trainable layer (only the layers above it then run);
`FrozenCache` (model.frozen_cache) decides which of them serves a batch. They are emptied
whenever that stops being true: when what is frozen changes, and whenever weights are loaded.
Entries are found by (stage, task, example index) and serve only the tokens they were computed
from (`token_fingerprints`): evaluating on other data never returns the first data's values.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

import torch
import transformers
from torch import nn

from mtl_lightning.core.writing import replace_atomically
from mtl_lightning.model.encoder import Encoder, embeddings_module

try:  # the folder's lock (POSIX); without it, concurrent writers may drop each other's entries
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)


def token_fingerprints(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Two int64 per example from its real tokens alone (their padding does not count): the
    number of tokens and a position-weighted sum of their ids. Different sentences at one index
    (another datamodule, another split) differ here, so an entry never serves them."""
    mask = attention_mask.long()
    rank = mask.cumsum(1) * mask  # 1, 2, ... over the real tokens, wherever the padding is
    weights = (rank * 2654435761) % 2**24 + 1  # Knuth's multiplicative hash of the position
    # ids < 2**20 and weights <= 2**24: the sum stays far below 2**63 for any sequence length.
    weighted = (input_ids.long() * weights * mask).sum(1)
    return torch.stack([mask.sum(1), weighted], dim=1)


class EmbeddingCache:
    def __init__(self) -> None:
        # key -> (embeddings, filled, fingerprints), rows by example index
        self.tables: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.hits = 0

    def __len__(self) -> int:
        return sum(int(filled.sum()) for _, filled, _ in self.tables.values())

    def clear(self) -> None:
        self.tables.clear()

    def get(
        self,
        key: tuple[str, str],
        idx: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor | None:
        """The cached embeddings of a batch, or None unless every example is cached for these
        very tokens."""
        table = self.tables.get(key)
        if table is None or int(idx.max()) >= len(table[1]):
            return None
        values, filled, prints = table
        same = prints[idx] == token_fingerprints(input_ids, attention_mask)
        if bool(filled[idx].all() & same.all()):
            self.hits += len(idx)
            return values[idx]
        return None

    def put(
        self,
        key: tuple[str, str],
        idx: torch.Tensor,
        embeddings: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> None:
        prints = token_fingerprints(input_ids, attention_mask)
        empty = (
            embeddings.new_empty(0, embeddings.shape[1]),
            torch.zeros(0, dtype=torch.bool, device=embeddings.device),
            prints.new_zeros(0, prints.shape[1]),
        )
        values, filled, stored = self.tables.get(key, empty)
        needed = int(idx.max()) + 1
        if needed > len(filled):  # grow geometrically: indices arrive in random order
            size = max(needed, 2 * len(filled))
            values = torch.cat([values, values.new_zeros(size - len(values), values.shape[1])])
            filled = torch.cat([filled, filled.new_zeros(size - len(filled))])
            stored = torch.cat([stored, stored.new_zeros(size - len(stored), stored.shape[1])])
        values[idx] = embeddings.detach()
        filled[idx] = True
        stored[idx] = prints.to(stored.device)
        self.tables[key] = (values, filled, stored)


class PrefixCache:
    """Token states entering the lowest trainable encoder layer, per example, within a budget.

    When only the top layers train, everything below them is a frozen (eval mode) function of the
    tokens: its output for an example is computed once, then only the trainable layers run. States
    are kept without padding (rows where the attention mask is 1) and padded again per batch, so
    an example's entry serves whatever batch it lands in. Entries live in host memory (copied to
    the batch's device when served), within `max_bytes`. `layer` is the layer the states enter;
    `FrozenCache` empties the cache when that changes and whenever weights are loaded.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.layer: int | None = None
        # key -> example index -> (its states without padding, its token fingerprint)
        self.tables: dict[tuple[str, str], dict[int, tuple[torch.Tensor, tuple[int, int]]]] = {}
        self.bytes = 0
        self.hits = 0

    def __len__(self) -> int:
        return sum(len(table) for table in self.tables.values())

    def clear(self) -> None:
        self.tables.clear()
        self.bytes = 0
        self.layer = None

    def get(
        self,
        key: tuple[str, str],
        idx: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor | None:
        """The batch's states, padded like `attention_mask`; None unless every example is cached
        for these very tokens."""
        table = self.tables.get(key, {})
        prints = token_fingerprints(input_ids, attention_mask).tolist()
        entries = [table.get(i) for i in idx.tolist()]
        if any(e is None or e[1] != tuple(p) for e, p in zip(entries, prints, strict=True)):
            return None
        flat = torch.cat([rows for rows, _ in entries]).to(attention_mask.device)
        states = flat.new_zeros(*attention_mask.shape, flat.shape[-1])
        states[attention_mask.bool()] = flat
        self.hits += len(entries)
        return states

    def put(
        self,
        key: tuple[str, str],
        idx: torch.Tensor,
        states: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> bool:
        """Keep the batch's states; False, keeping nothing, if that would exceed the budget.

        States that carry a gradient depend on a trainable parameter: they would be stale after
        the next optimizer step, so they are refused (ValueError)."""
        if states.requires_grad:
            raise ValueError("PrefixCache.put: the states depend on a trainable parameter.")
        mask = attention_mask.bool()
        table = self.tables.setdefault(key, {})
        prints = [tuple(p) for p in token_fingerprints(input_ids, attention_mask).tolist()]
        rows = states[mask].split(mask.sum(1).tolist())
        new = [
            (i, r, p)
            for i, r, p in zip(idx.tolist(), rows, prints, strict=True)
            if i not in table or table[i][1] != p
        ]
        size = sum(r.numel() * r.element_size() for _, r, _ in new)
        stale = sum(
            table[i][0].numel() * table[i][0].element_size() for i, _, _ in new if i in table
        )
        if self.bytes + size - stale > self.max_bytes:
            return False
        for i, r, p in new:
            # Its own storage (the batch's tensor can go), in host memory: a GPU keeps its own.
            table[i] = (r.to("cpu", copy=True), p)
        self.bytes += size - stale
        return True


@torch.no_grad()
def prefix_serving_matches(
    encoder: Encoder, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> bool:
    """Whether states served by a `PrefixCache` give the encoder's own output, checked on a batch
    in eval mode (modes are put back) through the path that serves: captured, `put`, then `get`
    in another order and padded to 3 more tokens, as a later batch may be, and run from `layer`.
    False where the stack is not a plain chain: models whose embeddings are not `embeddings`,
    that add work between layers by index (DeBERTa-v2's conv after layer 0) or project the
    embeddings (ELECTRA-small)."""
    if embeddings_module(encoder.model) is None:
        return False
    modes = {module: module.training for module in encoder.modules()}
    encoder.eval()
    try:
        with encoder.capture_input(layer) as captured:
            expected = encoder(input_ids, attention_mask)
        scratch, key = PrefixCache(max_bytes=sys.maxsize), ("check", "")
        idx = torch.arange(len(input_ids), device=input_ids.device)
        scratch.put(key, idx, captured[0], input_ids, attention_mask)
        order = idx.flip(0)
        pad = encoder.model.config.pad_token_id or 0
        ids = nn.functional.pad(input_ids[order], (0, 3), value=pad)
        mask = nn.functional.pad(attention_mask[order], (0, 3), value=0)
        served = encoder.forward_from(layer, scratch.get(key, order, ids, mask), ids, mask)
        return served.shape == expected[order].shape and torch.allclose(
            served, expected[order], rtol=1e-4, atol=1e-5
        )
    except Exception:  # noqa: BLE001 - any failure means: not a plain chain of layers
        return False
    finally:
        for module, training in modes.items():
            module.training = training


class SharedEmbeddings:
    """A wholly frozen encoder's sentence embeddings, shared by the runs that use one folder
    (`model.frozen_cache_dir`; `make compare` gives each study its own).

    Every seed, scenario and trial of a study that keeps the pretrained encoder frozen
    (`entire_network_frozen`, `only_transformer_frozen`, `gradual_unfreeze`'s heads-only start)
    would encode the same sentences with the same weights; the first run encodes them and the
    others read them. An entry is found by the exact token ids of its sentence (so a split, a
    seed's shuffling or another task's copy of the sentence finds it) in the file of an
    identity: a digest of the encoder's weights and config (attention implementation included),
    pooling and normalisation, with the torch and transformers versions and the float32 matmul
    precision, then the device type and autocast's setting of each call. Other weights, another
    precision or another device never read it. Files are read weights-only and, under a lock on
    the folder, merged with what other runs added and replaced atomically. The store is an
    optimisation: a file it cannot read or write is logged once, and the run goes on without it.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).expanduser()
        self.weights: str | None = None  # digest of the bound encoder's weights and settings
        self.identity: str | None = None  # weights + the calls' device type and autocast
        self.table: dict[bytes, torch.Tensor] = {}
        self.new: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.broken = False

    @staticmethod
    def weights_of(encoder: Encoder) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for name, tensor in encoder.state_dict().items():
            digest.update(name.encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        config = encoder.model.config
        settings = (
            encoder.pooling,
            encoder.normalize,
            config.to_json_string(use_diff=False),
            getattr(config, "_attn_implementation", None),
            torch.__version__,
            transformers.__version__,
            torch.get_float32_matmul_precision(),
        )
        digest.update(repr(settings).encode())
        return digest.hexdigest()

    @staticmethod
    def mode_of(device_type: str) -> str:
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else None
        return f"{device_type}-{dtype if autocast else 'no_autocast'}"

    @property
    def path(self) -> Path:
        return self._path_for(self.identity)

    def _path_for(self, identity: str | None) -> Path:
        return self.folder / f"embeddings_{identity}.pt"

    def bind(self, encoder: Encoder, device_type: str) -> None:
        """Find the file of `encoder`'s present weights (digested once, until `unbind`) under
        this call's device type and autocast setting, switching files when those change."""
        if self.weights is None:
            self.weights = self.weights_of(encoder)
        identity = hashlib.blake2b(
            f"{self.weights} {self.mode_of(device_type)}".encode(), digest_size=16
        ).hexdigest()
        if identity != self.identity:
            self.save()
            self.identity = identity
            self.table = self._load_for(identity)

    def unbind(self) -> None:
        """The encoder may change: write what is new, forget the weights' entries."""
        self.save()
        self.weights = self.identity = None
        self.table = {}

    def _give_up(self, doing: str, path: Path, error: Exception) -> None:
        log.warning(
            "model.frozen_cache_dir: cannot %s %s (%s); this run computes its own frozen "
            "embeddings instead (delete the file, or give a folder you can write to).",
            doing,
            path,
            error,
        )
        self.broken = True
        self.table, self.new = {}, {}

    def _load_for(self, identity: str | None) -> dict[bytes, torch.Tensor]:
        path = self._path_for(identity)
        if identity is None or self.broken or not path.is_file():
            return {}
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            rows = stored["ids"].split(stored["lengths"].tolist())
            return {r.numpy().tobytes(): v for r, v in zip(rows, stored["values"], strict=True)}
        except Exception as error:  # noqa: BLE001 - a damaged or foreign file: not used
            self._give_up("read", path, error)
            return {}

    @staticmethod
    def _keys(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[bytes]:
        ids, mask = input_ids.long().cpu(), attention_mask.bool().cpu()
        return [row[m].numpy().tobytes() for row, m in zip(ids, mask, strict=True)]

    def get(
        self, encoder: Encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor | None:
        """The batch's embeddings, or None unless every sentence is stored."""
        if self.broken:
            return None
        self.bind(encoder, input_ids.device.type)
        keys = self._keys(input_ids, attention_mask)
        if not all(k in self.table for k in keys):
            return None
        self.hits += len(keys)
        return torch.stack([self.table[k] for k in keys]).to(input_ids.device)

    def put(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, embeddings: torch.Tensor
    ) -> None:
        """Keep the batch's embeddings (after a `get` of the same batch, which bound the file).
        Embeddings that carry a gradient come from a trainable encoder: refused (ValueError)."""
        if embeddings.requires_grad:
            raise ValueError(
                "SharedEmbeddings.put: the embeddings depend on a trainable parameter."
            )
        if self.broken or self.identity is None:
            return
        values = embeddings.detach().to("cpu", copy=True)
        for key, value in zip(self._keys(input_ids, attention_mask), values, strict=True):
            if key not in self.table:
                self.table[key] = self.new[key] = value

    def save(self) -> None:
        """Merge the new entries into the file, as other runs left it, and replace it
        atomically, holding the folder's lock meanwhile."""
        if not self.new or self.identity is None or self.broken:
            return
        path = self.path
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with (self.folder / ".lock").open("a") as lock:
                if fcntl is not None:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                merged = {**self._load_for(self.identity), **self.new}
                if self.broken:  # the file could not be read: do not overwrite it
                    return
                keys = list(merged)
                stored = {
                    "lengths": torch.tensor([len(k) // 8 for k in keys], dtype=torch.long),
                    "ids": torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.long),
                    "values": torch.stack([merged[k] for k in keys]),
                }
                replace_atomically(path, lambda partial: torch.save(stored, partial))
        except OSError as error:
            self._give_up("write", path, error)
            return
        log.info(
            "Shared frozen embeddings %s: %d sentences, %d new.", path, len(keys), len(self.new)
        )
        self.new = {}


class FrozenCache:
    """model.frozen_cache: a batch's sentence embeddings, computing only what is not frozen.

    A wholly frozen encoder: embeddings come from `embeddings` after the first time. Only the top
    layers train (at least one layer below them frozen): the states entering the lowest trainable
    layer come from `prefix`, and only the trainable layers run. Both are exact, so results match
    `model.frozen_cache=false` within float tolerance.
    """

    def __init__(self, max_gb: float, shared_dir: str | os.PathLike | None = None) -> None:
        self.max_gb = max_gb
        self.embeddings = EmbeddingCache()
        self.prefix = PrefixCache(int(max_gb * 2**30))
        self.prefix_refused = False  # for this run: not a plain chain, or over the budget
        self.shared = SharedEmbeddings(shared_dir) if shared_dir else None

    def clear(self) -> None:
        self.embeddings.clear()
        self.prefix.clear()
        if self.shared is not None:
            self.shared.unbind()

    def frozen_embedding(
        self, encoder: Encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """A wholly frozen encoder's output, read from (and added to) the shared store."""
        if self.shared is None:
            return encoder(input_ids, attention_mask)
        embeddings = self.shared.get(encoder, input_ids, attention_mask)
        if embeddings is None:
            embeddings = encoder(input_ids, attention_mask)
            if not embeddings.requires_grad:  # else a weight outside the layer groups trains
                self.shared.put(input_ids, attention_mask, embeddings)
        return embeddings

    def sentence_embedding(
        self, encoder: Encoder, frozen_groups: int, num_groups: int, batch: dict, stage: str
    ) -> torch.Tensor:
        """`encoder`'s output for `batch`, whose bottom `frozen_groups` of `num_groups` layer
        groups (embeddings first) are frozen."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if frozen_groups < num_groups:
            self.embeddings.clear()  # the encoder can change from now on
            if self.shared is not None:
                self.shared.unbind()
            return self._prefix_cached(encoder, batch, stage, layer=frozen_groups - 1)
        self.prefix.clear()  # all frozen: the embedding cache serves instead
        key = (stage, batch["task"])
        embeddings = self.embeddings.get(key, batch["idx"], ids, mask)
        if embeddings is None:
            embeddings = self.frozen_embedding(encoder, ids, mask)
            self.embeddings.put(key, batch["idx"], embeddings, ids, mask)
        return embeddings

    def _prefix_cached(self, encoder: Encoder, batch: dict, stage: str, layer: int) -> torch.Tensor:
        """The embedding with layers below `layer` (all frozen) served from `prefix`."""
        cache, ids, mask = self.prefix, batch["input_ids"], batch["attention_mask"]
        if cache.layer != layer:
            cache.clear()
            if layer >= 1 and not self.prefix_refused:
                if prefix_serving_matches(encoder, layer, ids, mask):
                    cache.layer = layer
                    log.info(
                        "Frozen-prefix cache: the states entering encoder layer %d are computed "
                        "once per example; afterwards only the layers from %d up run "
                        "(model.frozen_cache=false turns this off).",
                        layer,
                        layer,
                    )
                else:
                    self.prefix_refused = True
                    log.warning(
                        "Frozen-prefix cache off for this run: running this encoder from its "
                        "layer %d does not reproduce its output (its layers are not a plain "
                        "chain); the frozen layers run every step.",
                        layer,
                    )
        if cache.layer is None or stage == "test":  # nothing to skip, refused, or one pass
            return encoder(ids, mask)
        key = (stage, batch["task"])
        states = cache.get(key, batch["idx"], ids, mask)
        if states is not None:
            return encoder.forward_from(layer, states, ids, mask)
        with encoder.capture_input(layer) as captured:
            embeddings = encoder(ids, mask)
        if captured[0].requires_grad:  # a trainable parameter runs below `layer`
            log.warning(
                "Frozen-prefix cache off for this run: the states entering layer %d depend on "
                "a trainable parameter outside the frozen layer groups; the frozen layers run "
                "every step.",
                layer,
            )
            self._refuse()
        elif not cache.put(key, batch["idx"], captured[0], ids, mask):
            log.warning(
                "Frozen-prefix cache off for this run: the states entering layer %d of the data "
                "need more than model.frozen_cache_max_gb=%s GB; the frozen layers run every "
                "step (raise model.frozen_cache_max_gb to cache them).",
                layer,
                self.max_gb,
            )
            self._refuse()
        return embeddings

    def _refuse(self) -> None:
        self.prefix.clear()
        self.prefix_refused = True

    def totals(self) -> dict[str, float]:
        """What the caches hold and served so far in this run, as logged at each epoch's end."""
        totals = {}
        if len(self.embeddings):
            totals["freeze/cached_embeddings"] = float(len(self.embeddings))
            totals["freeze/cache_hits"] = float(self.embeddings.hits)
        if self.shared is not None and self.shared.hits:
            totals["freeze/shared_embedding_hits"] = float(self.shared.hits)
        if len(self.prefix):
            totals["freeze/prefix_cached_examples"] = float(len(self.prefix))
            totals["freeze/prefix_cache_mb"] = self.prefix.bytes / 2**20
            totals["freeze/prefix_cache_hits"] = float(self.prefix.hits)
        return totals
