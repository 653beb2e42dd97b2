"""The LightningDataModule: one dataset per task, tokenized once, batched by length.

Training batches of all tasks are interleaved by `data.sampling`, a sampling mode
(`mtl_lightning.data.sampling.modes`: `joint`, `alternating`, `proportional`, `temperature`, or
a class of your own by `_target_`).

The last three share `TaskSequenceBatchSampler`: the order of tasks and of batches comes from one
`EpochSeed` only, so every DDP rank picks the same task at the same step, and a resumed run the
same as an uninterrupted one. Whatever the mode, `training_step` receives `{task: batch}`.
N and M count only the tasks that train in the epoch: a task whose head is frozen then
(`only_head_frozen`) is out of the loss, and out of the train loader too.
Validation and test keep tasks apart: one DataLoader per task, each batch naming its task.
Token ids are cached under `<data_dir>/.token_cache/` (`data.token_cache`, see `token_cache`).
Examples that two splits share, and texts given two labels, are reported, dropped or refused
once the splits are built, whatever the source (`data.overlap`, see `overlap`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from mtl_lightning.core.compat import epoch_position
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.names import check_task_names
from mtl_lightning.core.resolve import load_tokenizer
from mtl_lightning.core.rules import Rule, check_values, int_at_least
from mtl_lightning.data.overlap import OVERLAP_MODES, resolve_overlap
from mtl_lightning.data.sampling.modes import SamplingMode, sampling_mode
from mtl_lightning.data.sampling.sampler import (
    EpochSeed,
    LengthBucketBatchSampler,
    NoDuplicatesBatchSampler,
    TaskScheduleBatchSampler,
    TaskSequenceBatchSampler,
)
from mtl_lightning.data.sources.base import CORPUS, SPLITS, Rows, Source, complete_splits
from mtl_lightning.data.token_cache import TokenCache
from mtl_lightning.tasks import TaskType, task_type_class

log = logging.getLogger(__name__)


# What each key of conf/data accepts (mtl_lightning.core.rules; data.tasks.* are checked by
# their sources).
DATA_RULES: dict[str, Rule] = {
    "tokenizer": Rule(str, example="sentence-transformers/all-MiniLM-L6-v2"),
    "data_dir": Rule(str, example="data"),
    "batch_size": int_at_least(32),
    "eval_batch_size": int_at_least(128),
    "max_length": int_at_least(64),  # 0 would turn truncation off
    "temperature": Rule(
        float,
        "above 0",
        lambda v: v > 0,
        fix=lambda v: (
            "use 1 for proportional sampling, larger values for more equal task shares (default 2)"
        ),
    ),
    "token_cache": Rule(bool, example="true"),
    "val_fraction": Rule(float, "at least 0 and below 1", lambda v: 0 <= v < 1, 0.1),
    "test_fraction": Rule(float, "at least 0 and below 1", lambda v: 0 <= v < 1, 0.1),
    "seed": Rule(int, example=42),
    "num_workers": int_at_least(2, least=0),
    "bucket_pool": Rule(int, "at least 1", lambda v: v >= 1, fix=lambda v: "1 is random batching"),
    "max_train_examples": int_at_least(1000, least=2, nullable=True),
    "overlap": Rule(str, f"one of {', '.join(OVERLAP_MODES)}", OVERLAP_MODES.__contains__, "warn"),
}


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """The carved-out shares leave train something (each one's own range is in `RULES`)."""
    check_values("data", {"val_fraction": val_fraction, "test_fraction": test_fraction}, DATA_RULES)
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} add up to "
            f"{val_fraction + test_fraction:g}, leaving no training examples: keep their sum "
            "below 1 (e.g. 0.1 each)."
        )


