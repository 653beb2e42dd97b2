"""Tasks from the user's own files: CSV, TSV, JSONL or Parquet, one file per split.

`data=files` makes every task a `FileSource`: `data.tasks.<task>.train=<path>` names its training
file, `val`/`test` optionally name the others (missing ones are carved out of train). Relative
paths start from the directory the command was run in: Hydra's original working directory when
Hydra is running, else the current one. Examples whose text is empty or whitespace are dropped,
with a logged count; every other problem with a file is a `ConfigError` naming it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd

from mtl_lightning.data.sources import Examples, Rows, check_columns, check_dropped
from mtl_lightning.errors import ConfigError
from mtl_lightning.tasks import task_type_class

# (column names, rows as {column: value})
Table = tuple[list[str], list[dict[str, Any]]]


def launch_dir() -> Path:
    """The directory the user ran the command in (a Hydra job may run in its output folder)."""
    return Path(get_original_cwd()) if HydraConfig.initialized() else Path.cwd()


def decode_utf8(path: Path) -> str:
    """The file's text; a non-UTF-8 file is a ConfigError saying how to re-encode it."""
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark, which is not text.
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path} is not valid UTF-8 (byte {error.start}): re-encode it as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > utf8_{path.name}`."
        ) from None


def read_delimited(path: Path, delimiter: str) -> Table:
    """CSV or TSV with a header row, quoted the way spreadsheets and pandas write them."""
    # newline="": quoted fields may hold line breaks, which the csv module handles itself.
    reader = csv.DictReader(io.StringIO(decode_utf8(path), newline=""), delimiter=delimiter)
    try:
        rows = list(reader)
    except csv.Error as error:
        raise ConfigError(
            f"{path} is not a readable delimited file ({error}): fix or re-export it."
        ) from None
    return list(reader.fieldnames or []), rows


def read_jsonl(path: Path) -> Table:
    """One JSON object per line; blank lines are skipped."""
    columns: dict[str, None] = {}  # every key seen, in first-seen order
    rows = []
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and other line separators.
    for number, line in enumerate(decode_utf8(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"{path} line {number} is not valid JSON ({error.msg}): JSONL needs one JSON "
                "object per line."
            ) from None
        if not isinstance(row, dict):
            raise ConfigError(
                f"{path} line {number} is not a JSON object: JSONL needs one object per line, "
                'like {"text": "...", "label": "..."}.'
            )
        columns.update(dict.fromkeys(row))
        rows.append(row)
    return list(columns), rows


def read_parquet(path: Path) -> Table:
    """Parquet through pyarrow, which is optional: without it, say how to get on."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            f"{path} is a Parquet file, which needs pyarrow: `pip install pyarrow` into this "
            "environment, or convert the file to CSV."
        ) from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as error:  # pyarrow's ArrowIOError / ArrowInvalid
        raise ConfigError(
            f"{path} is not a readable Parquet file ({error}): fix or re-export it."
        ) from None
    return table.column_names, table.to_pylist()


READERS: dict[str, Callable[[Path], Table]] = {
    ".csv": lambda path: read_delimited(path, ","),
    ".tsv": lambda path: read_delimited(path, "\t"),
    ".jsonl": read_jsonl,
    ".parquet": read_parquet,
}


class FileSource:
    """One task's examples from the user's files: `train` (required), optional `val` and `test`.

    `task` is the task's name under `data.tasks`, so that errors name the config key to fix.
    Labels may be strings or integers; both become strings, which are the label names stored
    with the model. `label_names` declares the label set (and its order); else it is inferred.
    `type` is the task type (`mtl_lightning.tasks`); a pair type reads its second sentence from
    `text_pair_column`, and `similarity` takes numbers as labels (its scores).
    """

    def __init__(
        self,
        task: str,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        label_names: Sequence[str | int] | None = None,
        type: str | None = None,  # noqa: A002 (the config key data.tasks.<task>.type)
        type_options: dict | None = None,
        text_pair_column: str = "text_pair",
    ) -> None:
        self.task = task
        self.files = {"train": train, "val": val, "test": test}
        self.text_column = text_column
        self.label_column = label_column
        self.label_names = None if label_names is None else [str(n) for n in label_names]
        self.type = type
        self.type_options = type_options
        kind = task_type_class(task, type)
        self.text_pair_column = text_pair_column if len(kind.columns) == 2 else None
        self.numeric_labels = not kind.categorical

    def key(self, name: str) -> str:
        return f"data.tasks.{self.task}.{name}"

    def load(self, data_dir: Path) -> Examples:
        """Read the splits whose files are given; `data_dir` is unused: paths are the user's."""
        if not self.files["train"]:
            raise ConfigError(
                f"{self.key('train')} is not set: give the task's training file, e.g. "
                f"{self.key('train')}=train.csv."
            )
        return {split: self.read(split, str(file)) for split, file in self.files.items() if file}

    def read(self, split: str, file: str) -> tuple[list[str], list[str]] | Rows:
        """(texts, labels) of one split's file, empty texts dropped; `Rows` with the second
        sentences for a pair type (an example with either sentence empty dropped)."""
        path = launch_dir() / Path(file).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{self.key(split)}={file}: {path} does not exist; give an existing file "
                "(relative paths start from the directory you ran the command in)."
            )
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise ConfigError(
                f"{self.key(split)}={file} has an unknown format: give a .csv, .tsv, .jsonl or "
                ".parquet file."
            )
        columns, rows = reader(path)
        where = f"{path} ({self.key(split)})"
        if not rows:
            raise ConfigError(f"{where} is empty: give a file with at least one example.")
        wanted = {
            self.key("text_column"): self.text_column,
            self.key("label_column"): self.label_column,
        }
        if self.text_pair_column is not None:
            wanted[self.key("text_pair_column")] = self.text_pair_column
        check_columns(where, columns, wanted)
        # A score may be a float; bool is an int subclass, but True/False are no labels.
        kinds = str | int | float if self.numeric_labels else str | int
        texts, labels, pairs = [], [], []
        for number, row in enumerate(rows, 1):
            text = row.get(self.text_column)
            if text is None or not str(text).strip():
                continue
            pair = row.get(self.text_pair_column) if self.text_pair_column else ""
            if pair is None or (self.text_pair_column and not str(pair).strip()):
                continue
            label = row.get(self.label_column)
            if isinstance(label, bool) or not isinstance(label, kinds) or not str(label).strip():
                wanted_label = "numeric score" if self.numeric_labels else "string or integer label"
                raise ConfigError(
                    f"{where} row {number} has label {label!r}: give every example a "
                    f"{wanted_label} in column '{self.label_column}'."
                )
            texts.append(str(text))
            labels.append(str(label).strip())
            pairs.append(str(pair))
        check_dropped(where, len(texts), len(rows), self.text_column, self.key("text_column"))
        return Rows(texts, labels, pairs) if self.text_pair_column else (texts, labels)
