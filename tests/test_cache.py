"""The frozen-encoder cache is exact: same results with and without it, never a stale entry."""

from __future__ import annotations

import pytest
import torch
from helpers import Recorder

from mtl_lightning.model.embedding_cache import EmbeddingCache
from mtl_lightning.train import train

RECORD = "+callbacks.recorder._target_=helpers.Recorder"


@pytest.mark.parametrize(
    ("experiment", "pace"),
    [
        ("only_transformer_frozen", "freezing.every_n_epochs=1"),
        ("gradual_unfreeze", "freezing.every_n_epochs=1"),
        # 7 steps per epoch: each 8-step stage sees every example of the classification task
        # twice, so the caches serve inside a stage (the frozen encoder, then the frozen prefix).
        ("gradual_unfreeze", "freezing.unfreeze_every_steps=8"),
    ],
)
def test_cached_and_fresh_training_agree(make_cfg, experiment, pace):
    common = (f"experiment={experiment}", pace, "trainer.max_epochs=3", RECORD)
    with_cache = train(make_cfg(*common, "model.frozen_cache=true", output="cached"))
    cached = Recorder.last
    without = train(make_cfg(*common, "model.frozen_cache=false", output="fresh"))
    fresh = Recorder.last
    for name, value in fresh.after.items():
        torch.testing.assert_close(cached.after[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for key in ("val/acc_mean", "test/acc_mean", "test/classification/f1"):
        assert with_cache[key] == pytest.approx(without[key], abs=1e-6)
    assert with_cache["freeze/cache_hits"] > 0  # the cache did serve, not just sit there
    assert "freeze/cache_hits" not in without
    if "steps" in pace:
        assert with_cache["freeze/prefix_cache_hits"] > 0


def test_entire_network_frozen_test_metrics_match_without_cache(make_cfg):
    cached = train(make_cfg("experiment=entire_network_frozen", output="cached"))
    fresh = train(make_cfg("experiment=entire_network_frozen", "model.frozen_cache=false"))
    assert cached["test/acc_mean"] == fresh["test/acc_mean"]


def test_cache_serves_only_complete_batches_and_clears():
    cache = EmbeddingCache()
    key = ("train", "a")
    cache.put(key, torch.tensor([5, 2]), torch.tensor([[5.0], [2.0]]))
    assert torch.equal(cache.get(key, torch.tensor([2, 5])), torch.tensor([[2.0], [5.0]]))
    assert cache.get(key, torch.tensor([2, 3])) is None  # 3 was never computed
    assert cache.get(("val", "a"), torch.tensor([2])) is None  # another split's index 2
    assert cache.get(key, torch.tensor([40])) is None
    cache.clear()
    assert cache.get(key, torch.tensor([2])) is None and len(cache) == 0


def test_loading_weights_empties_the_cache(make_cfg, tmp_path):
    from hydra.utils import instantiate

    from mtl_lightning.model.module import MultiTaskModule

    cfg = make_cfg()
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    module = MultiTaskModule(
        datamodule.label_names, {"name_or_path": cfg.model.encoder.name_or_path}
    )
    module.embedding_cache.put(("val", "sentiment"), torch.tensor([0]), torch.zeros(1, 32))
    module.load_state_dict(module.state_dict())
    assert len(module.embedding_cache) == 0


@pytest.mark.parametrize("encoder", ["bert", "distilbert"])
def test_prefix_cached_and_fresh_training_agree(make_cfg, encoder):
    """Top layer trainable, the rest frozen: training from the cached states of the frozen layers
    gives the weights and metrics of running them every step."""
    common = ("freezing.keep_frozen_layers=2", "trainer.max_epochs=3", RECORD)
    with_cache = train(make_cfg(*common, encoder=encoder, output="cached"))
    cached = Recorder.last
    without = train(make_cfg(*common, "model.frozen_cache=false", encoder=encoder, output="fresh"))
    fresh = Recorder.last
    assert cached.trainable[2] == fresh.trainable[2]
    frozen_layers = (".0.", ".1.")  # keep_frozen_layers=2 of 3
    assert not any(f in name for name in cached.trainable[2] for f in frozen_layers)
    for name, value in fresh.after.items():
        torch.testing.assert_close(cached.after[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for key in ("val/acc_mean", "test/acc_mean", "test/sentiment/f1"):
        assert with_cache[key] == pytest.approx(without[key], abs=1e-6)
    assert with_cache["freeze/prefix_cache_hits"] > 0  # epochs 2 and 3 ran from the cache
    assert with_cache["freeze/prefix_cache_mb"] > 0
    assert "freeze/prefix_cache_hits" not in without


def test_prefix_cache_over_budget_falls_back_with_a_logged_reason(make_cfg, caplog):
    common = ("freezing.keep_frozen_layers=2", "trainer.max_epochs=2", RECORD)
    with caplog.at_level("WARNING", logger="mtl_lightning.model.module"):
        refused = train(make_cfg(*common, "model.frozen_cache_max_gb=1e-9", output="refused"))
    weights = Recorder.last.after
    assert "model.frozen_cache_max_gb=1e-09 GB" in caplog.text
    assert "freeze/prefix_cache_hits" not in refused  # nothing kept, nothing served
    train(make_cfg(*common, "model.frozen_cache=false", output="fresh"))
    for name, value in Recorder.last.after.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("encoder", ["bert", "distilbert"])
@pytest.mark.parametrize("layer", [1, 2])
def test_forward_from_cached_states_matches_the_full_encoder(tiny_encoders, encoder, layer):
    """States captured in one batch, re-padded into a batch of another length, give the
    encoder's own output: padding never leaks into an entry."""
    from mtl_lightning.model.embedding_cache import PrefixCache
    from mtl_lightning.model.encoder import Encoder

    torch.manual_seed(0)
    model = Encoder(tiny_encoders[encoder], pooling="mean").eval()
    ids = torch.randint(1000, 2000, (3, 9))
    mask = torch.tensor([[1] * 9, [1] * 4 + [0] * 5, [1] * 6 + [0] * 3])
    cache = PrefixCache(max_bytes=2**20)
    with torch.no_grad(), model.capture_input(layer) as captured:
        expected = model(ids, mask)
    assert cache.put(("train", "a"), torch.tensor([7, 8, 9]), captured[0], mask)
    assert cache.get(("train", "a"), torch.tensor([8, 10]), mask[1:]) is None  # 10: never seen
    # Examples 8 and 9 alone: padded to 6 tokens instead of 9.
    states = cache.get(("train", "a"), torch.tensor([9, 8]), mask[[2, 1], :6])
    with torch.no_grad():
        served = model.forward_from(layer, states, ids[[2, 1], :6], mask[[2, 1], :6])
    torch.testing.assert_close(served, expected[[2, 1]], rtol=1e-5, atol=1e-6)
    assert len(model.model.get_input_embeddings().weight) == 30522  # embeddings put back
    assert cache.bytes == (9 + 4 + 6) * 32 * 4


def test_prefix_cache_refuses_what_exceeds_its_budget():
    from mtl_lightning.model.embedding_cache import PrefixCache

    cache = PrefixCache(max_bytes=100)
    mask = torch.ones(2, 3, dtype=torch.long)
    assert not cache.put(("train", "a"), torch.tensor([0, 1]), torch.zeros(2, 3, 8), mask)
    assert len(cache) == 0 and cache.bytes == 0


def test_prefix_cache_serves_train_and_val_never_test(tiny_encoders):
    from mtl_lightning.callbacks.freezing import FreezingSchedule
    from mtl_lightning.model.module import MultiTaskModule

    torch.manual_seed(0)
    module = MultiTaskModule({"a": ["x", "y"]}, {"name_or_path": tiny_encoders["bert"]})
    FreezingSchedule(keep_frozen_layers=2).apply(module, epoch=0)
    module.eval()  # same values each call: dropout off in the trainable layer too
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    batch = {"task": "a", "idx": torch.tensor([3, 4]), "attention_mask": mask}
    batch["input_ids"] = torch.randint(1000, 2000, (2, 4)) * mask
    fresh = module.encoder(batch["input_ids"], mask)
    for stage in ("train", "train", "val", "test"):
        torch.testing.assert_close(module.sentence_embedding(batch, stage), fresh)
    cache = module.prefix_cache
    assert cache.layer == 2 and cache.hits == 2  # the second train call
    assert set(cache.tables) == {("train", "a"), ("val", "a")}
    FreezingSchedule(keep_frozen_layers=1).apply(module, epoch=0)  # the boundary moves down
    module.eval()
    torch.testing.assert_close(module.sentence_embedding(batch, "train"), fresh)
    assert cache.layer == 1 and set(cache.tables) == {("train", "a")}


@pytest.mark.parametrize(
    ("config", "extra", "plain_chain"),
    [
        ("BertConfig", {}, True),
        ("DebertaV2Config", {"relative_attention": True}, True),  # no conv: a plain chain
        ("DebertaV2Config", {"conv_kernel_size": 3}, False),  # a conv after layer 0
        ("ElectraConfig", {"embedding_size": 16}, False),  # embeddings projected before layer 0
    ],
)
def test_forward_from_is_used_only_where_it_reproduces_the_encoder(
    tmp_path, config, extra, plain_chain
):
    import transformers
    from transformers import AutoModel

    from mtl_lightning.model.encoder import Encoder

    settings = dict(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2)
    settings |= {"intermediate_size": 64, "max_position_embeddings": 64, **extra}
    AutoModel.from_config(getattr(transformers, config)(**settings)).save_pretrained(tmp_path)
    encoder = Encoder(str(tmp_path)).train()
    ids = torch.randint(5, 100, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    assert encoder.forward_from_matches(2, ids, mask) is plain_chain
    assert all(m.training for m in encoder.modules())  # modes put back