@dataclass
class TaskDataset(Dataset):
    """One task's split, tokenized: token ids without padding, label values (class ids or
    scores), and the raw texts; a pair task also has its second sentences and their ids."""

    task: str
    texts: list[str]
    input_ids: list[list[int]]
    labels: list
    text_pairs: list[str] | None = None
    pair_ids: list[list[int]] | None = None
    # Further sentences per example (the type's `extra_columns`: hard negatives) and their ids.
    extra: list[tuple[str, ...]] | None = None
    extra_ids: list[tuple[list[int], ...]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[str, int, tuple[list[int], ...], Any]:
        ids = self.input_ids[index]
        columns = (ids,) if self.pair_ids is None else (ids, self.pair_ids[index])
        if self.extra_ids is not None:
            columns += self.extra_ids[index]
        return self.task, index, columns, self.labels[index]

    def lengths(self) -> list[int]:
        """Tokens per example (both sentences of a pair), for length bucketing."""
        if self.pair_ids is None:
            return [len(ids) for ids in self.input_ids]
        return [len(a) + len(b) for a, b in zip(self.input_ids, self.pair_ids, strict=True)]

    def example_texts(self, index: int) -> tuple[str, ...]:
        """Every sentence of one example (text, text_pair, further columns)."""
        texts = (self.texts[index],)
        if self.text_pairs is not None:
            texts += (self.text_pairs[index],)
        return texts + (self.extra[index] if self.extra is not None else ())

    def fingerprint(self) -> dict[str, Any]:
        """Which examples the split holds, in order: their count and a SHA-256 of each one's
        texts and label, so that two splits compare without their texts."""
        digest = hashlib.sha256()
        pairs = self.text_pairs or [None] * len(self)
        for index, (text, pair, label) in enumerate(
            zip(self.texts, pairs, self.labels, strict=True)
        ):
            values = [text, pair, label]
            if self.extra is not None:  # only then: older splits keep their fingerprints
                values.append(list(self.extra[index]))
            digest.update(json.dumps(values).encode("utf-8") + b"\n")
        return {"examples": len(self), "sha256": digest.hexdigest()}


class ConcatTaskDataset(Dataset):
    """Task datasets end to end, addressed by one global index (for one-task-per-step modes)."""

    def __init__(self, datasets: Sequence[TaskDataset]) -> None:
        self.datasets = list(datasets)
        self.offsets = [0]
        for dataset in self.datasets:
            self.offsets.append(self.offsets[-1] + len(dataset))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> tuple[str, int, tuple[list[int], ...], Any]:
        position = bisect.bisect_right(self.offsets, index) - 1
        return self.datasets[position][index - self.offsets[position]]


def subsample(examples, count: int | None, seed: int, stratify: bool = True):
    """About `count` of `(texts, labels)` (or of `Rows`): each label's share, rounded but at
    least one example, drawn with the label's own seeded shuffle (as `stratified_split`), in the
    original order; `stratify=False` (scores, not classes) draws from all examples alike."""
    rows = Rows.of(examples)
    if count is None or len(rows) <= count:
        return examples
    groups = rows.labels if stratify else [""] * len(rows)
    by_group: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        by_group[group].append(index)
    keep = []
    for group, indices in sorted(by_group.items()):
        random.Random(f"{seed}:{group}").shuffle(indices)
        keep += indices[: max(1, round(len(indices) * count / len(rows)))]
    keep.sort()
    kept = rows.select(keep)
    return kept if isinstance(examples, Rows) else (kept.texts, kept.labels)


def tokenize_columns(
    cache: Callable[[Sequence[str]], list[list[int]]], rows: Sequence[tuple[str, ...]]
) -> list[tuple[list[int], ...]]:
    """Token ids of each example's further sentences, each column tokenized (and cached) alone."""
    columns = [cache([row[c] for row in rows]) for c in range(len(rows[0]) if rows else 0)]
    return [tuple(column[i] for column in columns) for i in range(len(rows))]


class Collator:
    """Picklable collate (DataLoader workers): each task's type pads its batch; `by_task`
    wraps the batch as `{task: batch}`."""

    def __init__(self, task_types: Mapping[str, TaskType], pad_id: int, by_task: bool = False):
        self.task_types = dict(task_types)
        self.pad_id = pad_id
        self.by_task = by_task

    def __call__(self, items: list) -> dict:
        batch = self.task_types[items[0][0]].collate(items, self.pad_id)
        return {batch["task"]: batch} if self.by_task else batch


class MultiTaskDataModule(LightningDataModule):
    def __init__(
        self,
        tasks: Mapping[str, Source],
        tokenizer: str,
        data_dir: str = "data",
        batch_size: int = 32,
        eval_batch_size: int = 128,
        max_length: int = 64,
        sampling: str | SamplingMode = "joint",
        temperature: float = 2.0,
        token_cache: bool = True,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 42,
        num_workers: int = 0,
        bucket_pool: int = 50,
        max_train_examples: int | None = None,
        only_tasks: str | Sequence[str] | None = None,
        overlap: str = "warn",
    ) -> None:
        """`bucket_pool`: training batches per length-sorted pool (1: random batching).
        `max_train_examples`: keep a fixed, seeded, stratified subsample of at most this many
        training examples per task (quick experiments, benchmarks); null keeps them all.
        `only_tasks`: the task (or list of tasks) of `tasks` to keep, e.g. for a single-task
        baseline; null keeps them all. `overlap`: what happens to examples that two splits
        share and to texts given two labels, `warn`, `drop` or `refuse` (`data.overlap`)."""
        super().__init__()
        # A task set to null (`data.tasks.<task>: null`, e.g. in a config that extends another)
        # is left out.
        tasks = {task: source for task, source in tasks.items() if source is not None}
        if not tasks:
            raise ConfigError("data.tasks is empty: give at least one task (data.tasks.<name>).")
        check_task_names(tasks, "data.tasks")
        if only_tasks is not None:
            keep = [only_tasks] if isinstance(only_tasks, str) else list(only_tasks)
            unknown = [task for task in keep if task not in tasks]
            if unknown or not keep:
                raise ConfigError(
                    f"data.only_tasks={keep} names tasks {unknown} that data.tasks lacks: use "
                    f"some of {list(tasks)}, or null for all."
                )
            tasks = {task: tasks[task] for task in keep}
        if not isinstance(sampling, str | SamplingMode):
            raise ConfigError(
                f"data.sampling={sampling} is not a sampling mode: use a name such as joint, or "
                "a node whose _target_ is a mtl_lightning.data.sampling.modes.SamplingMode class."
            )
        # The rules of conf/data, for Python users too.
        check_values(
            "data",
            {
                "batch_size": batch_size,
                "eval_batch_size": eval_batch_size,
                "max_length": max_length,
                "temperature": temperature,
                "token_cache": token_cache,
                "seed": seed,
                "num_workers": num_workers,
                "bucket_pool": bucket_pool,
                "max_train_examples": max_train_examples,
                "overlap": overlap,
            },
            DATA_RULES,
        )
        check_fractions(val_fraction, test_fraction)
        self.sources = dict(tasks)
        self.tokenizer_name = tokenizer
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_length = max_length
        self.sampling = sampling_mode(sampling, temperature)
        self.temperature = temperature
        self.token_cache = token_cache
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.bucket_pool = bucket_pool
        self.max_train_examples = max_train_examples
        self.overlap = overlap
        self.label_names: dict[str, list[str]] = {}
        self.task_types: dict[str, TaskType] = {}
        self.datasets: dict[str, dict[str, TaskDataset]] = {}
        self.splits: dict[str, dict[str, dict[str, Any]]] = {}  # task -> split -> fingerprint
        # Each task's splits as its source gave them (the others are carved out of train).
        self.given_splits: dict[str, list[str]] = {}
        self.pad_id = 0
        self.start_epoch = 0
        self.skip_steps = 0
        # Which tasks train in an epoch (set by the freezing schedule); None: every task.
        self.train_tasks: Callable[[int], Collection[str]] | None = None
        self._train_batches: dict[tuple, int] = {}  # (tasks, world size) -> batches per epoch

    def prepare_data(self) -> None:
        """Fetch whatever a source needs. Idempotent and atomic: every process may call it."""
        for source in self.sources.values():
            prepare = getattr(source, "prepare", None)
            if prepare is not None:
                prepare(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        tokenizer = load_tokenizer(self.tokenizer_name)
        limit = tokenizer.model_max_length
        # Tokenizers without a limit report a huge sentinel (int(1e30)): only a real one counts.
        if limit < 100_000 and self.max_length > limit:
            raise ConfigError(
                f"data.max_length={self.max_length} is above the {limit} tokens that "
                f"{self.tokenizer_name} accepts: set data.max_length to at most {limit}."
            )
        self.tokenizer = tokenizer  # what a checkpoint to resume or start from is checked against
        self.pad_id = tokenizer.pad_token_id or 0
        cache = TokenCache(
            tokenizer, self.max_length, self.data_dir / ".token_cache" if self.token_cache else None
        )
        for task, source in self.sources.items():
            task_type = self._load_task(task, source, cache)
            self.task_types[task] = task_type
            self.label_names[task] = task_type.labels
            sizes = ", ".join(f"{s} {len(self.datasets[task][s])}" for s in SPLITS)
            labels = task_type.labels
            classes = f"{len(labels)} classes {labels}" if labels else "scores"
            if not task_type.has_labels:
                classes = "pairs, no labels"
            log.info("Task %s (%s) %s; %s examples.", task, task_type.name, classes, sizes)
        self.splits = {
            task: {split: dataset.fingerprint() for split, dataset in splits.items()}
            for task, splits in self.datasets.items()
        }

    def record(self) -> dict[str, Any]:
        """What the data was, kept in checkpoints (`MultiTaskModule.on_save_checkpoint`): the
        length sentences were cut to (predict and encode cut there too), the settings that
        choose the splits, and each split's fingerprint (a resume must train and test on the
        same examples: `mtl_lightning.core.checkpoint.check_resume_splits`)."""
        return {
            "max_length": self.max_length,
            "settings": {
                "seed": self.seed,
                "val_fraction": self.val_fraction,
                "test_fraction": self.test_fraction,
                "max_train_examples": self.max_train_examples,
                "overlap": self.overlap,
            },
            "splits": self.splits,
        }

    def _load_task(self, task: str, source: Source, cache: TokenCache) -> TaskType:
        """Read, split and tokenize one task into `self.datasets[task]`; return its type."""
        kind = task_type_class(task, getattr(source, "type", None))
        loaded = dict(source.load(self.data_dir))
        documents = loaded.pop(CORPUS, None)
        if documents and not kind.ranks_corpus:
            raise ConfigError(
                f"data.tasks.{task}.corpus is for a task that ranks documents (type=retrieval), "
                f"and this task is of type {kind.name}: remove it."
            )
        rows = {split: Rows.of(value) for split, value in loaded.items()}
        self.given_splits[task] = [split for split in SPLITS if split in rows]
        pair = len(kind.columns) == 2
        if pair and any(r.text_pairs is None for r in rows.values()):
            raise ConfigError(
                f"data.tasks.{task}.type={kind.name} needs two sentences per example, and its "
                f"source ({type(source).__name__}) gives one: use data=files or data=hf with "
                f"data.tasks.{task}.text_pair_column, or a single-sentence type."
            )
        extra = kind.extra_columns(getattr(source, "type_options", None) or {})
        if extra and rows["train"].extra is None:
            raise ConfigError(
                f"data.tasks.{task}.type_options.{kind.extra_columns_key}={list(extra)} names "
                f"further columns, and its source ({type(source).__name__}) gives none: use "
                "data=files, or leave them out."
            )
        examples = complete_splits(
            rows, self.val_fraction, self.test_fraction, self.seed, stratify=kind.categorical
        )
        examples["train"] = subsample(
            examples["train"], self.max_train_examples, self.seed, stratify=kind.categorical
        )
        examples = resolve_overlap(task, examples, pair, kind.categorical, self.overlap)
        if documents:  # evaluation's further documents: rows without a query (see CORPUS)
            for split in ("val", "test"):
                split_rows = examples[split]
                examples[split] = Rows(
                    split_rows.texts + [""] * len(documents),
                    split_rows.labels + [""] * len(documents),
                    split_rows.text_pairs + list(documents),
                )
        task_type = kind.from_data(
            task,
            examples["train"].labels,
            getattr(source, "label_names", None),
            # An option declared null (conf/data/files.yaml, hf.yaml) takes the type's default.
            {
                k: v
                for k, v in (getattr(source, "type_options", None) or {}).items()
                if v is not None
            },
        )
        self.datasets[task] = {}
        for split in SPLITS:
            split_rows = examples[split]
            if not split_rows.texts:
                raise ConfigError(
                    f"data.tasks.{task} has no {split} examples: give it more examples per "
                    f"class (data.{split}_fraction of each is carved out of train) or its own "
                    f"{split} file."
                )
            pairs = split_rows.text_pairs if pair else None
            extra = split_rows.extra if kind.extra_columns(task_type.options) else None
            self.datasets[task][split] = TaskDataset(
                task,
                split_rows.texts,
                cache(split_rows.texts),  # each sentence column is tokenized (and cached) alone
                task_type.encode_rows(split_rows, split),
                pairs,
                None if pairs is None else cache(pairs),
                extra,
                None if extra is None else tokenize_columns(cache, extra),
            )
        return task_type

    @property
    def task_specs(self) -> dict[str, dict]:
        """Each task's type and resolved options, as the model stores them."""
        return {task: task_type.spec() for task, task_type in self.task_types.items()}

    def _bucket_sampler(
        self,
        task: str,
        split: str,
        epoch_seed: EpochSeed | None = None,
        offset: int = 0,
        sharded: bool = True,
    ) -> LengthBucketBatchSampler:
        trainer = self.trainer if sharded else None
        dataset = self.datasets[task][split]
        sampler_class = LengthBucketBatchSampler
        options = {}
        if split == "train" and self.task_types[task].no_duplicates:
            # In-batch negatives: a text twice in a batch would be its own false negative.
            sampler_class = NoDuplicatesBatchSampler
            options["texts"] = [dataset.example_texts(i) for i in range(len(dataset))]
        return sampler_class(
            dataset.lengths(),
            self.batch_size if split == "train" else self.eval_batch_size,
            epoch_seed=epoch_seed,
            pool_factor=self.bucket_pool,
            offset=offset,
            # Under DDP each rank takes its share itself (trainer=ddp sets
            # use_distributed_sampler=false: Lightning cannot wrap a custom batch sampler).
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            stream=task,
            **options,
        )

    # Where the training order stands, saved in checkpoints: Lightning creates the train iterator
    # (and prefetches a batch) before its own `set_epoch` call and keeps it on resume, and it
    # cannot fast-forward a custom batch sampler; so the samplers start at the saved epoch and,
    # for a checkpoint taken mid-epoch, skip the steps that epoch had already trained.
    def state_dict(self) -> dict:
        epochs, done = epoch_position(self.trainer)
        return {"start_epoch": epochs, "skip_steps": done}

    def load_state_dict(self, state_dict: dict) -> None:
        self.start_epoch = state_dict["start_epoch"]
        self.skip_steps = state_dict.get("skip_steps", 0)

    def _loader(self, dataset: Dataset, batch_sampler, by_task: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            collate_fn=Collator(self.task_types, self.pad_id, by_task),
            # Its own generator: creating an iterator then draws nothing from the global RNG, so
            # dropout masks do not depend on how often loaders were (re)started, e.g. on resume.
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _task_sequence_sampler(
        self, samplers: list[LengthBucketBatchSampler], tasks: list[str]
    ) -> TaskSequenceBatchSampler:
        sizes = [len(self.datasets[task]["train"]) for task in tasks]
        schedule = self.sampling.schedule(samplers, sizes)
        if isinstance(schedule, TaskScheduleBatchSampler):
            steps = dict(zip(tasks, schedule.step_counts(), strict=True))
            log.info("sampling=%s: training steps per task and epoch %s.", self.sampling, steps)
        return schedule

    def tasks_training_in(self, epoch: int) -> list[str]:
        """The tasks whose batches the train loader of `epoch` holds: all but those whose head is
        frozen then (`train_tasks`): a frozen head's task is out of the loss, so its batches
        would be loaded for nothing (joint) or be empty steps (one task per step)."""
        chosen = set(self.datasets if self.train_tasks is None else self.train_tasks(epoch))
        tasks = [task for task in self.datasets if task in chosen]
        if not tasks:
            raise ConfigError(
                f"No task trains in epoch {epoch}: the freezing schedule freezes the head of "
                f"every task in data.tasks {list(self.datasets)}; add a task whose head trains or "
                "choose another experiment."
            )
        return tasks

    def train_batches(self, epoch: int, tasks: Collection[str] | None = None) -> int:
        """Steps (batches per DDP rank) of the train loader of `epoch`, before Lightning's
        `limit_train_batches`: epochs get shorter when a frozen head's task leaves them.
        `tasks`: the tasks training then, if not this run's (a fork compares two schedules)."""
        if tasks is None:
            tasks = self.tasks_training_in(epoch)
        else:
            tasks = [task for task in self.datasets if task in set(tasks)]
        key = (tuple(tasks), self.trainer.world_size if self.trainer else 1)
        if key not in self._train_batches:  # asked for every epoch of the run: once per set
            samplers = [self._bucket_sampler(task, "train") for task in tasks]
            joint = self.sampling.joint  # max_size_cycle: as long as the longest task
            sizes = [len(self.datasets[task]["train"]) for task in tasks]
            length = (
                max(map(len, samplers)) if joint else len(self.sampling.schedule(samplers, sizes))
            )
            self._train_batches[key] = length
        return self._train_batches[key]

    def train_dataloader(self) -> CombinedLoader | DataLoader:
        # The epoch it serves: Lightning rebuilds it at the start of an epoch when the tasks
        # change (see `scenarios.schedule.FreezingSchedule.setup`), and a resumed run builds its
        # first one before the trainer's epoch is restored, hence the saved `start_epoch`.
        trainer = self.trainer
        epoch = max(self.start_epoch, trainer.current_epoch if trainer else 0)
        skip = self.skip_steps if epoch == self.start_epoch else 0
        tasks = self.tasks_training_in(epoch)
        # debug=overfit (trainer.overfit_batches): the same batches every epoch, those of epoch 0.
        epoch_seed = EpochSeed(self.seed, epoch, replay=bool(trainer and trainer.overfit_batches))
        if epoch > self.start_epoch:
            # Rebuilt at this epoch's start (the tasks changed): Lightning iterates the new loader
            # once, then calls set_epoch, then iterates it again for the epoch. Starting one
            # epoch behind makes set_epoch start the passes afresh, so the epoch trains pass 0 of
            # each task, as a loader built once (and a run resumed at this epoch) does.
            epoch_seed.epoch = epoch - 1
        if not self.sampling.joint:
            combined = ConcatTaskDataset([self.datasets[task]["train"] for task in tasks])
            samplers = [
                self._bucket_sampler(task, "train", epoch_seed, offset)
                for task, offset in zip(tasks, combined.offsets, strict=False)
            ]
            schedule = self._task_sequence_sampler(samplers, tasks)
            schedule.skip = skip
            return self._loader(combined, schedule, by_task=True)
        samplers = {task: self._bucket_sampler(task, "train", epoch_seed) for task in tasks}
        for sampler in samplers.values():  # joint: every step took one batch of every task
            sampler.skip = skip
        loaders = {
            task: self._loader(self.datasets[task]["train"], sampler)
            for task, sampler in samplers.items()
        }
        return CombinedLoader(loaders, mode="max_size_cycle")

    def _eval_loaders(self, split: str, sharded: bool = True) -> list[DataLoader]:
        return [
            self._loader(splits[split], self._bucket_sampler(task, split, sharded=sharded))
            for task, splits in self.datasets.items()
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def split_loaders(self, split: str) -> dict[str, DataLoader]:
        """`{task: loader}` over all of one split, in length order, on every DDP rank alike
        (embedding export, the accuracy a head freezes at)."""
        return dict(zip(self.datasets, self._eval_loaders(split, sharded=False), strict=True))
