"""Balancing tasks: task schedules (proportional, temperature), loss weighting, padding."""

from __future__ import annotations

import bisect
import csv
import math
import random
from collections import Counter

import pytest
import torch
from helpers import Recorder
from hydra.utils import instantiate

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.data.datamodule import MultiTaskDataModule
from mtl_lightning.data.sampling.sampler import (
    EpochSeed,
    LengthBucketBatchSampler,
    RoundRobinBatchSampler,
    TaskScheduleBatchSampler,
)
from mtl_lightning.data.sources.base import TinySource
from mtl_lightning.model.module import MultiTaskModule
from mtl_lightning.train import train

RECORDER = "+callbacks.recorder._target_=helpers.Recorder"
SIZES = [100, 400, 1600]
TASKS = {"classification": ["a", "b", "c"], "sentiment": ["negative", "positive"]}


def _schedule(
    weights, clock: EpochSeed, num_replicas: int = 1, rank: int = 0
) -> TaskScheduleBatchSampler:
    """Three tasks of SIZES examples with random lengths, concatenated, batches of 10."""
    samplers, offset = [], 0
    for size in SIZES:
        lengths = [random.Random(f"{size}:{i}").randint(3, 40) for i in range(size)]
        samplers.append(
            LengthBucketBatchSampler(
                lengths, 10, clock, offset=offset, num_replicas=num_replicas, rank=rank
            )
        )
        offset += size
    return TaskScheduleBatchSampler(samplers, weights)


def _owners(batches: list[list[int]]) -> list[int]:
    """The task (position in SIZES) of each batch: where its first index falls."""
    starts = [sum(SIZES[:t]) for t in range(len(SIZES))]
    owners = [bisect.bisect_right(starts, batch[0]) - 1 for batch in batches]
    for batch, owner in zip(batches, owners, strict=True):
        assert starts[owner] <= min(batch) and max(batch) < starts[owner] + SIZES[owner]
    return owners


@pytest.mark.parametrize("exponent", [1.0, 0.5], ids=["proportional", "temperature_2"])
def test_schedule_shares_follow_task_sizes(exponent):
    weights = [size**exponent for size in SIZES]
    sampler = _schedule(weights, EpochSeed(seed=7))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 * 160  # tasks x the largest task's batches
    counts = Counter(_owners(batches))
    for task, weight in enumerate(weights):
        assert counts[task] / len(batches) == pytest.approx(weight / sum(weights), abs=0.01)
    # A task's first pass covers its examples once; a task that runs out starts a fresh pass.
    first_task = [b for b, owner in zip(batches, _owners(batches), strict=True) if owner == 0]
    assert sorted(i for b in first_task[:10] for i in b) == list(range(100))
    assert first_task[:10] != first_task[10:20]


def test_schedule_is_set_by_seed_and_epoch_only():
    weights = [1.0, 2.0, 4.0]
    first = list(_schedule(weights, EpochSeed(seed=7)))
    assert list(_schedule(weights, EpochSeed(seed=7))) == first
    assert list(_schedule(weights, EpochSeed(seed=7, epoch=1))) != first
    assert _owners(list(_schedule(weights, EpochSeed(seed=8)))) != _owners(first)


