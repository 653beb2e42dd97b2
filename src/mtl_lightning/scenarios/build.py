"""A run's scenario from its `freezing` config node: `_target_` names the class.

Configs written before scenarios were classes name one class,
`mtl_lightning.scenarios.freezing.FreezingSchedule`, and the scenario in `scenario`; they are
read too (a fork's source run, an exported run's card, a study's report).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.scenarios.base import Scenario
from mtl_lightning.scenarios.entire_network_frozen import EntireNetworkFrozen
from mtl_lightning.scenarios.full_finetune import FullFinetune
from mtl_lightning.scenarios.gradual_unfreeze import GradualUnfreeze
from mtl_lightning.scenarios.only_head_frozen import OnlyHeadFrozen
from mtl_lightning.scenarios.only_transformer_frozen import OnlyTransformerFrozen

EXAMPLE = "experiment=<name>, or freezing._target_=mtl_lightning.scenarios.<file>.<Class>"
_OLD_TARGET = "mtl_lightning.scenarios.freezing.FreezingSchedule"
_OLD_NAMES = {
    cls.name: cls
    for cls in (
        FullFinetune,
        EntireNetworkFrozen,
        OnlyTransformerFrozen,
        OnlyHeadFrozen,
        GradualUnfreeze,
    )
}


def _settings(node: DictConfig | Mapping | None) -> dict[str, Any]:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node or {})


def scenario_class(node: DictConfig | Mapping | None) -> type[Scenario]:
    """The `Scenario` subclass a `freezing` node names, or a one-sentence error."""
    settings = _settings(node)
    target = settings.get("_target_")
    if target == _OLD_TARGET or (target is None and "scenario" in settings):
        name = settings.get("scenario", "full_finetune")
        if name not in _OLD_NAMES:
            raise ConfigError(f"freezing.scenario={name} is unknown: use {EXAMPLE}.")
        return _OLD_NAMES[name]
    if target is None:
        return FullFinetune
    try:
        cls = get_class(str(target))
    except Exception:  # Hydra wraps the ImportError in its own exception types
        raise ConfigError(
            f"freezing._target_={target} cannot be imported: use {EXAMPLE}."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Scenario)):
        raise ConfigError(
            f"freezing._target_={target} is not a scenario (a subclass of "
            f"mtl_lightning.scenarios.base.Scenario): use {EXAMPLE}."
        )
    return cls


# The keys conf/train.yaml declares: the shipped scenarios' own. Each scenario reads its own and
# leaves the others alone (one sweep may set freezing.head for all its experiments).
DECLARED = frozenset(key for cls in _OLD_NAMES.values() for key in cls.RULES)


def check_scenario_keys(node: DictConfig | Mapping | None) -> type[Scenario]:
    """Refuse a key of the `freezing` node that neither its scenario nor conf/train.yaml
    declares (a typo, or another scenario's key); return the class."""
    cls = scenario_class(node)
    settings = _settings(node)
    unknown = sorted(
        k for k in settings if not k.startswith("_") and k not in cls.RULES and k not in DECLARED
    )
    if unknown and settings.get("_target_") != _OLD_TARGET:
        raise ConfigError(
            f"freezing.{unknown[0]} is not a setting of {cls.name} (it takes "
            f"{sorted(cls.RULES)}): drop it, or choose the experiment it belongs to."
        )
    return cls


def build_scenario(node: DictConfig | Mapping | None, init_from: str | None = None) -> Scenario:
    """The scenario of a `freezing` node, its defaults settled for `model.init_from`."""
    cls = scenario_class(node)
    settings = {k: v for k, v in _settings(node).items() if k in cls.RULES}
    scenario = cls(**settings)
    scenario.configure(init_from)
    return scenario


def scenario_name(config: DictConfig | Mapping) -> str | None:
    """The scenario name of a run's config (None where its class cannot be had): the built
    scenario's, which its settings may choose (`lora` with `per_task` is `lora_per_task`), else
    its class's."""
    node = config.get("freezing") if isinstance(config, Mapping | DictConfig) else None
    try:
        cls = scenario_class(node)
    except ConfigError:
        return None
    try:
        return build_scenario(node).name
    except (ConfigError, TypeError):
        return cls.name
