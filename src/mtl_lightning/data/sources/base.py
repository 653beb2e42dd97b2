"""Where a task's examples come from, and how missing splits are carved out.

A source is any object with `load(data_dir) -> Examples` (and optionally `prepare(data_dir)`,
which fetches files once, before any process reads them). `data.tasks.<task>` in the config is
a `_target_` node that builds one, so a new source needs no change here. A split is
`(texts, labels)`, or `Rows(texts, labels, text_pairs)` for tasks of two sentences; a source's
optional `type` and `type_options` name its task type (`mtl_lightning.tasks`).

For the exported model card a source may also say where its examples come from: `origin` (a
sentence), `hub_dataset` (a Hugging Face dataset id, the card's `datasets` metadata) and
`language` (an ISO 639-1 code); absent ones are left out of the card.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
import logging
import random
import unicodedata
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Union

from mtl_lightning.core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Rows:
    """One split's examples: texts, string labels, and the second sentences of a pair task."""

    texts: list[str]
    labels: list[str]
    text_pairs: list[str] | None = None
    # Further sentences of each example, one per column of the type's `extra_columns` (a
    # retrieval task's hard negatives); None: the type has none.
    extra: list[tuple[str, ...]] | None = None

    @classmethod
    def of(cls, split: Rows | Sequence[list[str]]) -> Rows:
        """A source's split, given as `Rows` or as a `(texts, labels)` tuple."""
        return split if isinstance(split, Rows) else cls(*split)

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: Sequence[int]) -> Rows:
        pairs, extra = self.text_pairs, self.extra
        return Rows(
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            None if pairs is None else [pairs[i] for i in indices],
            None if extra is None else [extra[i] for i in indices],
        )


# split name -> (texts, string labels), or Rows; and optionally CORPUS -> further documents
Examples = dict[str, Union[tuple[list[str], list[str]], Rows, list[str]]]  # noqa: UP007
SPLITS = ("train", "val", "test")
# A source's further documents for a task type that ranks them (`TaskType.ranks_corpus`): they
# join the val and test splits as rows with an empty first sentence (a document, no query).
CORPUS = "corpus"


class Source(Protocol):
    label_names: Sequence[str] | None

    def load(self, data_dir: Path) -> Examples: ...


