"""Gradual unfreezing step by step: which groups train, at which learning rate; resume."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from lightning import Callback

from mtl_lightning.callbacks.freezing import FreezingSchedule
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


def test_the_schedule_step_by_step(make_cfg):
    # Tiny data: 7 joint steps per epoch, 3 epochs = 21 steps; a stage is 3 steps.
    train(
        make_cfg(
            "experiment=gradual_unfreeze", "freezing.unfreeze_every_steps=3", RECORD,
            "trainer.max_epochs=3", "model.warmup_ratio=0.2", "model.lr=1e-4",
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


def test_a_fraction_of_an_epoch_sets_the_pace_in_steps(make_cfg):
    train(make_cfg("experiment=gradual_unfreeze", "freezing.every_n_epochs=0.5", RECORD))
    steps = StepRecorder.last.steps
    # 7 steps per epoch: a stage is round(3.5) = 4 steps, changing inside epochs.
    for seen in steps:
        assert seen["trainable"] - {"heads"} == set(GROUPS_TOP_DOWN[: seen["step"] // 4])


def test_the_experiment_reaches_the_whole_encoder_with_ulmfit_rates():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=gradual_unfreeze"])
    assert cfg.model.layerwise_lr_decay == 2.6
    schedule = FreezingSchedule(
        **{k: v for k, v in cfg.freezing.items() if k != "_target_" and v is not None}
    )
    schedule.stage_steps = 100  # steps per stage; an epoch is 100 / every_n_epochs steps
    steps_per_epoch = 100 / cfg.freezing.every_n_epochs
    last_step = cfg.trainer.max_epochs * steps_per_epoch - 1
    groups = 7  # MiniLM: embeddings + 6 layers
    assert schedule.plan(0, ["a"], groups, 0).encoder_groups == 0  # heads only first
    assert schedule.plan(0, ["a"], groups, int(last_step)).encoder_groups == groups
    assert schedule.plan(0, ["a"], groups, int(0.75 * last_step)).encoder_groups == groups


def test_unfreeze_every_steps_must_be_positive():
    from mtl_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="freezing.unfreeze_every_steps"):
        FreezingSchedule("gradual_unfreeze", unfreeze_every_steps=0)


def test_resume_in_the_middle_of_a_stage_is_exact(make_cfg, tmp_path):
    saved = tmp_path / "steps"
    common = ("experiment=gradual_unfreeze", "freezing.unfreeze_every_steps=4", RECORD)
    every_5_steps = (
        "+callbacks.steps._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.steps.dirpath={saved}",
        "+callbacks.steps.every_n_train_steps=5",
        "+callbacks.steps.save_top_k=-1",
    )
    train(make_cfg(*common, *every_5_steps, output="straight"))
    straight = StepRecorder.last
    # Step 10: the third stage (steps 8-11, layer 1 unfrozen at 8, still warming up), epoch 1.
    (ckpt,) = saved.glob("*step=10.ckpt")
    train(make_cfg(*common, f"ckpt_path='{ckpt}'", output="resumed"))
    resumed = StepRecorder.last
    assert [s["step"] for s in resumed.steps] == list(range(10, 14))
    for mine, theirs in zip(resumed.steps, straight.steps[10:], strict=True):
        assert mine == theirs
    for name, value in straight.after.items():
        torch.testing.assert_close(resumed.after[name], value, rtol=1e-5, atol=1e-6, msg=name)
