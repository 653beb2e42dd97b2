"""A run stopped by SIGTERM (a scheduler's preemption or time limit) or by Ctrl-C (SIGINT) leaves
a resumable last.ckpt.

Lightning catches SIGTERM, finishes the current batch and raises `SIGTERMException`, a
`SystemExit` with code 0; a first Ctrl-C while training is turned into the same stop.
`mtl_lightning.train` turns either into a non-zero exit (143, 130) that names the checkpoint.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mtl_lightning.core.compat import dump_checkpoint, stop_after_this_batch


class SigtermCheckpoint(Callback):
    """On SIGTERM or Ctrl-C during fit, writes `<dirpath>/<filename>.ckpt` as training stands
    (mid-epoch too); `stopped_by` names the signal ("SIGTERM", "SIGINT") and `saved` says
    whether the checkpoint was written.

    Ctrl-C: Lightning turns a KeyboardInterrupt into `on_exception` and exit code 1, but a
    KeyboardInterrupt lands anywhere, e.g. halfway through an optimizer step, and a checkpoint of
    that state would not resume exactly. So while training, the first Ctrl-C asks Lightning for
    its SIGTERM stop (after the batch in flight, a whole step); a second Ctrl-C is Python's
    KeyboardInterrupt again: it stops at once, and `on_exception` records it without saving.

    Only these signals: after other errors (a bad config, a NaN) the weights are not worth
    keeping over the last epoch's checkpoint.
    """

    changes_training = False  # it only writes files: a fork may differ in it

    def __init__(self, dirpath: str | Path, filename: str = "last") -> None:
        self.ckpt_path = Path(dirpath) / f"{filename}.ckpt"
        self.saved = False
        self.stopped_by: str | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning registered its signal handlers just before this hook and restores the ones
        # it found (Python's KeyboardInterrupt for SIGINT) when fitting ends.
        self.stopped_by = None
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set a handler

        def first_ctrl_c(signum, frame) -> None:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the next one: at once
            self.stopped_by = "SIGINT"
            stop_after_this_batch(trainer)
            if trainer.is_global_zero:
                print(
                    f"\nCtrl-C: stopping after this batch and saving {self.ckpt_path} "
                    "(Ctrl-C again: stop at once, without it).",
                    file=sys.stderr,
                )

        signal.signal(signal.SIGINT, first_ctrl_c)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        if isinstance(exception, KeyboardInterrupt):  # mid-step: not a state to resume from
            self.stopped_by = "SIGINT"
            return
        if not isinstance(exception, SIGTERMException):
            return
        self.stopped_by = self.stopped_by or "SIGTERM"
        # No collective here (`trainer.save_checkpoint` ends in a barrier): under DDP a rank that
        # saw the signal one batch later is inside the next step's collectives, and both would
        # hang. The replicas hold the same state, so rank 0 writes it alone.
        if trainer.is_global_zero:
            checkpoint = dump_checkpoint(trainer)
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, self.ckpt_path)
        self.saved = True