def read_label_tsv(text: str, origin: str) -> tuple[list[str], list[str]] | Rows:
    """Parse `label<TAB>text` rows under a `label	text` header (or `label	text	text_pair`
    rows, returned as `Rows`)."""
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
    header = next(reader, None)
    if header not in (["label", "text"], ["label", "text", "text_pair"]):
        raise ConfigError(f"{origin} must start with the header 'label<TAB>text'.")
    texts, labels, pairs = [], [], []
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):  # a stray or missing tab: the label would be a piece of text
            raise ConfigError(
                f"{origin} line {reader.line_num} has {len(row)} field(s), not {len(header)}: "
                f"write it as {'<TAB>'.join(header)}, escaping a tab inside the text as \\<TAB>."
            )
        labels.append(normalize_label(row[0]))
        texts.append(row[1])
        pairs += row[2:]
    if len(header) == 3:
        return Rows(texts, labels, pairs)
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

    def __init__(
        self,
        file: str,
        label_names: Sequence[str] | None = None,
        type: str | None = None,  # noqa: A002 (the config key data.tasks.<task>.type)
        type_options: dict | None = None,
    ) -> None:
        self.file = file
        self.label_names = label_names
        self.type = type
        self.type_options = type_options

    language = "en"

    @property
    def origin(self) -> str:
        return f"the tiny corpus shipped in mtl-lightning, `data/tiny/{self.file}.tsv`"

    def load(self, data_dir: Path) -> Examples:
        resource = importlib.resources.files("mtl_lightning.data") / "tiny" / f"{self.file}.tsv"
        if not resource.is_file():
            raise ConfigError(
                f"data.tasks.*.file={self.file}: no shipped tiny corpus of that name; "
                "use 'classification', 'sentiment', 'paraphrase', 'similarity' or 'retrieval'."
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


def check_dropped(
    where: str, total: int, empty: Mapping[str, int], keys: Mapping[str, str]
) -> None:
    """Log how many examples were dropped for an empty or whitespace-only sentence; refuse none
    left. `empty` counts, per sentence column, the examples dropped for it (an example is
    counted under its first empty column); `keys` maps each column to its config key."""
    dropped = sum(empty.values())
    if dropped:
        log.warning(
            "%s: dropped %d of %d examples whose text is empty or whitespace (%s).",
            where,
            dropped,
            total,
            ", ".join(f"column '{column}': {count}" for column, count in empty.items() if count),
        )
    if dropped >= total:
        columns = [column for column, count in empty.items() if count] or list(keys)
        named = " or ".join(f"'{column}'" for column in columns)
        checks = ", ".join(keys[column] for column in columns)
        raise ConfigError(
            f"{where} has no example with non-empty text in column {named}: check {checks} "
            "or the data."
        )


def first_blank(sentences: Mapping[str, object]) -> str | None:
    """The first column of `{column: sentence}` whose sentence is missing, empty or
    whitespace; None when all hold text."""
    return next((c for c, v in sentences.items() if v is None or not str(v).strip()), None)


def normalize_label(label: object) -> str:
    """A label as text, the same for every source: Unicode NFC (an accent composed or
    decomposed is one letter), without surrounding whitespace."""
    return unicodedata.normalize("NFC", str(label)).strip()


def label_variant_key(label: str) -> str:
    """What labels that differ only by case or by leading zeros share (`Positif`, `positif`;
    `1`, `01`)."""
    digits = label.removeprefix("-")
    if digits.isdecimal():
        return f"{'-' if label.startswith('-') and int(digits) else ''}{int(digits)}"
    return label.casefold()


def check_label_variants(
    where: str,
    labels: Sequence[str],
    places: Sequence[str],
    declared: Sequence[str] | None,
    key: str,
) -> None:
    """Refuse labels that differ only by case or leading zeros: each would become a class of its
    own. Labels declared in `declared` (label_names) are distinct classes by the user's word."""
    first: dict[str, dict[str, str]] = defaultdict(dict)  # variant key -> {label: first place}
    for label, place in zip(labels, places, strict=True):
        first[label_variant_key(label)].setdefault(label, place)
    for spellings in first.values():
        if len(spellings) < 2 or set(spellings) <= set(declared or ()):
            continue
        found = ", ".join(f"{label!r} ({place})" for label, place in spellings.items())
        raise ConfigError(
            f"{where} has labels that differ only by case or leading zeros, {found}: write each "
            f"class one way, or list every spelling in {key} if they are different classes."
        )


def split_indices(
    groups: Sequence[str], fractions: dict[str, float], seed: int
) -> dict[str, list[int]]:
    """Indices of `train` plus the named fractions, per group, deterministically for a seed.

    Each group's examples are shuffled with their own seeded RNG and cut by rounding, so a
    split does not depend on the other groups or on the order of the source rows' groups. The
    groups are the labels (a stratified split), or one group (a plain seeded split).
    """
    by_group: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        by_group[group].append(index)
    chosen: dict[str, list[int]] = {name: [] for name in ("train", *fractions)}
    for group in sorted(by_group):
        indices = by_group[group]
        random.Random(f"{seed}:{group}").shuffle(indices)
        start = 0
        for name, fraction in fractions.items():
            count = round(len(indices) * fraction)
            chosen[name] += indices[start : start + count]
            start += count
        chosen["train"] += indices[start:]
    return {name: sorted(idx) for name, idx in chosen.items()}


def stratified_split(
    texts: Sequence[str],
    labels: Sequence[str],
    fractions: dict[str, float],
    seed: int,
) -> Examples:
    """Split `(texts, labels)` into `train` plus the named fractions, stratified by label."""
    rows = Rows(list(texts), list(labels))
    return {
        name: (part.texts, part.labels)
        for name, part in (
            (name, rows.select(idx)) for name, idx in split_indices(labels, fractions, seed).items()
        )
    }


def complete_splits(
    examples: Examples,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stratify: bool = True,
) -> dict[str, Rows]:
    """Carve whichever of val/test the source did not give out of its train split: stratified
    by label, or (`stratify=False`, e.g. a similarity score) a plain seeded split."""
    rows = {split: Rows.of(value) for split, value in examples.items()}
    missing = {
        name: fraction
        for name, fraction in (("val", val_fraction), ("test", test_fraction))
        if name not in rows
    }
    if not missing:
        return rows
    train = rows["train"]
    groups = train.labels if stratify else [""] * len(train)
    carved = split_indices(groups, missing, seed)
    return {**rows, **{name: train.select(idx) for name, idx in carved.items()}}
