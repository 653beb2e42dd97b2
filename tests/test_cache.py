"""The frozen-encoder cache is exact: same results with and without it, never a stale entry."""

from __future__ import annotations

import pytest
import torch
from helpers import Recorder, train_cached_and_fresh
from lightning import Callback
from transformers import AutoModel, AutoTokenizer

from mtl_lightning.model.embedding_cache import EmbeddingCache
from mtl_lightning.model.encoder import packaged_minilm_path
from mtl_lightning.train import train

RECORD = "+callbacks.recorder._target_=helpers.Recorder"
TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=2)
TINY |= {"intermediate_size": 64, "max_position_embeddings": 128}
RELATIVE = {
    "relative_attention": True,
    "position_biased_input": False,
    "pos_att_type": ["p2c", "c2p"],
}
# Encoders with parameters outside their embeddings and layers that every layer uses.
SHARED_POSITIONS = {
    "mpnet": ("MPNetConfig", {"pad_token_id": 0}),
    "deberta_v2": ("DebertaV2Config", RELATIVE),
    "deberta_v2_normed": ("DebertaV2Config", RELATIVE | {"norm_rel_ebd": "layer_norm"}),
}


@pytest.fixture(scope="module")
def shared_position_encoders(tmp_path_factory) -> dict[str, str]:
    """Random 3-layer MPNet and DeBERTa-v2 folders with the packaged (uncased BERT) tokenizer."""
    import transformers

    tokenizer = AutoTokenizer.from_pretrained(str(packaged_minilm_path()))
    folders = {}
    for name, (config, extra) in SHARED_POSITIONS.items():
        folder = tmp_path_factory.mktemp(f"tiny_{name}")
        AutoModel.from_config(getattr(transformers, config)(**TINY, **extra)).save_pretrained(
            folder
        )
        tokenizer.save_pretrained(folder)
        folders[name] = str(folder)
    return folders


@pytest.mark.slow
@pytest.mark.parametrize(
    ("experiment", "pace"),
    [
        ("only_transformer_frozen", "freezing.every_n_epochs=1"),
        ("gradual_unfreeze", "freezing.every_n_epochs=1"),
        # 7 steps per epoch: each 8-step stage sees every example of the classification task
        # twice, so the caches serve inside a stage (the frozen encoder, then the frozen prefix).
        ("gradual_unfreeze", "freezing.unfreeze_every_steps=8"),
        # Plateaus at steps 4 and 13 (test_gradual.Probe) unfreeze the top two groups; the
        # pace is never reached. The second stage is 9 steps long.
        (
            "gradual_unfreeze",
            "freezing.unfreeze_every_steps=100 freezing.plateau_patience=1 "
            "freezing.plateau_monitor=val/probe +callbacks.probe._target_=test_gradual.Probe "
            "+trainer.val_check_interval=2",
        ),
    ],
)
def test_cached_and_fresh_training_agree(make_cfg, experiment, pace):
    common = (f"experiment={experiment}", *pace.split(), "trainer.max_epochs=3", RECORD)
    with_cache, without, _ = train_cached_and_fresh(make_cfg, *common)
    for key in ("val/acc_mean", "test/acc_mean", "test/classification/f1"):
        assert with_cache[key] == pytest.approx(without[key], abs=1e-6)
    # The caches did serve, not just sit there (the plateau case's 4 frozen steps repeat no
    # example: only the prefix cache serves there).
    if "plateau" not in pace:
        assert with_cache["freeze/cache_hits"] > 0
    assert "freeze/cache_hits" not in without
    if "steps" in pace:
        assert with_cache["freeze/prefix_cache_hits"] > 0


@pytest.mark.slow
def test_a_frozen_encoder_evaluated_again_is_served_and_other_data_is_not(make_cfg):
    """entire_network_frozen evaluates: a second test of the same data comes from the cache and
    matches the first; a test on other data (another split: other sentences at the same indices)
    gets that data's embeddings, as without the cache, not the first data's."""
    from lightning import Trainer

    from mtl_lightning.scenarios.entire_network_frozen import EntireNetworkFrozen
    from mtl_lightning.scenarios.schedule import FreezingSchedule
    from mtl_lightning.train import build_data, build_module

    cfg = make_cfg("experiment=entire_network_frozen")
    first = build_data(cfg.data)
    other = build_data(make_cfg("experiment=entire_network_frozen", "seed=7").data)
    assert first.split_loaders("test")["sentiment"].dataset.texts != (
        other.split_loaders("test")["sentiment"].dataset.texts
    )
    module = build_module(cfg.model, first.label_names)
    FreezingSchedule(EntireNetworkFrozen()).apply(module, 0)
    trainer = Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )

    def test(datamodule) -> dict[str, float]:
        results = trainer.test(module, datamodule=datamodule, verbose=False)
        return {k: v for per_loader in results for k, v in per_loader.items()}  # one per task

    once, twice = test(first), test(first)
    served = module.frozen_cache.embeddings.hits
    assert served == sum(len(loader.dataset) for loader in first.split_loaders("test").values())
    assert twice == pytest.approx(once, abs=1e-6)
    on_other = test(other)
    assert module.frozen_cache.embeddings.hits == served  # nothing of the first data served
    module.frozen_cache = None
    assert on_other == pytest.approx(test(other), abs=1e-6)
    assert on_other["test/sentiment/loss"] != pytest.approx(once["test/sentiment/loss"])


