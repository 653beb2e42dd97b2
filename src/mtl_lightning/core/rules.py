"""What a config key accepts, and the one-sentence refusal of a value it does not.

Each class that users configure keeps the rules of its own keys beside it (`DATA_RULES` in
`data/datamodule.py`, `MODEL_RULES` in `model/module.py`, `ENCODER_RULES` in `model/encoder.py`,
`FREEZING_RULES` in `scenarios/freezing.py`) and checks its arguments with `check_values`; the
command-line entry points check the whole composed config against the same tables before anything
is built (`mtl_lightning.config_check`), where only the checks that need several keys live.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mtl_lightning.core.errors import ConfigError

_ABSENT = object()


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


KINDS: dict[type, tuple[Callable[[Any], bool], str]] = {
    int: (is_int, "an integer"),
    float: (is_number, "a number"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    str: (lambda v: isinstance(v, str), "a string"),
    # A YAML list (OmegaConf's ListConfig is a Sequence too); a string is not one.
    list: (lambda v: isinstance(v, Sequence) and not isinstance(v, str), "a list"),
}


@dataclass(frozen=True)
class Rule:
    """What one key accepts: a value of `kind` for which `ok(value)` holds (`need` says so in
    words), or null when `nullable`; `fix` ends the refusal (default: `example` as a value)."""

    kind: type
    need: str = ""
    ok: Callable[[Any], bool] = lambda value: True
    example: Any = None
    nullable: bool = False
    fix: Callable[[Any], str] | None = None

    def problem(self, key: str, value: Any) -> str | None:
        """The sentence refusing `value` for `key`, or None when it is fine."""
        if value is None and self.nullable:
            return None
        is_kind, kind_words = KINDS[self.kind]
        if is_kind(value) and self.ok(value):
            return None
        shown = f"'{value}'" if isinstance(value, str) and self.kind is not str else value
        if is_kind(value):
            wanted = self.need
        else:
            wanted = kind_words + (f", {self.need}" if self.need else "")
        if self.nullable:
            wanted += ", or null"
        if self.fix is not None and is_kind(value):
            return f"{key}={shown} must be {wanted}: {self.fix(value)}."
        example = "" if self.example is None else f": e.g. {key}={self.example}"
        return f"{key}={shown} must be {wanted}{example}."


def int_at_least(example: int, least: int = 1, **kwargs) -> Rule:
    return Rule(int, f"at least {least}", lambda v: v >= least, example, **kwargs)


def check_task_mapping(
    key: str,
    value: Any,
    rule: Rule,
    what: str,
    example: str,
    tasks: Collection[str] | None = None,
) -> None:
    """`key` is null or {task: a value `rule` accepts} (`what` names such a value, `example` is
    an override that sets one); with `tasks`, each task it names is one of them. The per-task
    options (`model.loss_weights`, `model.head_lrs`) share these refusals."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{key}={value} must be a mapping of task to {what}, or null: e.g. {example}."
        )
    unknown = sorted(set(value) - set(tasks)) if tasks is not None else []
    if unknown:
        raise ConfigError(f"{key} names unknown tasks {unknown}: use task names {sorted(tasks)}.")
    for task, item in value.items():
        problem = rule.problem(f"{key}.{task}", item)
        if problem:
            raise ConfigError(problem)


def check_values(prefix: str, values: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """Check constructor arguments named like the keys under `prefix` (e.g. "data") against
    that class's `rules` (keyed by argument name)."""
    for name, value in values.items():
        rule = rules.get(name)
        problem = rule.problem(f"{prefix}.{name}", value) if rule else None
        if problem:
            raise ConfigError(problem)


def prefixed(prefix: str, rules: Mapping[str, Rule]) -> dict[str, Rule]:
    """A class's rules as config keys under `prefix`."""
    return {f"{prefix}.{name}": rule for name, rule in rules.items()}


def check_table(cfg: DictConfig, rules: Mapping[str, Rule]) -> None:
    """Every key of `rules` (dotted) that `cfg` holds, checked."""
    for key, rule in rules.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:  # removed with ~key, or a trainer config without it
            continue
        problem = rule.problem(key, value)
        if problem:
            raise ConfigError(problem)
