"""Names that become parts of paths, and the check that a file lies inside its folder.

Task names (from configs and checkpoints) name files: `test_predictions/<task>.csv`,
`embeddings/<task>_<split>.npz`, `confusion_<task>.csv`, the report's plots. Tokenizer files
travel inside checkpoints under their own names. A crafted checkpoint or config must not turn
any of them into a path outside the folder it is written to, so every such name is checked
before anything is built (`task_name_problem`, `check_file_name`), and every write goes through
`inside`, which resolves the path and refuses one that leaves its folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from mtl_lightning.core.errors import ConfigError

# A file name a checkpoint may carry (tokenizer files): letters, digits, `.`, `_`, `-`, no dot
# first, so never `..`, a hidden file or a path.
PLAIN_FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
_SEPARATORS = ("/", "\\", "\0")
# Heads and metrics are `nn.ModuleDict`s keyed by task: a key that is already an attribute of
# a ModuleDict (`train`, `to`, `type`, `forward`, ...) cannot be added to one.
_MODULE_ATTRIBUTES = frozenset(dir(nn.ModuleDict()))
# Metric names are `{stage}/{task}/{metric}`, beside `{stage}/loss` and `train/weight/{task}`: a
# task named `weight` would log `train/weight/loss` as another task named `loss` logs its weight.
_METRIC_SEGMENTS = frozenset({"loss", "weight"})


def task_name_problem(name: object) -> str | None:
    """Why `name` cannot name a task, or None. Unicode and spaces are fine: a task name is one
    plain path component, with no separator and no leading dot."""
    if not isinstance(name, str) or not name.strip():
        return "is empty or not a string"
    if any(separator in name for separator in _SEPARATORS):
        return "holds a path separator"
    if name.startswith("."):
        return "starts with a dot"
    if name in _MODULE_ATTRIBUTES:
        return "is a reserved attribute name of torch's nn.ModuleDict"
    if name in _METRIC_SEGMENTS:
        return "is a part of the metric names (train/loss, train/weight/<task>)"
    return None


def check_task_names(names: object, where: str) -> None:
    """Refuse, in one sentence naming `where`, any task name that could not name a file."""
    for name in names:
        problem = task_name_problem(name)
        if problem is not None:
            raise ConfigError(
                f"{where}: task name {name!r} {problem}: name each task with a plain word "
                "(letters, digits, spaces, - and _; no / or \\, no leading dot), e.g. questions."
            )


def check_file_name(name: object, where: str) -> None:
    """Refuse a stored file name that is not a plain name of `PLAIN_FILE_NAME`."""
    if not isinstance(name, str) or not PLAIN_FILE_NAME.fullmatch(name):
        raise ConfigError(
            f"{where} names the file {name!r}, which is not a plain file name (letters, digits, "
            "., _ and -, no path): it is not a file this project wrote; use a checkpoint written "
            "by mtl_lightning.train."
        )


def inside(folder: str | Path, name: str) -> Path:
    """`folder / name`, refused unless it resolves to a path strictly inside `folder`."""
    folder = Path(folder)
    root = folder.resolve()
    target = (root / name).resolve()
    if target == root or not target.is_relative_to(root):
        raise ConfigError(
            f"the file name {name!r} would write {target}, outside the folder {folder}: "
            "use plain names (no / or \\, no leading dot)."
        )
    return folder / name
