"""Each use of Lightning's private API (`mtl_lightning.core.compat`) against the installed
Lightning: a release that changes one fails here, by name."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mtl_lightning.core import compat


class Probe(Callback):
    """Calls the wrappers from inside a real fit, where Lightning's objects are live."""

    def __init__(self) -> None:
        self.accumulating: list[bool] = []
        self.positions: list[tuple[int, int]] = []
        self.dumped: dict | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.accumulating.append(compat.accumulating(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.positions.append(compat.epoch_position(trainer))
        if trainer.current_epoch == 1 and batch_idx == 1:
            self.dumped = compat.dump_checkpoint(trainer)


class EverySecondEpoch(compat.SelectiveModelCheckpoint):
    def saves_now(self, trainer: Trainer) -> bool:
        return trainer.current_epoch % 2 == 1


def test_the_wrappers_read_lightnings_state_in_a_real_fit(tmp_path):
    probe = Probe()
    saver = EverySecondEpoch(
        dirpath=tmp_path, filename="e{epoch}", auto_insert_metric_name=False, save_top_k=-1
    )
    trainer = Trainer(
        max_epochs=4,
        limit_train_batches=4,
        limit_val_batches=1,
        accumulate_grad_batches=2,
        callbacks=[probe, saver],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(BoringModel())
    # Micro-batches 0 and 2 of each epoch step later; 1 and 3 close their window.
    assert probe.accumulating[:4] == [True, False, True, False]
    # After each batch: (finished epochs, batches done in this epoch).
    assert probe.positions[:5] == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1)]
    assert compat.epoch_position(trainer) == (4, 0)  # at the end: every epoch finished
    dumped = probe.dumped
    assert {"state_dict", "optimizer_states", "loops", "callbacks"} <= dumped.keys()
    assert compat.checkpoint_boundary_epoch(dumped) is None  # written mid-epoch
    saved = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert saved == ["e1.ckpt", "e3.ckpt"]
    at_end = torch.load(tmp_path / "e1.ckpt", weights_only=True)
    assert compat.checkpoint_boundary_epoch(at_end) == 2  # a resume starts epoch 2


class StopAtStep(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 3:
            compat.stop_after_this_batch(trainer)


def test_stop_after_this_batch_is_lightnings_sigterm_stop(tmp_path):
    seen: list[BaseException] = []
    probe = Callback()
    probe.on_exception = lambda trainer, module, exception: seen.append(exception)
    trainer = Trainer(
        max_epochs=2,
        callbacks=[StopAtStep(), probe],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(SIGTERMException):
        trainer.fit(BoringModel())
    assert trainer.global_step == 3 and [type(e) for e in seen] == [SIGTERMException]


def test_rng_states_round_trip():
    states = compat.collect_rng_states()
    assert {"torch", "numpy", "python"} <= states.keys()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    compat.set_rng_states(states)
    again = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(expected[0], again[0])
    np.testing.assert_array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_precision_values_are_lightnings():
    values = compat.precision_values()
    assert {"32-true", "bf16-mixed", "16-mixed", "32"} <= set(values)
    assert "bogus" not in values
