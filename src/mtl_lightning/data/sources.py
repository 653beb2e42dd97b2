"""Where a task's examples come from, and how missing splits are carved out.

A source is any object with `load(data_dir) -> Examples` (and optionally `prepare(data_dir)`,
which fetches files once, before any process reads them). `data.tasks.<task>` in the config is
a `_target_` node that builds one, so a new source needs no change here.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from mtl_lightning.errors import ConfigError

log = logging.getLogger(__name__)

# split name -> (texts, string labels)
Examples = dict[str, tuple[list[str], list[str]]]
SPLITS = ("train", "val", "test")


class Source(Protocol):
    label_names: Sequence[str] | None

    def load(self, data_dir: Path) -> Examples: ...


def read_label_tsv(text: str, origin: str) -> tuple[list[str], list[str]]:
    """Parse `label<TAB>text` rows under a `label	text` header."""
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
    if next(reader, None) != ["label", "text"]:
        raise ConfigError(f"{origin} must start with the header 'label<TAB>text'.")
    texts, labels = [], []
    for row in reader:
        if not row:
            continue
        if len(row) != 2:  # a stray or missing tab: the label would be a piece of text
            raise ConfigError(
                f"{origin} line {reader.line_num} has {len(row)} field(s), not 2: write it as "
                "label<TAB>text, escaping a tab inside the text as \\<TAB>."
            )
        labels.append(row[0])
        texts.append(row[1])
    return texts, labels


def write_label_tsv(path: Path, texts: Sequence[str], labels: Sequence[str]) -> None:
    """Write `label<TAB>text` rows atomically (a half-written file never has the final name)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
    writer.writerow(["label", "text"])
    writer.writerows(zip(labels, (" ".join(t.split()) for t in texts), strict=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(buffer.getvalue(), encoding="utf-8")
    partial.replace(path)


class TinySource:
    """The small corpus shipped in the package (`data/tiny/<file>.tsv`): never downloads."""

    def __init__(self, file: str, label_names: Sequence[str] | None = None) -> None:
        self.file = file
        self.label_names = label_names

    def load(self, data_dir: Path) -> Examples:
        resource = importlib.resources.files("mtl_lightning.data") / "tiny" / f"{self.file}.tsv"
        if not resource.is_file():
            raise ConfigError(
                f"data.tasks.*.file={self.file}: no shipped tiny corpus of that name; "
                "use 'classification' or 'sentiment'."
            )
        return {"train": read_label_tsv(resource.read_text("utf-8"), f"tiny/{self.file}.tsv")}


def check_columns(where: str, present: Sequence[str], wanted: dict[str, str]) -> None:
    """`wanted` maps a config key to the column it names; each must be among `present`."""
    for key, column in wanted.items():
        if column not in present:
            raise ConfigError(
                f"{where} has no column '{column}'; its columns are {list(present)}: set "
                f"{key} to one of them."
            )


def check_dropped(where: str, kept: int, total: int, text_column: str, key: str) -> None:
    """Log how many examples with empty or whitespace-only text were dropped; refuse none left."""
    if kept < total:
        log.warning(
            "%s: dropped %d of %d examples whose text is empty or whitespace.",
            where,
            total - kept,
            total,
        )
    if not kept:
        raise ConfigError(
            f"{where} has no example with non-empty text in column '{text_column}': check {key} "
            "or the data."
        )


def stratified_split(
    texts: Sequence[str],
    labels: Sequence[str],
    fractions: dict[str, float],
    seed: int,
) -> Examples:
    """Split into `train` plus the named fractions, per label, deterministically for a seed.

    Each label's examples are shuffled with their own seeded RNG and cut by rounding, so a
    split does not depend on the other labels or on the order of the source rows' labels.
    """
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    chosen: dict[str, list[int]] = {name: [] for name in ("train", *fractions)}
    for label in sorted(by_label):
        indices = by_label[label]
        random.Random(f"{seed}:{label}").shuffle(indices)
        start = 0
        for name, fraction in fractions.items():
            count = round(len(indices) * fraction)
            chosen[name] += indices[start : start + count]
            start += count
        chosen["train"] += indices[start:]
    return {
        name: ([texts[i] for i in sorted(idx)], [labels[i] for i in sorted(idx)])
        for name, idx in chosen.items()
    }


def complete_splits(examples: Examples, val_fraction: float, test_fraction: float, seed: int):
    """Carve whichever of val/test the source did not give out of its train split."""
    missing = {
        name: fraction
        for name, fraction in (("val", val_fraction), ("test", test_fraction))
        if name not in examples
    }
    if not missing:
        return examples
    carved = stratified_split(*examples["train"], missing, seed)
    return {**examples, **carved}
