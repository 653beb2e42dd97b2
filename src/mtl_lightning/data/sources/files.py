"""Tasks from the user's own files: CSV, TSV, JSONL or Parquet, one file per split.

`data=files` makes every task a `FileSource`: `data.tasks.<task>.train=<path>` names its training
file, `val`/`test` optionally name the others (missing ones are carved out of train). Relative
paths start from the directory the command was run in: Hydra's original working directory when
Hydra is running, else the current one. Examples whose text is empty or whitespace are dropped,
with a logged count; every other problem with a file is a `ConfigError` naming it.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.data.sources.base import (
    CORPUS,
    Examples,
    Rows,
    check_columns,
    check_dropped,
    check_label_variants,
    first_blank,
    normalize_label,
)
from mtl_lightning.tasks import task_type_class


class Table(NamedTuple):
    columns: list[str]
    rows: list[dict[str, Any]]  # {column: value}
    lines: list[int] | None  # the line each row starts on, for text formats


# How pandas writes a missing label as text (NaN, and pd.NA as <NA>): not a class of its own.
MISSING_LABELS = {"nan", "<na>"}
DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
# The csv module refuses fields over 131,072 characters by default; a long document is no error.
FIELD_SIZE_LIMIT = 2**31 - 1


def launch_dir() -> Path:
    """The directory the user ran the command in (a Hydra job may run in its output folder)."""
    return Path(get_original_cwd()) if HydraConfig.initialized() else Path.cwd()


def decode_utf8(path: Path) -> str:
    """The file's text; a non-UTF-8 file is a ConfigError saying how to re-encode it."""
    data = path.read_bytes()
    # UTF-16 (Excel's "Unicode text", PowerShell's default): a byte-order mark, or the zero
    # bytes every ASCII character has in it (which are valid UTF-8, but never text).
    iconv = f"`iconv -f utf-16 -t utf-8 {path.name} > utf8_{path.name}`"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ConfigError(f"{path} is UTF-16, not UTF-8: re-encode it as UTF-8, e.g. {iconv}.")
    if b"\0" in data:
        raise ConfigError(
            f"{path} holds zero bytes, as UTF-16 text does, and UTF-8 text never: re-encode it "
            f"as UTF-8, e.g. {iconv} (or, for a spreadsheet, export it as CSV)."
        )
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark, which is not text.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path} is not valid UTF-8 (byte {error.start}): re-encode it as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > utf8_{path.name}`."
        ) from None


def read_delimited(path: Path, delimiter: str) -> Table:
    """CSV with a header row, quoted the way spreadsheets and pandas write them; or TSV, plain
    tab-separated text (no quoting: a quote is part of the text, as in the shipped TSV files).

    A row whose fields do not line up with the header (a stray delimiter, an unterminated
    quote), or that repeats the header (two files joined with `cat`), is a ConfigError naming
    its line: read as is, its label would become a new class.
    """
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_SIZE_LIMIT))
    # newline="": quoted fields may hold line breaks, which the csv module handles itself.
    # strict: an unclosed quote is an error, not a field that runs on to the end of the file.
    text = io.StringIO(decode_utf8(path), newline="")
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(text, delimiter=delimiter, strict=True, quoting=quoting)
    name = DELIMITER_NAMES[delimiter]
    fix = (
        f'remove the stray {name}, or quote the field that holds it ("...")'
        if quoting != csv.QUOTE_NONE
        else "remove the stray tab (the text of a .tsv cannot hold one)"
    )
    columns: list[str] | None = None
    rows, lines = [], []
    start = 1  # the line the next record starts on
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not fields:  # a blank line
                continue
            if columns is None:
                columns = fields
                check_delimiter(path, columns, delimiter)
            elif [field.strip() for field in fields] == [column.strip() for column in columns]:
                raise ConfigError(
                    f"{path} line {line} repeats the header row (two files joined with `cat`?): "
                    "remove that line, or join the files without their headers."
                )
            elif len(fields) != len(columns):
                raise ConfigError(
                    f"{path} line {line} has {len(fields)} {name}-separated fields, but the "
                    f"header has {len(columns)}: {fix}."
                )
            else:
                rows.append(dict(zip(columns, fields, strict=True)))
                lines.append(line)
    except csv.Error as error:
        raise ConfigError(
            f"{path} line {start} is malformed ({error}): close every quoted field with a "
            'quote and double the quotes inside one (""), or fix or re-export the file.'
        ) from None
    return Table(columns or [], rows, lines)


def check_delimiter(path: Path, header: list[str], delimiter: str) -> None:
    """A one-column header holding another delimiter: the file is separated by that one."""
    if len(header) != 1:
        return
    found = next((d for d in DELIMITER_NAMES if d != delimiter and d in header[0]), None)
    if found is None:
        return
    expected = DELIMITER_NAMES[delimiter]
    rename = " or name it .tsv" if found == "\t" else ""
    raise ConfigError(
        f"{path} looks {DELIMITER_NAMES[found]}-separated (header {header[0]!r}), but a "
        f"{path.suffix} file must be {expected}-separated: re-export it with {expected}s"
        f"{rename}."
    )


def read_jsonl(path: Path) -> Table:
    """One JSON object per line; blank lines are skipped."""
    columns: dict[str, None] = {}  # every key seen, in first-seen order
    rows, lines = [], []
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
        lines.append(number)
    return Table(list(columns), rows, lines)


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
    return Table(table.column_names, table.to_pylist(), None)


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
    `text_pair_column`, and `similarity` takes numbers as labels (its scores). `corpus`: a file
    of further documents for a type that ranks them (retrieval's evaluation).
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
        corpus: str | None = None,
    ) -> None:
        self.task = task
        self.files = {"train": train, "val": val, "test": test}
        self.corpus = corpus
        self.text_column = text_column
        self.label_column = label_column
        self.label_names = None if label_names is None else list(map(normalize_label, label_names))
        self.type = type
        self.type_options = type_options
        kind = task_type_class(task, type)
        self.kind = kind
        self.text_pair_column = text_pair_column if len(kind.columns) == 2 else None
        self.numeric_labels = not kind.categorical
        # A type without labels (retrieval) reads no label column; one with further sentence
        # columns (a retrieval task's hard negatives) names them in its type_options.
        self.has_labels = kind.has_labels
        self.extra_columns = list(kind.extra_columns(type_options or {}))

    def key(self, name: str) -> str:
        return f"data.tasks.{self.task}.{name}"

    @property
    def origin(self) -> str:
        return "files " + ", ".join(f"{split}=`{f}`" for split, f in self.files.items() if f)

    def load(self, data_dir: Path) -> Examples:
        """Read the splits whose files are given; `data_dir` is unused: paths are the user's."""
        if not self.files["train"]:
            raise ConfigError(
                f"{self.key('train')} is not set: give the task's training file, e.g. "
                f"{self.key('train')}=train.csv."
            )
        files = {split: file for split, file in self.files.items() if file}
        examples: Examples = {split: self.read(split, str(file)) for split, file in files.items()}
        if self.corpus:
            examples[CORPUS] = self.read_corpus(str(self.corpus))
        return examples

    def read_corpus(self, file: str) -> list[str]:
        """The documents of `corpus` (its `text_pair_column`, else `text_column`; blank ones
        dropped): a type that ranks (retrieval) adds them to the val and test splits'."""
        path = launch_dir() / Path(file).expanduser()
        reader = READERS.get(path.suffix.lower())
        if reader is None or not path.is_file():
            raise ConfigError(
                f"{self.key('corpus')}={file} must be an existing .csv, .tsv, .jsonl or .parquet "
                "file (relative paths start from the directory you ran the command in)."
            )
        columns, rows, _ = reader(path)
        column = next((c for c in (self.text_pair_column, self.text_column) if c in columns), None)
        if column is None:
            raise ConfigError(
                f"{path} ({self.key('corpus')}) has no column '{self.text_pair_column}' or "
                f"'{self.text_column}'; its columns are {columns}: name the documents' column "
                "like the positives' (text_pair_column)."
            )
        return [str(row[column]) for row in rows if first_blank({column: row.get(column)}) is None]

    def read(self, split: str, file: str) -> tuple[list[str], list[str]] | Rows:
        """(texts, labels) of one split's file, empty texts dropped; `Rows` with the second
        sentences for a pair type (an example with either sentence empty dropped)."""
        path = launch_dir() / Path(file).expanduser()
        if path.is_dir():
            raise ConfigError(
                f"{self.key(split)}={file}: {path} is a folder; give a file in it, e.g. "
                f"{self.key(split)}={Path(file) / 'train.csv'}."
            )
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
        columns, rows, lines = reader(path)
        where = f"{path} ({self.key(split)})"
        if not rows:
            raise ConfigError(f"{where} is empty: give a file with at least one example.")
        wanted = {self.key("text_column"): self.text_column}
        if self.has_labels:
            wanted[self.key("label_column")] = self.label_column
        if self.text_pair_column is not None:
            wanted[self.key("text_pair_column")] = self.text_pair_column
        # Further columns (hard negatives) are needed to train; val and test may lack them.
        extra_columns = self.extra_columns
        if split != "train" and not set(extra_columns) <= set(columns):
            extra_columns = []
        for position, column in enumerate(extra_columns):
            wanted[f"{self.key('type_options')}.{self.kind.extra_columns_key}[{position}]"] = column
        check_columns(where, columns, wanted)
        # A score may be a float; bool is an int subclass, but True/False are no labels.
        kinds = str | int | float if self.numeric_labels else str | int
        sentence_columns = [self.text_column]
        if self.text_pair_column is not None:
            sentence_columns.append(self.text_pair_column)
        sentence_columns += [c for c in extra_columns if c not in sentence_columns]
        empty = dict.fromkeys(sentence_columns, 0)
        texts, labels, pairs, places, extra = [], [], [], [], []
        for number, row in enumerate(rows, 1):
            sentences = [row.get(column) for column in sentence_columns]
            blank = first_blank(dict(zip(sentence_columns, sentences, strict=True)))
            if blank is not None:
                empty[blank] += 1
                continue
            place = f"line {lines[number - 1]}" if lines else f"row {number}"
            extra.append(tuple(str(row[column]) for column in extra_columns))
            if not self.has_labels:
                texts.append(str(sentences[0]))
                labels.append("")
                pairs.append(str(sentences[1 if self.text_pair_column else 0]))
                places.append(place)
                continue
            label = row.get(self.label_column)
            if isinstance(label, bool) or not isinstance(label, kinds) or not str(label).strip():
                wanted_label = "numeric score" if self.numeric_labels else "string or integer label"
                raise ConfigError(
                    f"{where} {place} has label {label!r}: give every example a "
                    f"{wanted_label} in column '{self.label_column}'."
                )
            label = normalize_label(label)
            if label.lower() in MISSING_LABELS and label not in (self.label_names or ()):
                raise ConfigError(
                    f"{where} {place} has label {label!r}, a missing value written out as text: "
                    f"label the example or remove it (or list {label!r} in "
                    f"{self.key('label_names')} if it is a class)."
                )
            problem = self.kind.label_problem(self.task, label, self.type_options or {})
            if problem is not None:
                raise ConfigError(f"{where} {place} has {problem}: fix or remove that example.")
            texts.append(str(sentences[0]))
            labels.append(label)
            pairs.append(str(sentences[1 if self.text_pair_column else 0]))
            places.append(place)
        keys = {self.text_column: self.key("text_column")}
        if self.text_pair_column is not None:
            keys[self.text_pair_column] = self.key("text_pair_column")
        for column in extra_columns:
            keys.setdefault(column, f"{self.key('type_options')}.{self.kind.extra_columns_key}")
        check_dropped(where, len(rows), empty, keys)
        if self.has_labels and not self.numeric_labels:
            check_label_variants(where, labels, places, self.label_names, self.key("label_names"))
        if extra_columns:
            return Rows(texts, labels, pairs, extra)
        return Rows(texts, labels, pairs) if self.text_pair_column else (texts, labels)
