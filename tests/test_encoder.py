"""Encoder: pooling, layer-group discovery across architectures, clear errors for bad paths."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CONFIGS
from transformers import AutoModel, RobertaConfig

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.model.encoder import layer_groups, pool, resolve_encoder_path


def test_mean_pooling_ignores_padding():
    hidden = torch.randn(1, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    pooled = pool(hidden, mask, "mean", normalize=False)
    assert torch.allclose(pooled, hidden[:, :3].mean(1))
    maxed = pool(hidden, mask, "max", normalize=False)
    assert torch.equal(maxed, hidden[:, :3].max(1).values)
    assert torch.equal(pool(hidden, mask, "cls", normalize=False), hidden[:, 0])
    assert torch.allclose(pool(hidden, mask, "mean", normalize=True).norm(dim=-1), torch.ones(1))


@pytest.mark.parametrize(
    "config",
    [
        TINY_CONFIGS["bert"],
        TINY_CONFIGS["distilbert"],
        RobertaConfig(
            vocab_size=100,
            hidden_size=16,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=32,
        ),
    ],
    ids=["bert", "distilbert", "roberta"],
)
def test_layer_groups_are_discovered_for_any_encoder(config):
    model = AutoModel.from_config(config)
    groups = layer_groups(model)
    depth = getattr(config, "num_hidden_layers", None) or config.n_layers
    assert [g.name for g in groups] == ["embeddings"] + [f"layer_{i}" for i in range(depth)]
    owned = [id(p) for g in groups for p in g.params]
    assert len(owned) == len(set(owned)) == len(list(model.parameters()))
    assert any(p is model.get_input_embeddings().weight for p in groups[0].params)


TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2)
TINY |= {"intermediate_size": 64, "max_position_embeddings": 64}
RELATIVE = {
    "relative_attention": True,
    "position_biased_input": False,
    "pos_att_type": ["p2c", "c2p"],
}


@pytest.mark.parametrize(
    ("config", "extra", "expected"),
    [
        ("MPNetConfig", {}, {"encoder.relative_attention_bias.weight": "embeddings"}),
        ("DebertaV2Config", RELATIVE, {"encoder.rel_embeddings.weight": "layer_0"}),
        (
            "DebertaV2Config",
            RELATIVE | {"norm_rel_ebd": "layer_norm"},  # normed before layer 0 runs
            {"encoder.rel_embeddings.weight": "embeddings", "encoder.LayerNorm.bias": "embeddings"},
        ),
        ("DebertaV2Config", {"conv_kernel_size": 3}, {"encoder.conv.conv.weight": "layer_0"}),
        ("ElectraConfig", {"embedding_size": 16}, {"embeddings_project.weight": "embeddings"}),
        (
            "AlbertConfig",
            {"embedding_size": 16},
            {"encoder.embedding_hidden_mapping_in.weight": "embeddings"},
        ),
        ("ModernBertConfig", {"pad_token_id": 0}, {"final_norm.weight": "layer_2"}),  # runs last
    ],
)
def test_parameters_outside_the_layers_join_the_lowest_group_that_uses_them(
    config, extra, expected
):
    import transformers

    model = AutoModel.from_config(getattr(transformers, config)(**TINY, **extra))
    training = {name: m.training for name, m in model.named_modules()}
    state = torch.get_rng_state()
    groups = layer_groups(model)
    assert torch.equal(torch.get_rng_state(), state)  # the probe pass draws no random numbers
    assert {name: m.training for name, m in model.named_modules()} == training
    group_of = {id(p): g.name for g in groups for p in g.params}
    assert len(group_of) == sum(len(g.params) for g in groups) == len(list(model.parameters()))
    parameters = dict(model.named_parameters())
    assert {name: group_of[id(parameters[name])] for name in expected} == expected
    # The module holding such a parameter switches train/eval mode with its group.
    for name, group in expected.items():
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        assert any(owner is m for g in groups if g.name == group for m in g.modules)


def test_missing_local_encoder_fails_in_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="model.encoder.name_or_path=.*does not exist"):
        resolve_encoder_path(str(tmp_path / "nope"))


def test_uncached_hub_model_offline_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="neither in the local Hugging Face cache nor reachable"):
        resolve_encoder_path("distilbert-base-uncased-not-cached-here")


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_hub_check_goes_through_the_proxy(monkeypatch, scheme):
    """Behind a proxy the hub is reached through it: a raw socket to the hub would fail here."""
    import socket
    import threading

    from huggingface_hub import constants

    from mtl_lightning.model import encoder

    proxy = socket.create_server(("127.0.0.1", 0))
    seen: list[list[bytes]] = []

    def answer_once() -> None:  # one request: its method and target
        connection, _ = proxy.accept()
        with connection:
            seen.append(connection.recv(4096).split()[:2])
            reply = b"200 OK" if scheme == "http" else b"403 Forbidden"
            connection.sendall(b"HTTP/1.1 " + reply + b"\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    # hub.invalid does not resolve: only the proxy can answer.
    monkeypatch.setattr(constants, "ENDPOINT", f"{scheme}://hub.invalid")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for name in ("http_proxy", "https_proxy", "no_proxy", "NO_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(f"{scheme.upper()}_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
    try:
        reachable = encoder.hub_reachable(timeout=5)
        thread.join(5)
    finally:
        proxy.close()
    if scheme == "http":  # the proxy relays the request and the hub's answer
        assert seen == [[b"HEAD", b"http://hub.invalid"]] and reachable
    else:  # HTTPS: the client asks the proxy for a tunnel; this one refuses it
        assert seen == [[b"CONNECT", b"hub.invalid:443"]] and not reachable
