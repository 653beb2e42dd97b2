"""BestCheckpoint: ModelCheckpoint's state under its key, kept on resume only where this run
scores every epoch it was chosen among."""

from __future__ import annotations

import logging

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from mtl_lightning.callbacks.best_checkpoint import BestCheckpoint


def _state(compared: list[int] | None, dirpath: str) -> dict:
    state = ModelCheckpoint(dirpath=dirpath, monitor="val/primary_mean", mode="max").state_dict()
    state.update(best_model_path=f"{dirpath}/best-epoch01.ckpt", best_model_score=0.9)
    if compared is not None:
        state["compared_epochs"] = compared
    return state


def test_its_state_key_is_model_checkpoints_so_an_older_checkpoint_resumes_into_it(tmp_path):
    kwargs = {"dirpath": str(tmp_path), "monitor": "val/primary_mean", "mode": "max"}
    assert BestCheckpoint(**kwargs).state_key == ModelCheckpoint(**kwargs).state_key


@pytest.mark.parametrize(
    ("scored_from", "compared", "kept"),
    [
        (0, None, True),  # every epoch scores: a plain ModelCheckpoint's state is kept
        (2, None, False),  # a warm-up: the plain callback may have chosen one of its epochs
        (2, [2, 3], True),  # resumed with the same warm-up
        (2, [0, 1], False),  # a head that never froze, resumed with more epochs
        (1, [1, 2], True),
        (3, [2, 3], False),  # another warm-up
    ],
)
def test_a_resumed_best_is_kept_only_if_this_run_scores_every_epoch_it_compared(
    tmp_path, caplog, scored_from, compared, kept
):
    callback = BestCheckpoint(dirpath=str(tmp_path), monitor="val/primary_mean", mode="max")
    callback.scores = lambda epoch: epoch >= scored_from
    caplog.set_level(logging.WARNING, logger="mtl_lightning.callbacks")
    callback.load_state_dict(_state(compared, str(tmp_path)))
    assert (callback.best_model_path != "") == kept
    assert (callback.best_model_score is not None) == kept
    assert bool(caplog.records) == (not kept)
    if kept:
        assert callback.state_dict()["compared_epochs"] == (compared or [])
    else:
        assert "it chooses its best afresh from here on" in caplog.records[0].getMessage()
