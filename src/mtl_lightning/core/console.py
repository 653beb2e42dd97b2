"""Third-party console noise that tells our users nothing, each silenced where it starts.

- Lightning's `_pytree` builds torch's deprecated `LeafSpec` (a FutureWarning on every fit):
  Lightning's code to change, so filtered by its exact message and module.
- Lightning advertises litlogger on every `Trainer` (an info record, with no switch to turn it
  off): the one logger that prints it drops that one record.
- `WandbLogger` passes `anonymous=None` to `wandb.init`, which wandb >= 0.23 warns has no
  effect (anonymous mode was removed): the key is dropped before the run starts.
- `CSVLogger` warns that the run folder "is not empty" when it holds Hydra's `.hydra` or W&B's
  folder: that warning is true only when a metrics.csv is there to be replaced.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, WandbLogger

LITLOGGER_TIP = "💡 Tip: For seamless cloud logging and experiment tracking"


class _DropRecords(logging.Filter):
    """Drops the records whose message starts with `prefix`; lets every other one through."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_third_party() -> None:
    """Install the warning filter and the log filter above (once, however often called)."""
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # transformers' "Loading weights: 100%" bar at every model load: a bar for a load that
    # takes a fraction of a second, printed into every run's console and log.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropRecords) for f in rank_zero.filters):
        rank_zero.addFilter(_DropRecords(LITLOGGER_TIP))


def quiet_loggers(loggers: Iterable[object]) -> None:
    """Prepare our loggers so that starting them prints no warning that is not true."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            init = getattr(logger, "_wandb_init", {})  # what WandbLogger passes to wandb.init
            if "anonymous" in init and init["anonymous"] is None:
                del init["anonymous"]  # wandb.init's own default says nothing
        elif isinstance(logger, CSVLogger) and not (Path(logger.log_dir) / "metrics.csv").exists():
            # Start its writer now, where the folder's other contents (.hydra, wandb/) are known
            # to be no previous metrics that it would delete.
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message=r"Experiment logs directory .* exists and is not empty"
                )
                _ = logger.experiment
