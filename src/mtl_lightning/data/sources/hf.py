"""Tasks from Hugging Face `datasets`: a hub dataset, or local files through a packaged builder.

`data=hf` makes every task an `HFSource`: `load_dataset(path, name, split=...)` once per split
named in `splits`, then `text_column` and `label_column` picked out. Label names come from the
label column's `ClassLabel` feature when it has one. `datasets` is optional (`pip install
datasets`); a hub id needs the hub or a cached copy, and without either the run stops at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.resolve import OFFLINE_HINT, hub_reachable
from mtl_lightning.data.sources.base import (
    SPLITS,
    Examples,
    Rows,
    check_columns,
    check_dropped,
    check_label_variants,
    first_blank,
    normalize_label,
)
from mtl_lightning.data.sources.files import launch_dir
from mtl_lightning.tasks import task_type_class

# `datasets`' packaged builders: they read `data_files` and never ask the hub.
LOCAL_BUILDERS = frozenset({"csv", "json", "parquet", "text", "arrow", "pandas", "sql"})


def _offline_mode(datasets: Any) -> bool:
    """Whether `datasets` itself is offline: it reads HF_HUB_OFFLINE / HF_DATASETS_OFFLINE once,
    at import, and then never touches the network."""
    config = datasets.config
    return bool(getattr(config, "HF_HUB_OFFLINE", False) or config.HF_DATASETS_OFFLINE)


def _plain_files(files: Any, local: bool) -> Any:
    """`data_files` (a path, a list, or {split: paths}) as plain containers; for a local builder
    relative paths start from the directory the command was run in, as for `data=files` (for a
    hub dataset they are paths inside its repository)."""
    if isinstance(files, Mapping):
        return {split: _plain_files(value, local) for split, value in files.items()}
    if isinstance(files, str | os.PathLike):
        text = str(files)
        return str(launch_dir() / Path(text).expanduser()) if local and "://" not in text else text
    return [_plain_files(file, local) for file in files]


class HFSource:
    """One task from `datasets.load_dataset`; `task` is its key under `data.tasks`, for errors.

    `splits` maps this project's splits (train, val, test) to the dataset's split names; a split
    mapped to null, or left out, is carved out of train (e.g. SST-2's test labels are hidden).
    `data_files` serves local builders such as `path=csv` (or picks a hub dataset's files);
    `cache_dir` is `datasets`' cache (default: its own). `label_names` declares the label set
    and its order; by default the `ClassLabel`'s names, else the labels found in train.
    `type` is the task type (`mtl_lightning.tasks`): a pair type reads its second sentence from
    `text_pair_column`, `similarity` a number per example from `label_column`.
    """

    def __init__(
        self,
        task: str,
        path: str,
        name: str | None = None,
        splits: Mapping[str, str | None] | None = None,
        text_column: str = "text",
        label_column: str = "label",
        label_names: Sequence[str | int] | None = None,
        data_files: Any = None,
        cache_dir: str | None = None,
        type: str | None = None,  # noqa: A002 (the config key data.tasks.<task>.type)
        type_options: dict | None = None,
        text_pair_column: str = "text_pair",
    ) -> None:
        self.task = task
        self.type = type
        self.type_options = type_options
        kind = task_type_class(task, type)
        self.kind = kind
        self.text_pair_column = text_pair_column if len(kind.columns) == 2 else None
        self.numeric_labels = not kind.categorical
        self.path = path
        self.name = name
        self.splits = {"train": "train"} if splits is None else dict(splits)
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown or not self.splits.get("train"):
            raise ConfigError(
                f"data.tasks.{task}.splits={self.splits} must map train (required), val and "
                f"test to the dataset's split names, e.g. {{train: train, val: validation}}."
            )
        self.text_column = text_column
        self.label_column = label_column
        self.label_names = None if label_names is None else list(map(normalize_label, label_names))
        self.data_files = data_files
        self.cache_dir = cache_dir

    def key(self, name: str) -> str:
        return f"data.tasks.{self.task}.{name}"

    def load(self, data_dir: Path) -> Examples:
        """Load each mapped split; `data_dir` is unused: `datasets` keeps its own cache."""
        try:
            import datasets
        except ImportError:
            raise ConfigError(
                "data=hf needs the datasets package: pip install datasets (into this "
                "environment), or use data=files with exported files."
            ) from None
        self._check_hub(datasets)
        loaded = {
            split: self._load_split(datasets, split, hf_split)
            for split, hf_split in self.splits.items()
            if hf_split
        }
        feature = loaded["train"].features.get(self.label_column)
        # A ClassLabel's names, in class-id order (a score has none).
        names = None if self.numeric_labels else getattr(feature, "names", None)
        if self.label_names is None and names:
            self.label_names = list(map(normalize_label, names))
        return {split: self._examples(dataset, split, names) for split, dataset in loaded.items()}

    @property
    def local(self) -> bool:
        """A packaged builder or a local folder: nothing to fetch from the hub."""
        return self.path in LOCAL_BUILDERS or Path(self.path).expanduser().exists()

    @property
    def hub_dataset(self) -> str | None:
        """`path` when it is a hub dataset id (not a builder, nor a folder here or relative)."""
        looks_local = self.path.startswith((".", "/", "~")) or self.path.count("/") > 1
        return None if self.local or looks_local else self.path

    @property
    def origin(self) -> str:
        where = f"the Hugging Face dataset `{self.path}`" if self.hub_dataset else f"`{self.path}`"
        parts = [where]
        if self.name:
            parts.append(f"config `{self.name}`")
        splits = ", ".join(f"{ours}={theirs}" for ours, theirs in self.splits.items() if theirs)
        parts.append(f"splits {splits}")
        if self.data_files:
            parts.append(f"data_files {json.dumps(_plain_files(self.data_files, False))}")
        return ", ".join(parts)

    def _check_hub(self, datasets: Any) -> None:
        """A hub id without a reachable hub: stop now, not after `datasets`' retries."""
        if self.local or _offline_mode(datasets) or hub_reachable():
            return  # offline mode: `datasets` reads its cache, or says at once that it cannot
        raise ConfigError(
            f"{self.key('path')}={self.path}: the Hugging Face hub is unreachable (no answer "
            f"within seconds): {OFFLINE_HINT}, to read a copy in the local datasets cache, or "
            "export the dataset to files where there is a network and use data=files with them."
        )

    def _load_split(self, datasets: Any, split: str, hf_split: str):
        files = None if self.data_files is None else _plain_files(self.data_files, self.local)
        try:
            return datasets.load_dataset(
                self.path, self.name, split=hf_split, data_files=files, cache_dir=self.cache_dir
            )
        except ConnectionError:  # offline mode (the hub probe passed it) and no cached copy
            raise ConfigError(
                f"{self.key('path')}={self.path} is not in the local datasets cache and offline "
                "mode is on (HF_HUB_OFFLINE): load it once where the hub is reachable, or use "
                "data=files with the dataset exported to files."
            ) from None
        except (OSError, ValueError) as error:  # not found, bad split, bad files
            raise ConfigError(
                f"{self.key('path')}={self.path} (name={self.name}, split {hf_split} for "
                f"{split}) could not be loaded ({error}): check {self.key('path')}, "
                f"{self.key('name')} and {self.key('splits')}."
            ) from None

    def _examples(
        self, dataset: Any, split: str, names: Sequence[str] | None
    ) -> tuple[list[str], list[str]] | Rows:
        """(texts, string labels) of one split; empty texts dropped, ClassLabel ids named;
        `Rows` with the second sentences for a pair type."""
        where = f"{self.path} split {self.splits[split]} ({self.key('splits')}.{split})"
        wanted = {
            self.key("text_column"): self.text_column,
            self.key("label_column"): self.label_column,
        }
        if self.text_pair_column is not None:
            wanted[self.key("text_pair_column")] = self.text_pair_column
        check_columns(where, dataset.column_names, wanted)
        columns = [self.text_column]
        if self.text_pair_column is not None:
            columns.append(self.text_pair_column)
        empty = dict.fromkeys(columns, 0)
        second = dataset[self.text_pair_column] if self.text_pair_column else [""] * len(dataset)
        texts, labels, pairs, places = [], [], [], []
        for number, (text, pair, label) in enumerate(
            zip(dataset[self.text_column], second, dataset[self.label_column], strict=True), 1
        ):
            blank = first_blank(dict(zip(columns, (text, pair), strict=False)))
            if blank is not None:
                empty[blank] += 1
                continue
            if names and isinstance(label, int) and not 0 <= label < len(names):
                raise ConfigError(
                    f"{where} has label id {label} outside its {len(names)} classes (hidden "
                    f"test labels are -1): set {self.key('splits')}.{split}=null to carve "
                    f"{split} out of train."
                )
            if label is None or isinstance(label, bool):
                raise ConfigError(
                    f"{where} has label {label!r}: give every example a string or integer "
                    f"label in column '{self.label_column}'."
                )
            label = normalize_label(names[label] if names and isinstance(label, int) else label)
            if not label:
                raise ConfigError(
                    f"{where} row {number} has an empty label: give every example a label in "
                    f"column '{self.label_column}'."
                )
            problem = self.kind.label_problem(self.task, label, self.type_options or {})
            if problem is not None:
                raise ConfigError(f"{where} row {number} has {problem}: fix or remove that row.")
            texts.append(str(text))
            labels.append(label)
            pairs.append(str(pair))
            places.append(f"row {number}")
        keys = {self.text_column: self.key("text_column")}
        if self.text_pair_column is not None:
            keys[self.text_pair_column] = self.key("text_pair_column")
        check_dropped(where, len(dataset), empty, keys)
        if not self.numeric_labels:
            check_label_variants(where, labels, places, self.label_names, self.key("label_names"))
        return Rows(texts, labels, pairs) if self.text_pair_column else (texts, labels)
