"""Examples a task's splits share, and texts given two labels: reported, dropped or refused.

A test example that is also a training example measures memory, not generalisation; a text
with two labels caps the accuracy any model can reach on it. Once a task's splits are built
(whatever the source, given or carved out of train), `data.overlap` says what happens:

- `warn` (default): log the counts, naming the task and the splits, and train as given;
- `drop`: texts with conflicting labels leave every split; an example also in a later split
  leaves the earlier one (train before val before test), so the evaluation sets stay whole;
- `refuse`: stop with one sentence.

Texts match exactly; a pair task's examples match by their `(text, text_pair)`. Labels are
compared for class tasks only (a similarity's scores are not labels that can conflict).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.data.sources.base import SPLITS, Rows

log = logging.getLogger(__name__)
OVERLAP_MODES = ("warn", "drop", "refuse")


def example_keys(rows: Rows, pair: bool) -> list[Hashable]:
    """What makes two examples the same: the text, or for a pair task the two sentences."""
    if not pair or rows.text_pairs is None:
        return list(rows.texts)
    return list(zip(rows.texts, rows.text_pairs, strict=True))


@dataclass
class Overlap:
    """One task's shared examples and conflicting labels, found in its built splits."""

    # (earlier split, later split) -> indices in the earlier split of examples also in the later
    shared: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    # (earlier split, later split) -> examples of the later split also in the earlier one
    shared_later: dict[tuple[str, str], int] = field(default_factory=dict)
    # key -> its labels, for keys given more than one label (in any splits)
    conflicts: dict[Hashable, list[str]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return bool(self.conflicts) or any(self.shared_later.values())

    def describe(self, pair: bool) -> str:
        """The findings in words, as one clause."""
        what = "pairs" if pair else "examples"
        parts = [
            f"{count} of {self.sizes[later]} {later} {what} are also in {earlier}"
            for (earlier, later), count in self.shared_later.items()
            if count
        ]
        if self.conflicts:
            key, labels = next(iter(self.conflicts.items()))
            shown = key if isinstance(key, str) else " / ".join(key)
            count = len(self.conflicts)
            noun = ("pair" if pair else "text") + ("" if count == 1 else "s")
            parts.append(
                f"{count} {noun} {'has' if count == 1 else 'have'} conflicting labels "
                f"(e.g. {shown[:80]!r}: {', '.join(labels)})"
            )
        return "; ".join(parts)


def find_overlap(splits: Mapping[str, Rows], pair: bool, categorical: bool) -> Overlap:
    """Shared examples between each two of train, val and test, and conflicting labels."""
    keys = {split: example_keys(splits[split], pair) for split in SPLITS}
    overlap = Overlap(sizes={split: len(keys[split]) for split in SPLITS})
    for position, earlier in enumerate(SPLITS):
        for later in SPLITS[position + 1 :]:
            later_keys = set(keys[later])
            earlier_keys = set(keys[earlier])
            overlap.shared[(earlier, later)] = [
                index for index, key in enumerate(keys[earlier]) if key in later_keys
            ]
            overlap.shared_later[(earlier, later)] = sum(k in earlier_keys for k in keys[later])
    if categorical:
        labels: dict[Hashable, dict[str, None]] = defaultdict(dict)  # ordered sets
        for split in SPLITS:
            for key, label in zip(keys[split], splits[split].labels, strict=True):
                labels[key][label] = None
        overlap.conflicts = {k: list(ls) for k, ls in labels.items() if len(ls) > 1}
    return overlap


def resolve_overlap(
    task: str, splits: dict[str, Rows], pair: bool, categorical: bool, mode: str
) -> dict[str, Rows]:
    """`splits` after `data.overlap=mode` (see the module docstring): as given, or with the
    shared and conflicting examples dropped; `refuse` raises a ConfigError."""
    overlap = find_overlap(splits, pair, categorical)
    if not overlap.found:
        return splits
    found = overlap.describe(pair)
    if mode == "refuse":
        raise ConfigError(
            f"data.tasks.{task}: {found}: remove them from its data, or set data.overlap=drop to "
            "drop them (or data.overlap=warn to train on them as they are)."
        )
    if mode == "warn":
        log.warning(
            "Task %s: %s; training on them as they are (data.overlap=drop drops them, "
            "data.overlap=refuse stops).",
            task,
            found,
        )
        return splits
    drop: dict[str, set[int]] = {split: set() for split in SPLITS}
    for split in SPLITS:
        for index, key in enumerate(example_keys(splits[split], pair)):
            if key in overlap.conflicts:
                drop[split].add(index)
    for (earlier, _), indices in overlap.shared.items():
        drop[earlier].update(indices)
    dropped = ", ".join(f"{len(drop[s])} {s}" for s in SPLITS if drop[s])
    what = "pairs" if pair else "examples"
    log.warning("Task %s: %s; dropped %s %s (data.overlap=drop).", task, found, dropped, what)
    return {
        split: rows.select([i for i in range(len(rows)) if i not in drop[split]])
        for split, rows in splits.items()
    }
