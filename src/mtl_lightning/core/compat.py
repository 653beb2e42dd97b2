"""Every use of Lightning's private or undocumented API, in one place.

Lightning offers no public way to do these few things, so each is wrapped here, and
`tests/test_compat.py` runs each one against the installed Lightning: a release that renames or
changes one fails there, by name, not deep in a training run. `pyproject.toml` pins `lightning`
to the minor versions these tests passed on.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from lightning import Trainer
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
    Timer,
)

# Lightning's callbacks that only observe training (they cannot say so with a class attribute
# `changes_training = False`, as this project's do): a fork's source may differ in them.
LIGHTNING_OBSERVERS = (LearningRateMonitor, ModelSummary, ProgressBar, Timer)


def dump_checkpoint(trainer: Trainer) -> dict[str, Any]:
    """The full training state as `trainer.save_checkpoint` would write it, without its barrier
    (a SIGTERM handler on one rank must not wait for the others)."""
    return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)


def stop_after_this_batch(trainer: Trainer) -> None:
    """Stop fitting as Lightning does on SIGTERM: after the batch in flight (a whole step, so the
    state is exact), by raising `SIGTERMException`, which callbacks see in `on_exception`."""
    trainer._signal_connector.received_sigterm = True


def accumulating(trainer: Trainer) -> bool:
    """Whether the current micro-batch is inside a gradient-accumulation window (the optimizer
    steps after a later one)."""
    return trainer.fit_loop.epoch_loop._should_accumulate()


def epoch_position(trainer: Trainer) -> tuple[int, int]:
    """(epochs finished, batches already trained in the current epoch: 0 at an epoch's end)."""
    loop = trainer.fit_loop
    epochs = loop.epoch_progress.current
    mid_epoch = epochs.started > epochs.processed
    done = loop.epoch_loop.batch_progress.current.processed if mid_epoch else 0
    return epochs.processed, done


def checkpoint_boundary_epoch(checkpoint: Mapping[str, Any]) -> int | None:
    """The epoch a run resumed from `checkpoint` starts with, if it was written at an epoch's
    end (after that epoch's validation); None for a checkpoint written mid-epoch. Reads the
    fit loop's progress as Lightning stores it."""
    loop = checkpoint["loops"]["fit_loop"]
    epochs = loop["epoch_progress"]["current"]
    batches = loop["epoch_loop.batch_progress"]
    if batches["is_last_batch"] and epochs["processed"] == epochs["started"]:
        return epochs["processed"]
    return None


def collect_rng_states() -> dict[str, Any]:
    """The torch, CUDA, NumPy and Python RNG states, as Lightning's fabric collects them."""
    return _collect_rng_states()


def set_rng_states(states: Mapping[str, Any]) -> None:
    _set_rng_states(dict(states))


def precision_values() -> tuple[str, ...]:
    """The values `Trainer(precision=...)` accepts, from Lightning's own lists."""
    from lightning.fabric import connector

    names = ("_PRECISION_INPUT_STR", "_PRECISION_INPUT_STR_ALIAS", "_PRECISION_INPUT_INT")
    return tuple(
        dict.fromkeys(
            str(value) for name in names for value in typing.get_args(getattr(connector, name))
        )
    )


class SelectiveModelCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that saves only where `saves_now(trainer)` holds (Lightning's skip test
    is a private method; this is its one override)."""

    def saves_now(self, trainer: Trainer) -> bool:
        return True

    def _should_skip_saving_checkpoint(self, trainer: Trainer) -> bool:
        return not self.saves_now(trainer) or super()._should_skip_saving_checkpoint(trainer)
