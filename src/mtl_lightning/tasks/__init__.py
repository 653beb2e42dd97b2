"""Task types by name (`data.tasks.<task>.type`); a new type is one module and one line here,
or one module of your own, named by its dotted path.

- Shipped types: `TASK_TYPES`.
- Your own, without editing the package: `data.tasks.<task>.type=mypackage.tasks.MyType` (a
  `TaskType` subclass). The config names it, so it is imported as Hydra imports a `_target_`,
  and registered under that path for the rest of the process; the checkpoint stores the path.
- A checkpoint never makes the project import a module: reading one (predict, encode, export,
  `model.init_from`) finds its types among the shipped ones, those registered in this process
  (`register`, or a config that named them) and those that installed packages declare under the
  entry-point group `mtl_lightning.task_types` (`name = "package.module:Class"`), and refuses
  any other in one sentence.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.tasks.base import ReportMetric, TaskType
from mtl_lightning.tasks.classification import Classification
from mtl_lightning.tasks.pair_classification import PairClassification
from mtl_lightning.tasks.retrieval import Retrieval
from mtl_lightning.tasks.similarity import Similarity

TASK_TYPES: dict[str, type[TaskType]] = {
    Classification.name: Classification,
    PairClassification.name: PairClassification,
    Similarity.name: Similarity,
    Retrieval.name: Retrieval,
}
DEFAULT_TYPE = Classification.name
ENTRY_POINTS = "mtl_lightning.task_types"


def register(cls: type[TaskType], name: str | None = None) -> str:
    """Make `cls` a task type by `name` (default: its dotted path) in this process; returns the
    name, which is what a checkpoint of it stores."""
    if not (isinstance(cls, type) and issubclass(cls, TaskType)):
        raise TypeError(f"{cls!r} is not a TaskType subclass")
    name = name or f"{cls.__module__}.{cls.__qualname__}"
    TASK_TYPES[name] = cls
    cls.registered_as = name  # what its `spec()`, and so a checkpoint, stores
    return name


def _installed(name: str) -> type[TaskType] | None:
    """The type an installed package declares as `name` under `ENTRY_POINTS`, if any."""
    found = entry_points(group=ENTRY_POINTS, name=name)
    for entry in found:
        cls = entry.load()
        register(cls, name)
        return cls
    return None


def _imported(task: str, name: str) -> type[TaskType]:
    """The class at the dotted path `name` (a config's own type), imported and registered."""
    module_name, _, class_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"data.tasks.{task}.type={name} cannot be imported ({error}): give a shipped type, "
            f"one of {sorted(TASK_TYPES)}, or the dotted path of a TaskType subclass on the "
            "Python path."
        ) from error
    if not (isinstance(cls, type) and issubclass(cls, TaskType)):
        raise ConfigError(
            f"data.tasks.{task}.type={name} is not a TaskType subclass: subclass "
            "mtl_lightning.tasks.TaskType (docs/extending.md)."
        )
    register(cls, name)
    return cls


def task_type_class(task: str, name: str | None) -> type[TaskType]:
    """The class of `data.tasks.<task>.type` (default: classification), as a config gives it: a
    registered name, or the dotted path of a class of your own, which is imported."""
    name = name or DEFAULT_TYPE
    cls = TASK_TYPES.get(name) or _installed(name)
    if cls is not None:
        return cls
    if "." in name:
        return _imported(task, name)
    raise ConfigError(
        f"data.tasks.{task}.type={name} is unknown: use one of {sorted(TASK_TYPES)}, or the "
        "dotted path of a TaskType subclass of your own."
    )


def build_task_type(task: str, labels: Sequence[str], spec: Mapping[str, Any] | None) -> TaskType:
    """The task type a checkpoint's `spec()` describes (no spec: classification). A type that is
    neither shipped, registered nor installed is refused: a checkpoint imports nothing."""
    options = dict(spec or {})
    name = options.pop("type", None) or DEFAULT_TYPE
    cls = TASK_TYPES.get(name) or _installed(name)
    if cls is None:
        raise ConfigError(
            f"task {task} has task type {name!r}, which is neither shipped nor registered in this "
            f"process: a checkpoint never imports code, so install the package that declares it "
            f"(entry-point group {ENTRY_POINTS}) or import it and call "
            "mtl_lightning.tasks.register(<its class>) first."
        )
    return cls(task, labels, **options)


__all__ = [
    "DEFAULT_TYPE",
    "TASK_TYPES",
    "ReportMetric",
    "TaskType",
    "build_task_type",
    "register",
    "task_type_class",
]
