"""A run stopped by SIGTERM (a scheduler's preemption or time limit) leaves a resumable last.ckpt.

Lightning catches SIGTERM, finishes the current batch and raises `SIGTERMException`, a
`SystemExit` with code 0; `mtl_lightning.train` turns that into a non-zero exit.
"""

from __future__ import annotations

from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException


class SigtermCheckpoint(Callback):
    """On SIGTERM during fit, writes `<dirpath>/<filename>.ckpt` as training stands (mid-epoch too).

    Only SIGTERM: after other errors (a bad config, a NaN) the weights are not worth keeping
    over the last epoch's checkpoint.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last") -> None:
        self.ckpt_path = Path(dirpath) / f"{filename}.ckpt"
        self.saved = False

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)  # all ranks: a barrier
            self.saved = True
