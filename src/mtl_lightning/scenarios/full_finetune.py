"""`full_finetune`: the encoder and every head train, from the first step to the last."""

from __future__ import annotations

from mtl_lightning.scenarios.base import Scenario


class FullFinetune(Scenario):
    """Everything trains: the base class's plan, under this scenario's name."""

    name = "full_finetune"
