"""The frozen-encoder cache is exact: same results with and without it, never a stale entry."""

from __future__ import annotations

import pytest
import torch
from helpers import Recorder

from mtl_lightning.model.embedding_cache import EmbeddingCache
from mtl_lightning.train import train

RECORD = "+callbacks.recorder._target_=helpers.Recorder"


@pytest.mark.parametrize("experiment", ["only_transformer_frozen", "gradual_unfreeze"])
def test_cached_and_fresh_training_agree(make_cfg, experiment):
    common = (f"experiment={experiment}", "trainer.max_epochs=3", RECORD)
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