def test_cache_serves_only_complete_batches_of_the_same_tokens_and_clears():
    cache = EmbeddingCache()
    key = ("train", "a")
    ids, mask = torch.tensor([[7, 8, 0], [9, 0, 0]]), torch.tensor([[1, 1, 0], [1, 0, 0]])
    cache.put(key, torch.tensor([5, 2]), torch.tensor([[5.0], [2.0]]), ids, mask)
    served = cache.get(key, torch.tensor([2, 5]), ids[[1, 0], :2], mask[[1, 0], :2])
    assert torch.equal(served, torch.tensor([[2.0], [5.0]]))  # padded to another length
    assert cache.get(key, torch.tensor([2, 3]), ids, mask) is None  # 3 was never computed
    assert cache.get(("val", "a"), torch.tensor([2]), ids[1:], mask[1:]) is None  # another split
    assert cache.get(key, torch.tensor([40]), ids[1:], mask[1:]) is None
    assert cache.get(key, torch.tensor([2]), ids[1:] + 1, mask[1:]) is None  # other tokens at 2
    assert cache.get(key, torch.tensor([5]), ids[:1].flip(1), mask[:1]) is None  # reordered
    cache.clear()
    assert cache.get(key, torch.tensor([2]), ids[1:], mask[1:]) is None and len(cache) == 0


@pytest.mark.slow
def test_loading_weights_empties_the_cache(make_cfg, tmp_path):
    from hydra.utils import instantiate

    from mtl_lightning.model.module import MultiTaskModule

    cfg = make_cfg()
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    module = MultiTaskModule(
        datamodule.label_names, {"name_or_path": cfg.model.encoder.name_or_path}
    )
    ids = torch.ones(1, 3, dtype=torch.long)
    module.frozen_cache.embeddings.put(
        ("val", "sentiment"), torch.tensor([0]), torch.zeros(1, 32), ids, ids
    )
    module.load_state_dict(module.state_dict())
    assert len(module.frozen_cache.embeddings) == 0


@pytest.mark.slow
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


@pytest.mark.slow
def test_prefix_cache_over_budget_falls_back_with_a_logged_reason(make_cfg, caplog):
    common = ("freezing.keep_frozen_layers=2", "trainer.max_epochs=2", RECORD)
    with caplog.at_level("WARNING", logger="mtl_lightning.model.embedding_cache"):
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
    assert cache.put(("train", "a"), torch.tensor([7, 8, 9]), captured[0], ids, mask)
    assert cache.get(("train", "a"), torch.tensor([8, 10]), ids[1:], mask[1:]) is None  # 10: new
    # Examples 8 and 9 alone: padded to 6 tokens instead of 9.
    states = cache.get(("train", "a"), torch.tensor([9, 8]), ids[[2, 1], :6], mask[[2, 1], :6])
    with torch.no_grad():
        served = model.forward_from(layer, states, ids[[2, 1], :6], mask[[2, 1], :6])
    torch.testing.assert_close(served, expected[[2, 1]], rtol=1e-5, atol=1e-6)
    assert len(model.model.get_input_embeddings().weight) == 30522  # embeddings put back
    assert cache.bytes == (9 + 4 + 6) * 32 * 4


def test_prefix_cache_refuses_what_exceeds_its_budget():
    from mtl_lightning.model.embedding_cache import PrefixCache

    cache = PrefixCache(max_bytes=100)
    mask = torch.ones(2, 3, dtype=torch.long)
    ids = torch.ones(2, 3, dtype=torch.long)
    assert not cache.put(("train", "a"), torch.tensor([0, 1]), torch.zeros(2, 3, 8), ids, mask)
    assert len(cache) == 0 and cache.bytes == 0


