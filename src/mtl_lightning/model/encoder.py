"""The shared encoder: a Hugging Face model, token pooling, and its layer groups.

`Encoder` wraps `AutoModel` (found by `mtl_lightning.core.resolve`, offline) with pooling;
`layer_groups` finds the embeddings and the stack of transformer layers of any HF encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from transformers import AutoConfig, AutoModel

from mtl_lightning.core.errors import ConfigError

# Resolving a name offline lives below data/ and model/, which both load tokenizers; these
# names stay importable from here.
from mtl_lightning.core.resolve import (  # noqa: F401
    PACKAGED_MINILM,
    folder_settings,
    hub_reachable,
    load_pretrained,
    load_tokenizer,
    packaged_minilm_path,
    resolve_encoder_path,
)
from mtl_lightning.core.rules import Rule

log = logging.getLogger(__name__)
POOLINGS = ("mean", "cls", "max")
# What each key of conf/model's `encoder` node accepts (mtl_lightning.core.rules).
ENCODER_RULES: dict[str, Rule] = {
    "name_or_path": Rule(str, example="sentence-transformers/all-MiniLM-L6-v2"),
    # null: a sentence-transformers folder's own pooling and normalisation, else mean, none.
    "pooling": Rule(
        str, f"one of {', '.join(POOLINGS)}", POOLINGS.__contains__, "mean", nullable=True
    ),
    "normalize": Rule(bool, example="false", nullable=True),
}


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
        pooling: str | None = None,
        normalize: bool | None = None,
        config: dict | None = None,
    ) -> None:
        """`config` (a dict of `AutoConfig` fields) rebuilds the architecture without weights:
        checkpoints store it so that they load where `name_or_path` is not available.

        `pooling` / `normalize` left None come from `name_or_path` when it is a
        sentence-transformers folder (its `1_Pooling`, its `Normalize` module), else mean and
        no normalisation; a value given wins over the folder's.
        """
        super().__init__()
        if pooling is not None and pooling not in POOLINGS:
            raise ConfigError(f"model.encoder.pooling={pooling} is unknown: use one of {POOLINGS}.")
        if config is None and (pooling is None or normalize is None):
            pooling, normalize = _folder_pooling(name_or_path, pooling, normalize)
        self.pooling = pooling or "mean"
        self.normalize = bool(normalize)
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
        to the list it yields: the output of layer `layer - 1`, not detached, so that a state
        that depends on a trainable parameter says so (`requires_grad`)."""
        captured: list[torch.Tensor] = []

        def keep(module: nn.Module, args: tuple, output) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

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


def _folder_pooling(
    name_or_path: str, pooling: str | None, normalize: bool | None
) -> tuple[str | None, bool | None]:
    """Fill in what is unset from a sentence-transformers folder (see `Encoder`)."""
    settings = folder_settings(name_or_path)
    if settings is None:
        return pooling, normalize
    if pooling is None:
        if settings.pooling not in POOLINGS:
            raise ConfigError(
                f"model.encoder.name_or_path={name_or_path} pools by {settings.pooling} (its "
                f"1_Pooling/config.json), which is not implemented here: set "
                f"model.encoder.pooling to one of {POOLINGS}."
            )
        pooling = settings.pooling
    if settings.unused_modules:
        log.warning(
            "model.encoder.name_or_path=%s also has the sentence-transformers modules %s, which "
            "this encoder does not run: its embeddings are not that model's encode().",
            name_or_path,
            list(settings.unused_modules),
        )
    return pooling, settings.normalize if normalize is None else normalize


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
    A parameter in neither (MPNet's relative attention bias, DeBERTa's relative embeddings,
    ELECTRA's embedding projection, a final LayerNorm) joins the lowest group that uses it, seen
    in one small forward pass: used before layer 0, it joins the embeddings; first used in or
    after layer k (and before layer k + 1), layer k. So "frozen below layer k" holds for every
    architecture. Parameters the pass never uses join the top group.
    """
    layers = layer_stack(model)[2]
    embeddings = embeddings_module(model) or model.get_input_embeddings()
    groups = [LayerGroup("embeddings", [embeddings], list(embeddings.parameters()))]
    groups += [
        LayerGroup(f"layer_{i}", [block], list(block.parameters()))
        for i, block in enumerate(layers)
    ]
    grouped = {id(p) for group in groups for p in group.params}
    loose = {id(p): p for p in model.parameters() if id(p) not in grouped}
    if not loose:
        return groups
    first_layer = _first_layer_using(model, layers, loose)
    group_of = {key: first_layer.get(key, len(layers) - 1) + 1 for key in loose}
    for key, param in loose.items():
        groups[group_of[key]].params.append(param)
    # A module all of whose parameters are loose and in one group (an nn.Embedding, a Linear)
    # switches train/eval mode with that group.
    for module in model.modules():
        owners = {group_of.get(id(p)) for p in module.parameters()}
        if len(owners) == 1 and None not in owners:
            groups[owners.pop()].modules.append(module)
    return groups


class _FirstUse(TorchFunctionMode):
    """Records, for each watched parameter, `position` when a torch op first takes it."""

    def __init__(self, watched: dict[int, nn.Parameter]) -> None:
        super().__init__()
        self.watched = watched
        self.position = -1  # the index of the latest block to start; -1: before layer 0
        self.first: dict[int, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for value in tree_leaves((args, kwargs)):
            if isinstance(value, torch.Tensor) and id(value) in self.watched:
                self.first.setdefault(id(value), self.position)
        return func(*args, **kwargs)


@torch.no_grad()
def _first_layer_using(
    model: nn.Module, layers: nn.ModuleList, watched: dict[int, nn.Parameter]
) -> dict[int, int]:
    """For each watched parameter the pass uses: the index of the block that had last started
    when an op first took it (-1: before layer 0). One forward of four tokens, in eval mode
    (no dropout, so no random numbers drawn); modes are put back."""
    probe = _FirstUse(watched)

    def starts(index: int):
        def hook(module: nn.Module, args) -> None:
            probe.position = index

        return hook

    handles = [block.register_forward_pre_hook(starts(i)) for i, block in enumerate(layers)]
    modes = {module: module.training for module in model.modules()}
    vocab = model.get_input_embeddings().num_embeddings
    device = next(model.parameters()).device
    input_ids = ((torch.arange(4, device=device) + 1) % vocab).unsqueeze(0)
    model.eval()
    try:
        with probe:
            model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return probe.first
