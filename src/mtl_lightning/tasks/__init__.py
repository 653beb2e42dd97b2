"""Task types by name (`data.tasks.<task>.type`); a new type is one module and one line here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.tasks.base import TaskType
from mtl_lightning.tasks.classification import Classification
from mtl_lightning.tasks.pair_classification import PairClassification
from mtl_lightning.tasks.similarity import Similarity

TASK_TYPES: dict[str, type[TaskType]] = {
    Classification.name: Classification,
    PairClassification.name: PairClassification,
    Similarity.name: Similarity,
}
DEFAULT_TYPE = Classification.name


def task_type_class(task: str, name: str | None) -> type[TaskType]:
    """The class of `data.tasks.<task>.type` (default: classification)."""
    cls = TASK_TYPES.get(name or DEFAULT_TYPE)
    if cls is None:
        raise ConfigError(
            f"data.tasks.{task}.type={name} is unknown: use one of {sorted(TASK_TYPES)}."
        )
    return cls


def build_task_type(task: str, labels: Sequence[str], spec: Mapping[str, Any] | None) -> TaskType:
    """The task type a checkpoint's `spec()` describes (no spec: classification)."""
    options = dict(spec or {})
    return task_type_class(task, options.pop("type", None))(task, labels, **options)


__all__ = ["TASK_TYPES", "TaskType", "build_task_type", "task_type_class"]