def test_ddp_ranks_pick_the_same_task_at_every_step():
    ranks = [list(_schedule([1.0, 2.0, 4.0], EpochSeed(7), 2, rank)) for rank in (0, 1)]
    assert _owners(ranks[0]) == _owners(ranks[1])
    assert len(ranks[0]) == len(ranks[1])
    first_batches = [{i for b in batches[:20] for i in b} for batches in ranks]
    assert first_batches[0] != first_batches[1]  # each rank takes its own share of the batches


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"sampling": "random"}, "data.sampling=random is unknown"),
        ({"sampling": "temperature", "temperature": 0}, "data.temperature=0 must be above 0"),
    ],
)
def test_bad_sampling_settings_name_the_key(options, match):
    with pytest.raises(ConfigError, match=match):
        MultiTaskDataModule({"a": TinySource("classification")}, "unused", **options)


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["proportional", "temperature"])
def test_train_with_a_task_schedule(make_cfg, tmp_path, sampling):
    cfg = make_cfg(RECORDER, f"data.sampling={sampling}", "trainer.max_epochs=1")
    metrics = train(cfg)
    assert 0.0 <= metrics["val/acc_mean"] <= 1.0
    steps = Recorder.last.batches
    assert all(len(step) == 1 and next(iter(step.values()))["task"] in step for step in steps)

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    sizes = {task: len(splits["train"]) for task, splits in datamodule.datasets.items()}
    batches = {task: math.ceil(size / cfg.data.batch_size) for task, size in sizes.items()}
    assert len(steps) == 2 * max(batches.values())
    exponent = 1.0 if sampling == "proportional" else 1.0 / cfg.data.temperature
    weights = {task: size**exponent for task, size in sizes.items()}
    counts = Counter(next(iter(step)) for step in steps)
    for task, weight in weights.items():
        assert abs(counts[task] - len(steps) * weight / sum(weights.values())) <= 1

    # train/pad_fraction is the epoch's padded tokens over all its tokens.
    pad = sum(b["pad_tokens"] for step in steps for b in step.values())
    real = sum(b["real_tokens"] for step in steps for b in step.values())
    assert pad == sum(
        b["attention_mask"].numel() - b["attention_mask"].sum().item()
        for step in steps
        for b in step.values()
    )
    with open(tmp_path / "run" / "metrics.csv") as f:
        logged = [
            float(r["train/pad_fraction"]) for r in csv.DictReader(f) if r.get("train/pad_fraction")
        ]
    assert logged == [pytest.approx(pad / (pad + real), rel=1e-5)]


@pytest.fixture
def encoder(tiny_encoders) -> dict:
    return {"name_or_path": tiny_encoders["bert"]}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_static_weights_scale_the_loss_exactly(encoder):
    module = MultiTaskModule(TASKS, encoder, loss_weights={"classification": 0.25, "sentiment": 2})
    losses = {"classification": torch.tensor(1.5), "sentiment": torch.tensor(0.5)}
    assert module.weighting.combine(losses)[0].item() == 0.25 * 1.5 + 2 * 0.5
    assert list(module.weighting.parameters()) == []
    assert "loss_weights" not in {g["name"] for g in module.param_groups()}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_uncertainty_weighting_learns_log_variances(encoder):
    module = MultiTaskModule(TASKS, encoder, loss_weighting="uncertainty", head_lr=1e-3)
    with torch.no_grad():
        module.weighting.log_vars["classification"].fill_(math.log(2.0))  # weight exp(-s) = 0.5
    loss = torch.tensor(3.0, requires_grad=True)
    total, _ = module.weighting.combine({"classification": loss})  # an alternating step: one task
    assert total.item() == pytest.approx(0.5 * 3.0 + math.log(2.0))
    total.backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L; d/dL = exp(-s). The other task is not in the step.
    assert module.weighting.log_vars["classification"].grad.item() == pytest.approx(1 - 0.5 * 3.0)
    assert loss.grad.item() == pytest.approx(0.5)
    assert module.weighting.log_vars["sentiment"].grad is None
    groups = {g["name"]: g for g in module.param_groups()}
    assert groups["loss_weights"]["params"] == list(module.weighting.log_vars.values())
    assert groups["loss_weights"]["lr"] == 1e-3 and groups["loss_weights"]["weight_decay"] == 0
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in module.parameters())


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"loss_weighting": "gradnorm"}, "model.loss_weighting=gradnorm is unknown"),
        (
            {"loss_weighting": "uncertainty", "loss_weights": {"sentiment": 2}},
            "model.loss_weights=null or model.loss_weighting=static",
        ),
    ],
)
def test_bad_loss_weighting_names_the_key(encoder, options, match):
    with pytest.raises(ConfigError, match=match):
        MultiTaskModule(TASKS, encoder, **options)


@pytest.mark.slow
@pytest.mark.parametrize("spelling", ["weighting=uncertainty", "model.loss_weighting=uncertainty"])
def test_train_with_uncertainty_weighting(make_cfg, tmp_path, spelling):
    train(make_cfg(RECORDER, spelling, "trainer.max_epochs=1"))
    recorder = Recorder.last
    for task in TASKS:
        name = f"weighting.log_vars.{task}"
        assert recorder.before[name].item() == 0.0  # weight 1 at the start, as static
        assert recorder.after[name].item() != 0.0  # and learned
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for task in TASKS:
        weights = [
            float(r[f"train/weight/{task}_step"])
            for r in rows
            if r.get(f"train/weight/{task}_step")
        ]
        assert len(weights) == len(recorder.batches) and weights[0] == 1.0 and weights[-1] != 1.0
        assert any(r.get(f"train/weight/{task}_epoch") for r in rows)


