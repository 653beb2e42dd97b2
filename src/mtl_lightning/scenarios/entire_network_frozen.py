"""`entire_network_frozen`: nothing trains; a readout of the pretrained features."""

from __future__ import annotations

import logging

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.scenarios.base import Plan, Scenario, logged
from mtl_lightning.scenarios.schedule import apply_plan

log = logging.getLogger(__name__)


class EntireNetworkFrozen(Scenario):
    """A static feature extractor: `run` evaluates and tests, with no training. Its experiment's
    `frozen_readout` callback scores the frozen features with a non-parametric readout and
    writes them (mtl_lightning.scenarios.readout.FrozenReadout)."""

    name = "entire_network_frozen"
    trains = False
    forks = False

    def trainable(
        self, epoch: int, heads: frozenset[str], num_groups: int, step: int | None
    ) -> Plan:
        return Plan(frozenset(), 0)

    def check_start(self, ckpt_path: str | None, fork_from: str | None) -> None:
        if ckpt_path:
            raise ConfigError(
                "ckpt_path resumes training, and entire_network_frozen trains nothing: to "
                "evaluate a checkpoint's heads, give it as model.init_from instead."
            )
        if fork_from:
            raise ConfigError(
                f"fork_from={fork_from} starts training from another run's epoch, and "
                "entire_network_frozen trains nothing: drop fork_from."
            )

    def run(self, trainer, module, datamodule, ckpt_path: str | None, test: bool = True):
        log.info("entire_network_frozen: nothing trains; evaluating and exporting embeddings.")
        apply_plan(module, self.plan(0, list(module.heads), len(module.encoder_groups())))
        trainer.validate(module, datamodule=datamodule)
        metrics = logged(trainer)
        if test:
            trainer.test(module, datamodule=datamodule)
        return metrics, 0.0
