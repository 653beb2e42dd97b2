"""Loss weighting: one class per method, chosen by `_target_` (`weighting=<name>`)."""

from mtl_lightning.weighting.aligned import AlignedMTL
from mtl_lightning.weighting.base import LossWeighting
from mtl_lightning.weighting.cagrad import CAGrad
from mtl_lightning.weighting.dwa import DynamicWeightAverage
from mtl_lightning.weighting.gradnorm import GradNorm
from mtl_lightning.weighting.pcgrad import PCGrad
from mtl_lightning.weighting.rlw import RandomLossWeighting
from mtl_lightning.weighting.static import StaticWeighting
from mtl_lightning.weighting.uncertainty import UncertaintyWeighting

# `model.loss_weighting=<name>`, the spelling before the weighting room, kept as an alias.
BY_NAME: dict[str, type[LossWeighting]] = {
    "static": StaticWeighting,
    "uncertainty": UncertaintyWeighting,
}

__all__ = [
    "BY_NAME",
    "AlignedMTL",
    "CAGrad",
    "DynamicWeightAverage",
    "GradNorm",
    "LossWeighting",
    "PCGrad",
    "RandomLossWeighting",
    "StaticWeighting",
    "UncertaintyWeighting",
]
