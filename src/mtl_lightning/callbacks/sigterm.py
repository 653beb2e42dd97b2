"""A run stopped by SIGTERM (a scheduler's preemption or time limit) leaves a resumable last.ckpt.

Lightning catches SIGTERM, finishes the current batch and raises `SIGTERMException`, a
`SystemExit` with code 0; `mtl_lightning.train` turns that into a non-zero exit.
"""

from __future__ import annotations

from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mtl_lightning.core.compat import dump_checkpoint


class SigtermCheckpoint(Callback):
    """On SIGTERM during fit, writes `<dirpath>/<filename>.ckpt` as training stands (mid-epoch too).

    Only SIGTERM: after other errors (a bad config, a NaN) the weights are not worth keeping
    over the last epoch's checkpoint.
    """

    changes_training = False  # it only writes files: a fork may differ in it

    def __init__(self, dirpath: str | Path, filename: str = "last") -> None:
        self.ckpt_path = Path(dirpath) / f"{filename}.ckpt"
        self.saved = False

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if not (isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING):
            return
        # No collective here (`trainer.save_checkpoint` ends in a barrier): under DDP a rank that
        # saw the signal one batch later is inside the next step's collectives, and both would
        # hang. The replicas hold the same state, so rank 0 writes it alone.
        if trainer.is_global_zero:
            checkpoint = dump_checkpoint(trainer)
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, self.ckpt_path)
        self.saved = True