@pytest.mark.parametrize("replicas", [3, 5])
def test_tiny_data_on_more_ranks_than_batches(replicas):
    """2 batches of one task, 1 of the other, on more ranks than batches: every rank still
    steps equally often, on the same task at each step, each taking real batches."""
    sizes = [15, 4]  # batches of 8: 2 and 1

    def rank_batches(rank: int) -> list[list[int]]:
        clock, samplers = EpochSeed(3), []
        for stream, (offset, size) in enumerate(zip([0, 15], sizes, strict=True)):
            lengths = [random.Random(f"{size}:{i}").randint(3, 40) for i in range(size)]
            samplers.append(
                LengthBucketBatchSampler(
                    lengths,
                    8,
                    clock,
                    offset=offset,
                    num_replicas=replicas,
                    rank=rank,
                    stream=str(stream),
                )  # fmt: skip
            )
        assert [len(s) for s in samplers] == [1, 1]
        return list(RoundRobinBatchSampler(samplers))

    ranks = [rank_batches(rank) for rank in range(replicas)]
    assert all(len(batches) == 2 for batches in ranks)
    for batches in ranks:
        assert [batch[0] >= 15 for batch in batches] == [False, True]  # the same task per step
    # The ranks share both batches of the first task between them, repeated from the start.
    first_task = {tuple(sorted(batches[0])) for batches in ranks}
    assert len(first_task) == 2 and sorted(i for b in first_task for i in b) == list(range(15))


def _train_batches(cfg) -> dict[str, int]:
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    size = cfg.data.batch_size
    return {task: math.ceil(len(s["train"]) / size) for task, s in datamodule.datasets.items()}


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["joint", "alternating", "temperature"])
def test_a_frozen_heads_task_leaves_the_train_loader(make_cfg, sampling):
    """only_head_frozen: after warm-up the frozen task has no steps and no batches, the epochs
    are as long as the other task alone makes them, and the LR schedule ends at the last step."""
    cfg = make_cfg(
        RECORDER, "experiment=only_head_frozen", "freezing.head=classification",
        "freezing.head_warmup_epochs=1", f"data.sampling={sampling}", "trainer.max_epochs=3",
    )  # fmt: skip
    train(cfg)
    recorder = Recorder.last
    batches = _train_batches(cfg)  # classification has the most batches
    assert batches["classification"] > batches["sentiment"]
    joint = sampling == "joint"
    first = max(batches.values()) if joint else 2 * max(batches.values())
    assert recorder.epoch_steps == {0: first, 1: batches["sentiment"], 2: batches["sentiment"]}
    assert all(len(step) == (2 if joint else 1) for step in recorder.batches[:first])
    assert all(list(step) == ["sentiment"] for step in recorder.batches[first:])
    # The linear schedule reaches 0 exactly after the last step run, not before nor after.
    (scheduler,) = recorder.schedulers
    steps = len(recorder.batches)
    assert scheduler.last_epoch == steps
    assert scheduler.lr_lambdas[0](steps - 1) > 0 and scheduler.lr_lambdas[0](steps) == 0


def test_no_task_left_to_train_names_the_keys(make_cfg):
    datamodule = instantiate(make_cfg().data)
    datamodule.setup("fit")
    datamodule.train_tasks = lambda epoch: set() if epoch else {"sentiment"}
    first = datamodule.train_dataloader()  # joint: a CombinedLoader of the trained tasks
    assert list(first.iterables) == ["sentiment"]
    assert len(first.iterables["sentiment"]) == datamodule.train_batches(0)
    datamodule.start_epoch = 1
    with pytest.raises(ConfigError, match="No task trains in epoch 1.*another experiment"):
        datamodule.train_dataloader()


def test_a_task_without_batches_is_an_error_not_a_silent_stop():
    clock = EpochSeed(3)
    samplers = [LengthBucketBatchSampler([], 8, clock), LengthBucketBatchSampler([5] * 4, 8, clock)]
    with pytest.raises(ValueError, match="task 0 of the schedule has no batches"):
        list(RoundRobinBatchSampler(samplers))