def test_prefix_cache_refuses_states_that_carry_a_gradient(tiny_encoders, caplog):
    """A trainable parameter that feeds the frozen layers, unknown to the layer groups (as MPNet's
    relative attention bias was, in the top group): its states would go stale, so the cache
    refuses them and the run computes every step."""
    from mtl_lightning.model.embedding_cache import PrefixCache
    from mtl_lightning.model.module import MultiTaskModule
    from mtl_lightning.scenarios.full_finetune import FullFinetune
    from mtl_lightning.scenarios.schedule import FreezingSchedule

    torch.manual_seed(0)
    module = MultiTaskModule({"a": ["x", "y"]}, {"name_or_path": tiny_encoders["bert"]})
    FreezingSchedule(FullFinetune(keep_frozen_layers=2)).apply(module, epoch=0)
    module.eval()
    positions = module.encoder.model.embeddings.position_embeddings.weight
    embeddings = module.encoder_groups()[0]
    embeddings.params = [p for p in embeddings.params if p is not positions]
    positions.requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    batch = {"task": "a", "idx": torch.tensor([3, 4]), "attention_mask": mask}
    batch["input_ids"] = torch.randint(1000, 2000, (2, 4)) * mask
    with caplog.at_level("WARNING", logger="mtl_lightning.model.embedding_cache"):
        served = module.sentence_embedding(batch, "train")
    torch.testing.assert_close(served, module.encoder(batch["input_ids"], mask))
    assert "depend on a trainable parameter" in caplog.text
    cache = module.frozen_cache
    assert cache.prefix_refused and len(cache.prefix) == 0
    with pytest.raises(ValueError, match="trainable"):
        PrefixCache(2**20).put(
            ("train", "a"), batch["idx"], torch.ones(2, 4, 8, requires_grad=True), mask, mask
        )


def test_prefix_cache_serves_train_and_val_never_test(tiny_encoders):
    from mtl_lightning.model.module import MultiTaskModule
    from mtl_lightning.scenarios.full_finetune import FullFinetune
    from mtl_lightning.scenarios.schedule import FreezingSchedule

    torch.manual_seed(0)
    module = MultiTaskModule({"a": ["x", "y"]}, {"name_or_path": tiny_encoders["bert"]})
    FreezingSchedule(FullFinetune(keep_frozen_layers=2)).apply(module, epoch=0)
    module.eval()  # same values each call: dropout off in the trainable layer too
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    batch = {"task": "a", "idx": torch.tensor([3, 4]), "attention_mask": mask}
    batch["input_ids"] = torch.randint(1000, 2000, (2, 4)) * mask
    fresh = module.encoder(batch["input_ids"], mask)
    for stage in ("train", "train", "val", "test"):
        torch.testing.assert_close(module.sentence_embedding(batch, stage), fresh)
    cache = module.frozen_cache.prefix
    assert cache.layer == 2 and cache.hits == 2  # the second train call
    assert set(cache.tables) == {("train", "a"), ("val", "a")}
    FreezingSchedule(FullFinetune(keep_frozen_layers=1)).apply(
        module, epoch=0
    )  # the boundary moves down
    module.eval()
    torch.testing.assert_close(module.sentence_embedding(batch, "train"), fresh)
    assert cache.layer == 1 and set(cache.tables) == {("train", "a")}


