"""Gradual unfreezing step by step: which groups train, at which learning rate; resume."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from lightning import Callback

from mtl_lightning.scenarios.build import build_scenario
from mtl_lightning.scenarios.gradual_unfreeze import GradualUnfreeze
from mtl_lightning.scenarios.schedule import FreezingSchedule
from mtl_lightning.train import train

GROUPS_TOP_DOWN = ["layer_2", "layer_1", "layer_0", "embeddings"]  # the tiny 3-layer BERT


class StepRecorder(Callback):
    """Before every training step (after the schedule ran): trainable groups, modes, LRs."""

    last: StepRecorder | None = None

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.after: dict[str, torch.Tensor] = {}
        StepRecorder.last = self

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        optimizer = trainer.optimizers[0]
        trainable = {
            g["name"] for g in optimizer.param_groups if any(p.requires_grad for p in g["params"])
        }
        groups = {g.name: g for g in pl_module.encoder_groups()}
        self.steps.append(
            {
                "step": trainer.global_step,
                "trainable": {n for n in trainable if "/" not in n},
                "train_mode": {
                    name: all(m.training for m in group.modules) for name, group in groups.items()
                },
                "lr": {g["name"]: g["lr"] for g in optimizer.param_groups},
            }
        )

    def on_fit_end(self, trainer, pl_module) -> None:
        self.after = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


RECORD = "+callbacks.steps_seen._target_=test_gradual.StepRecorder"


@pytest.mark.slow
def test_the_schedule_step_by_step(make_cfg):
    # Tiny data: 7 joint steps per epoch, 3 epochs = 21 steps; a stage is 3 steps.
    train(
        make_cfg(
            "experiment=gradual_unfreeze", "freezing.unfreeze_every_steps=3", RECORD,
            "trainer.max_epochs=3", "model.warmup_ratio=0.2", "model.lr=1e-4",
            "model.head_lr=1e-3", "model.layerwise_lr_decay=2.6",  # not the experiment's tuned ones
        )
    )  # fmt: skip
    steps = StepRecorder.last.steps
    assert [s["step"] for s in steps] == list(range(21))
    total, warmup, lr, head_lr = 21, 4, 1e-4, 1e-3  # warm-up: int(0.2 * 21)
    for seen in steps:
        step = seen["step"]
        unfrozen = GROUPS_TOP_DOWN[: min(4, step // 3)]
        assert seen["trainable"] == {"heads", *unfrozen}, step
        for name in GROUPS_TOP_DOWN:
            assert seen["train_mode"][name] == (name in unfrozen), (step, name)
        decay = (total - step) / (total - warmup)
        assert seen["lr"]["heads"] == pytest.approx(head_lr * min(step / warmup, decay))
        for depth, name in enumerate(GROUPS_TOP_DOWN):
            start = 3 * (depth + 1)  # each group warms up from the step it unfreezes
            expected = lr / 2.6**depth * max(0.0, min((step - start) / warmup, decay))
            assert seen["lr"][name] == pytest.approx(expected, abs=1e-12), (step, name)
            assert seen["lr"][name + "/no_decay"] == seen["lr"][name]
            if step == start:
                assert name in seen["trainable"] and seen["lr"][name] == 0.0


@pytest.mark.slow
def test_a_fraction_of_an_epoch_sets_the_pace_in_steps(make_cfg):
    train(make_cfg("experiment=gradual_unfreeze", "freezing.every_n_epochs=0.5", RECORD))
    steps = StepRecorder.last.steps
    # 7 steps per epoch: a stage is round(3.5) = 4 steps, changing inside epochs.
    for seen in steps:
        assert seen["trainable"] - {"heads"} == set(GROUPS_TOP_DOWN[: seen["step"] // 4])


@pytest.mark.slow
@pytest.mark.parametrize("limit", ["trainer.max_epochs=2", "trainer.max_epochs=-1"])
def test_a_fraction_of_an_epoch_paces_unfreezing_and_warmup_alike(make_cfg, limit):
    # max_epochs=-1 + max_steps: Lightning has no train loader yet when the LR schedule is
    # built; the stage length still comes from the data, so each group's LR warms up from
    # the step it unfreezes (its LR is 0 exactly there).
    train(
        make_cfg(
            "experiment=gradual_unfreeze", "freezing.every_n_epochs=0.5", RECORD, limit,
            "trainer.max_steps=14", "model.warmup_ratio=0.2",
        )
    )  # fmt: skip
    steps = StepRecorder.last.steps
    assert len(steps) == 14
    for depth, name in enumerate(GROUPS_TOP_DOWN[:3]):
        start = 4 * (depth + 1)  # round(0.5 * 7) = 4 steps per stage
        assert name not in steps[start - 1]["trainable"]
        assert name in steps[start]["trainable"] and steps[start]["lr"][name] == 0.0
        assert steps[start + 1]["lr"][name] > 0.0


def test_the_experiment_reaches_the_whole_encoder_with_discriminative_rates():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=gradual_unfreeze"])
    assert cfg.model.layerwise_lr_decay > 1  # each lower group slower than the one above it
    schedule = build_scenario(cfg.freezing)
    assert isinstance(schedule, GradualUnfreeze)
    schedule.stage_steps = 100  # steps per stage; an epoch is 100 / every_n_epochs steps
    steps_per_epoch = 100 / cfg.freezing.every_n_epochs
    last_step = cfg.trainer.max_epochs * steps_per_epoch - 1
    groups = 7  # MiniLM: embeddings + 6 layers
    assert schedule.plan(0, ["a"], groups, 0).encoder_groups == 0  # heads only first
    assert schedule.plan(0, ["a"], groups, int(last_step)).encoder_groups == groups
    assert schedule.plan(0, ["a"], groups, int(0.75 * last_step)).encoder_groups == groups


def test_unfreeze_every_steps_must_be_positive():
    from mtl_lightning.core.errors import ConfigError

    with pytest.raises(ConfigError, match="freezing.unfreeze_every_steps"):
        GradualUnfreeze(unfreeze_every_steps=0)


def straight_then_resumed(make_cfg, tmp_path, common, every: int, at: int, steps: int):
    """A run saving every `every` steps, and one resumed from its step `at`: each step from
    `at` to `steps` and the final weights are the same in both."""
    saved = tmp_path / "steps"
    every_n_steps = (
        "+callbacks.steps._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.steps.dirpath={saved}",
        f"+callbacks.steps.every_n_train_steps={every}",
        "+callbacks.steps.save_top_k=-1",
    )
    train(make_cfg(*common, *every_n_steps, output="straight"))
    straight = StepRecorder.last
    (ckpt,) = saved.glob(f"*step={at}.ckpt")
    train(make_cfg(*common, f"ckpt_path='{ckpt}'", output="resumed"))
    resumed = StepRecorder.last
    assert [s["step"] for s in resumed.steps] == list(range(at, steps))
    for mine, theirs in zip(resumed.steps, straight.steps[at:], strict=True):
        assert mine == theirs
    for name, value in straight.after.items():
        torch.testing.assert_close(resumed.after[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_resume_in_the_middle_of_a_stage_is_exact(make_cfg, tmp_path):
    common = ("experiment=gradual_unfreeze", "freezing.unfreeze_every_steps=4", RECORD)
    # Step 10: the third stage (steps 8-11, layer 1 unfrozen at 8, still warming up), epoch 1.
    straight_then_resumed(make_cfg, tmp_path, common, every=5, at=10, steps=14)


class Probe(Callback):
    """Logs `val/probe` at every validation: the step it ran at, except where `FLAT` says
    otherwise (a plateau). A function of the step, so a resumed run logs what a straight one
    does."""

    FLAT = {4: 2.0, 13: 11.0}  # no better than the validation before (steps 2 and 11)
    last: Probe | None = None

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []
        Probe.last = self

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            step = trainer.global_step
            value = self.FLAT.get(step, float(step))
            self.seen.append((step, value))
            pl_module.log("val/probe", value)


PLATEAU = (
    "experiment=gradual_unfreeze", "freezing.unfreeze_every_steps=6", RECORD,
    "freezing.plateau_patience=1", "freezing.plateau_monitor=val/probe",
    "+callbacks.probe._target_=test_gradual.Probe", "+trainer.val_check_interval=2",
    "trainer.max_epochs=3", "model.warmup_ratio=0.2", "model.lr=1e-4",
    "model.layerwise_lr_decay=2.6",
)  # fmt: skip


@pytest.mark.slow
def test_a_plateau_unfreezes_the_next_group_before_the_pace(make_cfg):
    # 7 steps per epoch, 21 in all; a validation every 2 batches (steps 2, 4, 6, 9, 11, ...).
    # Stage 0 would last to step 6, but val/probe does not improve at step 4: layer_2 unfreezes
    # there. The pace then counts from 4: layer_1 at 10. The plateau at 13 unfreezes layer_0,
    # and the pace the embeddings at 19. Each group warms up from its own start.
    train(make_cfg(*PLATEAU))
    assert [step for step, _ in Probe.last.seen] == [2, 4, 6, 9, 11, 13, 16, 18, 20]
    starts = dict(zip(GROUPS_TOP_DOWN, [4, 10, 13, 19], strict=True))
    steps = StepRecorder.last.steps
    assert [s["step"] for s in steps] == list(range(21))
    total, warmup, lr = 21, 4, 1e-4
    for seen in steps:
        step = seen["step"]
        unfrozen = {name for name, start in starts.items() if step >= start}
        assert seen["trainable"] == {"heads", *unfrozen}, step
        decay = (total - step) / (total - warmup)
        for depth, name in enumerate(GROUPS_TOP_DOWN):
            ramp = (step - starts[name]) / warmup
            expected = lr / 2.6**depth * max(0.0, min(ramp, decay))
            assert seen["lr"][name] == pytest.approx(expected, abs=1e-12), (step, name)


@pytest.mark.slow
def test_resume_after_a_plateau_is_exact(make_cfg, tmp_path):
    # Step 12: after the plateau at 4 (without it, layer_1 would start at 12, not 10), and
    # after stage 2's first validation (11), which the plateau at 13 compares with.
    straight_then_resumed(make_cfg, tmp_path, PLATEAU, every=6, at=12, steps=21)


@pytest.mark.slow
def test_a_plateau_monitor_that_is_not_logged_is_named(make_cfg):
    from mtl_lightning.core.errors import ConfigError

    cfg = make_cfg(
        "experiment=gradual_unfreeze", "freezing.plateau_patience=1",
        "freezing.plateau_monitor=val/nope",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"freezing.plateau_monitor=val/nope .*val/primary_mean"):
        train(cfg)


class Flat(Callback):
    """Logs the same `val/flat` at every validation: a plateau at every second one."""

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            pl_module.log("val/flat", 0.5)


@pytest.mark.slow
def test_a_plateau_waits_for_the_end_of_an_accumulation_window(make_cfg):
    # Windows of 2 batches, a validation every 3 (batches 2 and 5 of each epoch of 7): the
    # first falls inside a window. With patience 2 the first plateau comes at epoch 1's batch
    # 2, inside a window. The micro-batches of one optimizer step must all see the same
    # trainable groups.
    train(
        make_cfg(
            "experiment=gradual_unfreeze", "freezing.unfreeze_every_steps=100", RECORD,
            "freezing.plateau_patience=2", "freezing.plateau_monitor=val/flat",
            "+callbacks.flat._target_=test_gradual.Flat", "+trainer.val_check_interval=3",
            "+trainer.accumulate_grad_batches=2", "trainer.max_epochs=3",
        )
    )  # fmt: skip
    steps = StepRecorder.last.steps
    by_step: dict[int, list[set]] = {}
    for seen in steps:
        by_step.setdefault(seen["step"], []).append(seen["trainable"])
    for step, trainable in by_step.items():
        assert all(t == trainable[0] for t in trainable), step
    assert len(steps[-1]["trainable"]) > 1  # a plateau did unfreeze (the pace never comes)


def test_a_plateau_in_min_mode_counts_validations_since_the_best():
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    schedule = GradualUnfreeze(
        unfreeze_every_steps=100, plateau_patience=2, plateau_monitor="val/loss",
        plateau_mode="min",
    )  # fmt: skip
    schedule.bind(5, lambda: None)  # 4 groups unfreeze, 100 steps a stage
    callback = FreezingSchedule(schedule)
    trainer = SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        strategy=SimpleNamespace(broadcast=lambda decision: decision),
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_should_accumulate=lambda: False)),
    )
    # A lower loss is better: 0.9 and 0.8 improve, and each resets the count; 0.85 twice after
    # the best, 0.8, is the plateau (patience 2), at step 6.
    for step, loss in [(1, 1.0), (2, 0.9), (3, 0.95), (4, 0.8), (5, 0.85), (6, 0.85)]:
        trainer.global_step, trainer.callback_metrics = step, {"val/loss": torch.tensor(loss)}
        callback.on_validation_end(trainer, None)
        assert schedule.plateaus == ({0: 6} if step == 6 else {}), step
    assert schedule.stage_at(5, 4) == 0 and schedule.stage_at(6, 4) == 1
    assert schedule.stage_start(2) == 106  # the pace counts from the plateau
