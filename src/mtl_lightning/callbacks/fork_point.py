"""Fork points: the full training state at the end of chosen epochs, for `fork_from`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lightning import Trainer

from mtl_lightning.core.compat import SelectiveModelCheckpoint


class ForkPoint(SelectiveModelCheckpoint):
    """Writes `<dirpath>/epochNN.ckpt` (weights, optimizer, LR schedule, RNG, loops) at the end
    of each epoch in `epochs`, after its validation: a run that trains the same first epochs
    starts from it (`fork_from`, mtl_lightning.study.fork). `make compare` keeps epoch 0 of its
    runs: `only_head_frozen` at `full_finetune`'s rates and a 1-epoch warm-up forks
    `full_finetune`'s (at its experiment's own, searched rates it trains its own).

    A ModelCheckpoint, so that Lightning runs it after the best-checkpoint callbacks: the state
    it writes already counts this epoch's score.
    """

    changes_training = False  # it only writes files: a fork may differ in it

    def __init__(self, dirpath: str | Path, epochs: Iterable[int] = ()) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="epoch{epoch:02d}",
            auto_insert_metric_name=False,
            monitor=None,
            save_top_k=-1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        self.epochs = frozenset(epochs or ())

    @property
    def state_key(self) -> str:
        return self._generate_state_key(fork_points=sorted(self.epochs))

    def saves_now(self, trainer: Trainer) -> bool:
        return trainer.current_epoch in self.epochs