@pytest.mark.parametrize(
    ("config", "extra", "plain_chain"),
    [
        ("BertConfig", {}, True),
        ("MPNetConfig", {"pad_token_id": 0}, True),
        ("DebertaV2Config", RELATIVE, True),  # no conv: a plain chain
        ("DebertaV2Config", RELATIVE | {"norm_rel_ebd": "layer_norm"}, True),
        ("DebertaV2Config", {"conv_kernel_size": 3}, False),  # a conv after layer 0
        ("ElectraConfig", {"embedding_size": 16}, False),  # embeddings projected before layer 0
    ],
)
def test_prefix_cache_serves_only_where_its_states_reproduce_the_encoder(
    tmp_path, config, extra, plain_chain
):
    """The one-time check goes through `put` and `get`, re-padded, as serving does. And what the
    cache keeps for layer 2 depends only on the groups below layer 2, so while those are frozen
    it cannot go stale: every parameter with a gradient from those states is in them."""
    import transformers

    from mtl_lightning.model.embedding_cache import prefix_serving_matches
    from mtl_lightning.model.encoder import Encoder, layer_groups

    settings = TINY | {"vocab_size": 100, "max_position_embeddings": 64, **extra}
    AutoModel.from_config(getattr(transformers, config)(**settings)).save_pretrained(tmp_path)
    encoder = Encoder(str(tmp_path)).train()
    ids = torch.randint(5, 100, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    assert prefix_serving_matches(encoder, 2, ids, mask) is plain_chain
    assert all(m.training for m in encoder.modules())  # modes put back
    with encoder.capture_input(2) as captured:
        encoder(ids, mask)
    captured[0][mask.bool()].sum().backward()
    below = {id(p) for group in layer_groups(encoder.model)[:3] for p in group.params}
    used = [n for n, p in encoder.named_parameters() if p.grad is not None and p.grad.any()]
    assert used and all(id(p) in below for n, p in encoder.named_parameters() if n in used)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", sorted(SHARED_POSITIONS))
def test_shared_position_parameters_stay_frozen_and_the_prefix_cache_exact(
    make_cfg, shared_position_encoders, encoder
):
    """keep_frozen_layers=2 of 3 for encoders whose position parameters feed every layer: they
    stay bit-identical with the frozen layers, and training from the cached states gives the
    weights and metrics of running the frozen layers every step."""
    path = f"model.encoder.name_or_path={shared_position_encoders[encoder]}"
    common = (path, "freezing.keep_frozen_layers=2", "trainer.max_epochs=3", RECORD)
    with_cache = train(make_cfg(*common, output="cached"))
    cached = Recorder.last
    without = train(make_cfg(*common, "model.frozen_cache=false", output="fresh"))
    fresh = Recorder.last
    for run in (cached, fresh):
        assert all(".layer.2." in n or n.startswith("heads.") for n in run.trainable[2])
        for name, before in run.before.items():
            if ".layer.2." not in name and not name.startswith("heads."):
                assert torch.equal(run.after[name], before), name
    for name, value in fresh.after.items():
        torch.testing.assert_close(cached.after[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for key in ("val/acc_mean", "test/acc_mean", "test/sentiment/f1"):
        assert with_cache[key] == pytest.approx(without[key], abs=1e-6)
    assert with_cache["freeze/prefix_cache_hits"] > 0


def test_the_one_time_check_fails_where_serving_would(tiny_encoders, monkeypatch):
    """The check runs what serving runs: a `get` that misplaces states in a batch padded to
    another length (here: shifted by one token) fails it, though the captured states are right."""
    from mtl_lightning.model.embedding_cache import PrefixCache, prefix_serving_matches
    from mtl_lightning.model.encoder import Encoder

    encoder = Encoder(tiny_encoders["bert"])
    ids = torch.randint(1000, 2000, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    assert prefix_serving_matches(encoder, 1, ids, mask)
    get = PrefixCache.get
    monkeypatch.setattr(PrefixCache, "get", lambda *args: get(*args).roll(1, dims=1))
    assert not prefix_serving_matches(encoder, 1, ids, mask)


# --- model.frozen_cache_dir: a frozen encoder's embeddings shared by the runs of a study ---


class SharedHits(Callback):
    """The sentences the shared store served in a run (read as testing ends)."""

    last: SharedHits | None = None

    def __init__(self) -> None:
        self.hits = 0
        SharedHits.last = self

    def on_test_end(self, trainer, pl_module) -> None:
        shared = pl_module.frozen_cache.shared if pl_module.frozen_cache is not None else None
        self.hits = shared.hits if shared is not None else 0


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[101, 7, 8, 102, 0], [101, 9, 102, 0, 0]])
    return ids, (ids != 0).long()


def test_shared_store_serves_the_same_tokens_to_another_run_and_only_for_the_same_weights(
    tiny_encoders, tmp_path
):
    from mtl_lightning.model.embedding_cache import SharedEmbeddings
    from mtl_lightning.model.encoder import Encoder

    encoder = Encoder(name_or_path=tiny_encoders["bert"]).eval()
    ids, mask = _batch()
    first = SharedEmbeddings(tmp_path)
    assert first.get(encoder, ids, mask) is None  # nothing stored yet
    with torch.no_grad():
        computed = encoder(ids, mask)
    first.put(ids, mask, computed)
    first.save()
    assert [p.name for p in tmp_path.iterdir() if p.name != ".lock"] == [first.path.name]
    # Another run: the same sentences in another order, padded to another length, are served.
    later = SharedEmbeddings(tmp_path)
    served = later.get(encoder, ids[[1, 0], :4], mask[[1, 0], :4])
    assert torch.equal(served, computed[[1, 0]]) and later.hits == 2
    assert later.get(encoder, ids[:, :3], mask[:, :3]) is None  # other tokens: cut sentences
    # Two runs add a sentence each after both read the file: the second save keeps the first's.
    other_run = SharedEmbeddings(tmp_path)
    assert other_run.get(encoder, ids[:1, :2], mask[:1, :2]) is None
    other_run.put(ids[:1, :2], mask[:1, :2], computed[:1])
    later.put(ids[1:, :2], mask[1:, :2], computed[1:])
    other_run.save()
    later.save()
    final = SharedEmbeddings(tmp_path)
    final.bind(encoder, "cpu")
    assert len(final.table) == 4
    # Under autocast the same weights compute in another precision: another file.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert final.get(encoder, ids, mask) is None
    assert final.get(encoder, ids, mask) is not None  # back to float32: the first file
    # Other weights have another file: nothing of the first is served.
    with torch.no_grad():
        next(encoder.parameters()).add_(1e-3)
    changed = SharedEmbeddings(tmp_path)
    assert changed.get(encoder, ids, mask) is None and changed.identity != final.identity


def test_a_damaged_store_is_logged_and_the_run_computes_its_own(tiny_encoders, tmp_path, caplog):
    from mtl_lightning.model.embedding_cache import SharedEmbeddings
    from mtl_lightning.model.encoder import Encoder

    encoder = Encoder(name_or_path=tiny_encoders["bert"]).eval()
    ids, mask = _batch()
    store = SharedEmbeddings(tmp_path)
    store.bind(encoder, "cpu")
    store.path.write_bytes(b"not a torch file")
    reader = SharedEmbeddings(tmp_path)
    assert reader.get(encoder, ids, mask) is None and reader.broken
    assert "model.frozen_cache_dir: cannot read" in caplog.text
    with torch.no_grad():
        reader.put(ids, mask, encoder(ids, mask))
    reader.save()  # nothing written over the file it could not read
    assert store.path.read_bytes() == b"not a torch file"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["only_transformer_frozen", "entire_network_frozen"])
def test_shared_embeddings_give_the_numbers_of_computing_them_per_run(
    make_cfg, tmp_path, experiment
):
    """A study's runs read a frozen encoder's embeddings that an earlier run (another seed, so
    other splits and batches) stored: every weight and metric is as when each run computes its
    own (`model.frozen_cache_dir` unset)."""
    shared = f"model.frozen_cache_dir={tmp_path / 'shared'}"
    common = (f"experiment={experiment}", RECORD, "+callbacks.hits._target_=test_cache.SharedHits")
    train(make_cfg(*common, "seed=1", shared, output="filler"))
    assert list((tmp_path / "shared").glob("embeddings_*.pt"))
    served = train(make_cfg(*common, "seed=2", shared, output="served"))
    served_weights, served_hits = Recorder.last.after, SharedHits.last.hits
    fresh = train(make_cfg(*common, "seed=2", output="fresh"))
    assert served_hits > 0 and SharedHits.last.hits == 0  # the store did serve
    for name, value in Recorder.last.after.items():
        torch.testing.assert_close(served_weights[name], value, rtol=1e-5, atol=1e-6)
    for key in ("test/acc_mean", "test/classification/f1", "test/sentiment/f1"):
        assert served[key] == pytest.approx(fresh[key], abs=1e-6)


def test_the_store_is_left_once_the_encoder_can_change(tiny_encoders, tmp_path):
    """Bound while the encoder is wholly frozen; unbound (its new entries saved) when a layer
    group starts training, as in gradual_unfreeze, and when weights load (`FrozenCache.clear`,
    which the module's load_state_dict calls)."""
    from mtl_lightning.model.embedding_cache import FrozenCache
    from mtl_lightning.model.encoder import Encoder

    encoder = Encoder(name_or_path=tiny_encoders["bert"]).eval().requires_grad_(False)
    ids, mask = _batch()
    batch = {"input_ids": ids, "attention_mask": mask, "idx": torch.arange(2), "task": "a"}
    groups = 4  # the embeddings and 3 layers
    for leave in ("unfreeze", "load"):
        cache = FrozenCache(max_gb=1.0, shared_dir=tmp_path / leave)
        cache.sentence_embedding(encoder, groups, groups, batch, "train")
        assert cache.shared.identity is not None and cache.shared.new
        if leave == "unfreeze":  # the top layer trains from now on
            cache.sentence_embedding(encoder, groups - 1, groups, batch, "train")
        else:
            cache.clear()
        assert cache.shared.identity is None and not cache.shared.table
        assert len(list((tmp_path / leave).glob("embeddings_*.pt"))) == 1  # saved on leaving
