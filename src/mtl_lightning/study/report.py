"""Compare the runs of a sweep folder: `report.md`, `report.json` and PNG plots beside them.

    python -m mtl_lightning.report logs/compare/<time> [--reference full_finetune]

Each run folder (`make compare` names them `<n>_<run_name>_seed<s>/` and
`baseline_<n>_<run_name>_seed<s>/`) is read from its `metrics.csv` (CSV logger),
`.hydra/config.yaml`, `.hydra/overrides.yaml`, `summary.json` and `test_predictions/<task>.csv`
(written by `train()` and its callbacks); nothing is retrained.
Runs are grouped by scenario, loss weighting (`weighting=<name>`; a label `<scenario>+<name>`
where it is not static) and training-set size (`data.max_train_examples`); their seeds are
the repeats. A run of `data.only_tasks=<one task>` with full fine-tuning is that task's
single-task baseline. Differences between scenarios are paired on the same test examples (same
task, seed and size: the same test split) and tested over seeds, see `mtl_lightning.study.stats`;
seeds whose test split is the same examples (found from their `test_predictions`, whatever the
config says) share its bootstrap resamples. A study at an equal tuning budget
(`make compare TUNE=N`) has its searches in `tune/<size>/<label>/`: the report shows each one's
chosen configuration and its expected best validation score against the number of trials
(`tuning`). The plots need matplotlib (the `report` extra), imported only when plotting.
"""

from __future__ import annotations

import csv
import json
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from mtl_lightning.callbacks.test_predictions import PREDICTIONS_DIR, read_predictions
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.names import inside
from mtl_lightning.core.summary import SUMMARY_FILE, read_summary
from mtl_lightning.scenarios.build import scenario_name
from mtl_lightning.study import stats
from mtl_lightning.study import tune as searches
from mtl_lightning.tasks import DEFAULT_TYPE, TASK_TYPES, TaskType, build_task_type

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_FILE = "report.md"
REPORT_JSON = "report.json"
TIME_PLOT = "time_vs_accuracy.png"
MISSING = "—"
ALL = "all"  # the size label of a run on all training examples (data.max_train_examples=null)
BASELINE = "single_task"  # the scenario label of single-task baselines
REFERENCE = "full_finetune"


@dataclass
class Run:
    """One run folder of a sweep: its config, its metrics by epoch, its summary."""

    folder: Path
    scenario: str
    seed: int | None
    overrides: list[str]
    history: dict[str, list[tuple[int | None, float]]] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    size: int | None = None  # data.max_train_examples
    only_tasks: list[str] | None = None  # data.only_tasks
    weighting: str = "static"  # the loss weighting's name (conf/weighting)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def baseline_task(self) -> str | None:
        """The task of a single-task baseline (full fine-tuning of one task alone), else None."""
        one_task = self.only_tasks is not None and len(self.only_tasks) == 1
        baseline = self.scenario in (REFERENCE, BASELINE)  # older runs: full_finetune
        return self.only_tasks[0] if one_task and baseline else None

    @property
    def label(self) -> str:
        """The run's scenario in the study: its freezing scenario (`+<weighting>` where that is
        not static), or `single_task`."""
        if self.baseline_task:
            return BASELINE
        return self.scenario if self.weighting == "static" else f"{self.scenario}+{self.weighting}"

    @property
    def size_label(self) -> str:
        return ALL if self.size is None else str(self.size)

    def predictions(self, task: str) -> tuple[list[int], list[int], list[int]] | None:
        """`(idx, label, pred)` of the run's test examples of `task`, or None without the file."""
        path = self.folder / PREDICTIONS_DIR / f"{task}.csv"
        return read_predictions(path) if path.is_file() else None

    def curve(self, metric: str) -> list[tuple[int, float]]:
        """`(epoch, value)` per epoch, the last value of an epoch logged twice (a resume)."""
        by_epoch = {
            epoch: value for epoch, value in self.history.get(metric, []) if epoch is not None
        }
        return sorted(by_epoch.items())

    def best(self, metric: str) -> float | None:
        values = [value for _, value in self.history.get(metric, [])]
        return max(values) if values else None

    def last(self, metric: str) -> float | None:
        values = self.history.get(metric, [])
        return values[-1][1] if values else None

    @property
    def train_seconds(self) -> float | None:
        """What training this run cost, a fork's source epochs included (summary.json)."""
        return self.summary.get("train_seconds")

    @property
    def fork_source(self) -> str | None:
        """The run folder's name this run forked from, if it did."""
        fork = self.summary.get("fork")
        return Path(fork["from"]).parent.parent.name if fork else None

    @property
    def reused_seconds(self) -> float:
        """Of `train_seconds`, those a fork took over from its source (spent there, once)."""
        return float((self.summary.get("fork") or {}).get("train_seconds") or 0.0)

    @property
    def trainable_params(self) -> int | None:
        return self.summary.get("trainable_params")


def _read_metrics(path: Path) -> dict[str, list[tuple[int | None, float]]]:
    """Every logged value of `metrics.csv`, in logging order, keyed by metric name."""
    history: dict[str, list[tuple[int | None, float]]] = {}
    with path.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            epoch = int(row["epoch"]) if row.get("epoch") else None
            for key, value in row.items():
                if key in ("epoch", "step") or not value:
                    continue
                history.setdefault(key, []).append((epoch, float(value)))
    return history


def _job_order(folder: Path) -> tuple[float, str]:
    """Hydra's job number first (`10_x` after `2_x`), then the name."""
    match = re.match(r"(\d+)_", folder.name)
    return (int(match.group(1)) if match else math.inf, folder.name)


def load_run(folder: Path) -> Run:
    """Read one run folder (it has `.hydra/config.yaml` and `metrics.csv`)."""
    config = OmegaConf.load(folder / ".hydra" / "config.yaml")
    overrides_file = folder / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    # Literal keys only: the rest holds `${hydra:...}` interpolations, unresolvable out of Hydra.
    only_tasks = OmegaConf.select(config, "data.only_tasks", default=None)
    if isinstance(only_tasks, str):
        only_tasks = [only_tasks]
    return Run(
        folder=folder,
        scenario=scenario_name(config) or MISSING,
        seed=OmegaConf.select(config, "seed", default=None),
        overrides=[str(o) for o in overrides],
        history=_read_metrics(folder / "metrics.csv"),
        summary=read_summary(folder),
        size=OmegaConf.select(config, "data.max_train_examples", default=None),
        only_tasks=None if only_tasks is None else [str(t) for t in only_tasks],
        weighting=weighting_name(overrides, config),
    )


def weighting_name(overrides: Sequence[str], config) -> str:
    """The run's loss weighting: its `weighting=<name>` override, else the older spelling
    `model.loss_weighting`, else the class name of a `weighting._target_` outside the package,
    else static."""
    for override in reversed(overrides):
        key, _, value = str(override).lstrip("+").partition("=")
        if key == "weighting" and value:
            return value
    alias = OmegaConf.select(config, "model.loss_weighting", default=None)
    if alias and alias != "static":
        return str(alias)
    # A class given by its _target_ alone (no conf/weighting file): its class name.
    target = str(OmegaConf.select(config, "weighting._target_", default=None) or "")
    shipped = target.startswith("mtl_lightning.weighting.")
    return target.rsplit(".", 1)[-1] if target and not shipped else "static"


def _tested(metrics: Path) -> bool:
    """Whether `metrics.csv` holds a test metric's value: the run got to its test."""
    with metrics.open(newline="", encoding="utf-8") as file:
        return any(
            v for row in csv.DictReader(file) for k, v in row.items() if k.startswith("test/")
        )


def unfinished(folder: Path) -> str | None:
    """Why a run folder (it has `.hydra/config.yaml`) holds no finished run, or None when it
    does. A run writes `summary.json` last, after its test; a folder without one holds a
    finished run only if its `metrics.csv` has test values (a run from before summaries)."""
    metrics = folder / "metrics.csv"
    if not (folder / SUMMARY_FILE).is_file():
        if metrics.is_file() and _tested(metrics):
            return None
        last = folder / "checkpoints" / "last.ckpt"
        resume = f"; resume it with ckpt_path={last}" if last.is_file() else ""
        return (
            "no summary.json and no test metrics: it stopped before its end (killed, preempted "
            f"or failed) or is still running{resume}"
        )
    try:
        read_summary(folder)
    except ConfigError:
        return "summary.json is cut off (not valid JSON), its write was stopped: rerun it"
    if not metrics.is_file():
        return "no metrics.csv: the report reads the CSV logger's (logger=default or csv)"
    return None


def scan_sweep(sweep_dir: str | Path) -> tuple[list[Run], dict[str, str]]:
    """The finished runs of a sweep folder in job order, and the run folders that hold no
    finished run, by name, with why (`unfinished`): the report names them, never drops them
    unsaid."""
    sweep = Path(sweep_dir).expanduser()
    if not sweep.is_dir():
        raise ConfigError(f"sweep folder {sweep} does not exist: give a multirun's sweep folder.")
    folders = [
        p
        for p in sorted(sweep.iterdir(), key=_job_order)
        if (p / ".hydra" / "config.yaml").is_file()
    ]
    incomplete = {p.name: why for p in folders if (why := unfinished(p)) is not None}
    runs = [load_run(p) for p in folders if p.name not in incomplete]
    if not runs:
        also = f" ({len(incomplete)} unfinished: {sorted(incomplete)})" if incomplete else ""
        raise ConfigError(
            f"sweep folder {sweep} holds no finished run folders (.hydra/config.yaml, "
            f"metrics.csv and summary.json){also}: give the hydra.sweep.dir of a finished "
            "multirun, e.g. logs/compare/<time>."
        )
    return runs, incomplete


def load_runs(sweep_dir: str | Path) -> list[Run]:
    """The finished runs of a sweep folder, in job order (`scan_sweep`)."""
    return scan_sweep(sweep_dir)[0]


def _recorded_types(run: Run) -> dict[str, TaskType]:
    """The task types that the run's summary.json records (`task_types`: each one's spec)."""
    labels = run.summary.get("tasks") or {}
    return {
        task: build_task_type(task, labels.get(task) or [], spec)
        for task, spec in (run.summary.get("task_types") or {}).items()
    }


def task_names(runs: Sequence[Run]) -> list[str]:
    """Tasks with a validation primary metric (their type's: accuracy, Spearman, ...) in any
    run, in order of first appearance."""
    tasks: dict[str, None] = {}
    shipped = {cls.primary for cls in TASK_TYPES.values()}
    for run in runs:
        recorded = _recorded_types(run)
        for metric in run.history:
            stage, _, rest = metric.partition("/")
            task, _, name = rest.rpartition("/")
            primaries = {recorded[task].primary} if task in recorded else shipped
            if stage == "val" and task and name in primaries:
                tasks.setdefault(task)
    return list(tasks)


def task_type(runs: Sequence[Run], task: str) -> TaskType:
    """`task`'s type: as its runs' summary.json records it, or, for runs from before that
    record, the shipped type whose primary metric they logged. The report shows its
    `report_metrics` and compares runs with its `resampled_metrics`; it names no metric."""
    for run in runs:
        spec = (run.summary.get("task_types") or {}).get(task)
        if spec is not None:
            return build_task_type(task, (run.summary.get("tasks") or {}).get(task) or [], spec)
    labels = next(
        (run.summary["tasks"][task] for run in runs if task in run.summary.get("tasks", {})), []
    )
    for cls in TASK_TYPES.values():
        if any(f"val/{task}/{cls.primary}" in run.history for run in runs):
            return cls(task, labels)
    return TASK_TYPES[DEFAULT_TYPE](task, labels)


def primary_mean(run: Run, stage: str, best: bool = False) -> float | None:
    """The run's mean over tasks of each one's primary metric (`val/primary_mean`; runs
    written before it existed: `acc_mean`)."""
    value = run.best if best else run.last
    found = value(f"{stage}/primary_mean")
    return found if found is not None else value(f"{stage}/acc_mean")


def _size_order(size: str) -> float:
    return math.inf if size == ALL else int(size)


def _seed_order(seed: int | None) -> tuple[bool, int]:
    return (seed is None, seed or 0)


def _labels(runs: Sequence[Run]) -> list[str]:
    """Scenario labels in order of first appearance, the single-task baseline last."""
    labels = list(dict.fromkeys(run.label for run in runs if run.label != BASELINE))
    return labels + ([BASELINE] if any(run.label == BASELINE for run in runs) else [])


def _rng_seed(*key: object) -> int:
    """A fixed bootstrap seed per test split: the report is the same every time it is built."""
    return zlib.crc32(":".join(map(str, key)).encode())


def fingerprint_of_test_split(task: str, index: Sequence[int], labels: Sequence[float]) -> str:
    """What identifies a test split: its examples' `idx` and true labels, in `idx` order. Seeds
    with `data.seed` fixed, a given test split (`data=hf`, `data=files` with `test=`) have the
    same one; seeds that split their data each their own way almost surely do not (two splits
    agree on every label of every `idx` by chance only when tiny)."""
    text = repr((task, list(index), list(labels)))
    return f"{zlib.crc32(text.encode()):08x}-{len(index)}"


def _paired_replicates(
    runs: Sequence[Run], kind: TaskType, samples: int, notes: list[str]
) -> tuple[dict[str, stats.Replicates], str | None]:
    """Bootstrap replicates of the runs scored on one test split (same task, seed and size),
    keyed by label, and the split's fingerprint; a run whose test examples differ from the first
    run's is left out. The resamples are seeded by the fingerprint, so seeds sharing a test split
    draw the same resamples of it."""
    task = kind.task
    scored = [(run, run.predictions(task)) for run in runs]
    scored = [(run, columns) for run, columns in scored if columns is not None]
    if not scored:
        return {}, None
    first_run, (index, labels, _) = scored[0]
    preds = {}
    for run, (run_index, run_labels, run_preds) in scored:
        if run_index != index or run_labels != labels:
            notes.append(
                f"`{run.name}` has other {task} test examples than `{first_run.name}` (same "
                "seed and size): left out of the paired tests; was the data config the same?"
            )
            continue
        preds[run.label] = run_preds
    split = fingerprint_of_test_split(task, index, labels)
    return stats.bootstrap(kind, labels, preds, samples, _rng_seed(task, split)), split


def _delta(
    pairs: list[tuple[int, stats.Replicates, stats.Replicates]],
    metrics: Sequence[str],
    split_of: dict[int | None, str],
    *key: object,
) -> dict | None:
    if not pairs:
        return None
    result = {}
    for metric in metrics:
        delta = stats.compare_over_seeds(
            [(a, b) for _, a, b in pairs],
            metric,
            splits=[split_of[seed] for seed, _, _ in pairs],
            seed=_rng_seed(*key, metric),
        )
        result[metric] = {**delta, "seeds": [seed for seed, _, _ in pairs]}
    return result


def _shared_splits(split_of: dict[int | None, str]) -> list[list[int | None]]:
    """The groups of seeds whose test split is the same examples (two or more seeds)."""
    groups: dict[str, list[int | None]] = {}
    for seed in sorted(split_of, key=_seed_order):
        groups.setdefault(split_of[seed], []).append(seed)
    return [seeds for seeds in groups.values() if len(seeds) > 1]


def _adjust_over_family(by_size: dict) -> int:
    """Holm-adjust the seed-level p-values of every difference in the report, one family, and
    set each one's `p_holm`, `within_noise` and `seeds_for_power_holm` (at alpha over the
    family's size) from it; returns the family's size."""
    family = [
        by_metric
        for section in by_size.values()
        for by_task in section["deltas"].values()
        for entry in by_task.values()
        for versus in entry.values()
        if versus
        for by_metric in versus.values()
        if by_metric["p"] is not None
    ]
    for delta, adjusted in zip(family, stats.holm([d["p"] for d in family]), strict=True):
        delta["p_holm"] = adjusted
        delta["within_noise"] = adjusted >= stats.ALPHA
        if delta["power_spread"] is not None:  # Holm's strictest step: alpha / the family's size
            delta["seeds_for_power_holm"] = stats.seeds_for_power(
                delta["per_seed"], stats.ALPHA / len(family), spread=delta["power_spread"]
            )
    return len(family)


def provenance(runs: Sequence[Run]) -> dict:
    """Which code the runs came from and when they ran, from their summaries: `commits` (each
    commit's sha and its runs, `dirty` counting those from a tree with uncommitted changes),
    `unknown` (runs without a commit: not a git checkout, or older summaries), and `started`,
    `finished`, `wall_seconds` (the first run's start to the last one's end, UTC; None unless
    every run recorded both as times; a resumed run's start is its resumed part's))."""
    commits: dict[str, dict] = {}
    unknown = 0
    for run in runs:
        commit = run.summary.get("commit")
        if not isinstance(commit, dict) or not commit.get("sha"):
            unknown += 1
            continue
        entry = commits.setdefault(commit["sha"], {"sha": commit["sha"], "runs": 0, "dirty": 0})
        entry["runs"] += 1
        entry["dirty"] += bool(commit.get("dirty"))
    span = {"started": None, "finished": None, "wall_seconds": None}
    times = [_utc(run.summary.get(key)) for run in runs for key in ("started", "finished")]
    if runs and all(times):
        first, last = min(times[::2]), max(times[1::2])
        span = {
            "started": first.isoformat(timespec="seconds"),
            "finished": last.isoformat(timespec="seconds"),
            "wall_seconds": (last - first).total_seconds(),
        }
    return {"commits": list(commits.values()), "unknown": unknown, **span}


def _utc(text: object) -> datetime | None:
    """An ISO 8601 time of a summary, as UTC (one without a zone is taken as UTC); None when
    missing or not a time."""
    if not isinstance(text, str):
        return None
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        return None
    return found if found.tzinfo else found.replace(tzinfo=timezone.utc)


def _provenance_line(found: dict) -> str:
    """`Code: commit 19bef5d (21 runs). Ran 2026-12-06 01:52 to 03:20 UTC: 1h28m from the
    first run's start to the last one's end.`"""
    parts = [
        f"commit {c['sha'][:7]} ({c['runs']} run{'s' if c['runs'] > 1 else ''}"
        + (f", {c['dirty']} with uncommitted changes" if c["dirty"] else "")
        + ")"
        for c in found["commits"]
    ]
    if found["unknown"]:
        parts.append(
            f"{found['unknown']} run{'s' if found['unknown'] > 1 else ''} without a recorded commit"
        )
    line = f"Code: {', '.join(parts)}." if parts else "Code: not recorded."
    if found["wall_seconds"] is None:
        return line + " When they ran: not recorded by every run."
    first = datetime.fromisoformat(found["started"])
    last = datetime.fromisoformat(found["finished"])
    minutes = round(found["wall_seconds"] / 60)
    to = last.strftime("%H:%M" if last.date() == first.date() else "%Y-%m-%d %H:%M")
    return (
        f"{line} Ran {first.strftime('%Y-%m-%d %H:%M')} to {to} UTC: {minutes // 60}h"
        f"{minutes % 60:02d}m from the first run's start to the last one's end."
    )


def study(
    runs: Sequence[Run],
    tasks: Sequence[str],
    reference: str | None = REFERENCE,
    samples: int = stats.BOOTSTRAP_SAMPLES,
    incomplete: dict[str, str] | None = None,
) -> dict:
    """The numbers of report.json: per training-set size, per scenario and task, each task's
    primary metric and its companion over seeds (accuracy and macro-F1; Spearman and Pearson);
    the single-task baselines; and the paired differences of every scenario from the baseline
    and from `reference` (None: none); `incomplete`: the sweep's run folders left out, by name,
    with why (`scan_sweep`). The top level repeats the largest size."""
    if reference not in {run.label for run in runs}:
        reference = None
    sizes = sorted({run.size_label for run in runs}, key=_size_order)
    types = {task: task_type(runs, task) for task in tasks}
    metrics_of = {task: tuple(kind.report_metrics) for task, kind in types.items()}
    notes: list[str] = []
    by_size = {}
    for size in sizes:
        size_runs = [run for run in runs if run.size_label == size]
        # (label, task) -> seed -> run; a later run of the same seed replaces an earlier one.
        cells: dict[tuple[str, str], dict[int | None, Run]] = {}
        for run in size_runs:
            for task in tasks:
                if run.last(f"test/{task}/{metrics_of[task][0]}") is None:
                    continue
                seeds = cells.setdefault((run.label, task), {})
                if run.seed in seeds:
                    notes.append(
                        f"`{run.name}` repeats {run.label}, seed {run.seed}, size {size} of "
                        f"`{seeds[run.seed].name}`: only `{run.name}` counts."
                    )
                seeds[run.seed] = run
        scenarios: dict[str, dict] = {}
        baselines: dict[str, dict] = {}
        for (label, task), seeds in cells.items():
            order = sorted(seeds, key=_seed_order)
            numbers = {"seeds": order}
            for metric in metrics_of[task]:
                values = [seeds[seed].last(f"test/{task}/{metric}") for seed in order]
                known = [(seed, v) for seed, v in zip(order, values, strict=True) if v is not None]
                numbers[metric] = {
                    **stats.over_seeds([v for _, v in known]),
                    "seeds": [seed for seed, _ in known],
                }
            target = baselines if label == BASELINE else scenarios.setdefault(label, {})
            target[task] = numbers
        deltas: dict[str, dict] = {}
        shared: dict[str, list[list[int | None]]] = {}
        for task in tasks:
            replicates: dict[tuple[str, int | None], stats.Replicates] = {}
            split_of: dict[int | None, str] = {}
            task_seeds = {seed for (_, t), c in cells.items() if t == task for seed in c}
            for seed in sorted(task_seeds, key=_seed_order):
                split_runs = [c[seed] for (_, t), c in cells.items() if t == task and seed in c]
                found, split = _paired_replicates(split_runs, types[task], samples, notes)
                for label, reps in found.items():
                    replicates[(label, seed)] = reps
                if split is not None:
                    split_of[seed] = split
            if _shared_splits(split_of):
                shared[task] = _shared_splits(split_of)
            labels = {label for label, _ in replicates}
            seeds = sorted({seed for _, seed in replicates}, key=_seed_order)
            for label in sorted(labels - {BASELINE}):
                entry = {}
                for name, other in (("vs_single_task", BASELINE), ("vs_reference", reference)):
                    if other is None or other == label:
                        continue
                    pairs = [
                        (seed, replicates[(label, seed)], replicates[(other, seed)])
                        for seed in seeds
                        if (label, seed) in replicates and (other, seed) in replicates
                    ]
                    entry[name] = _delta(
                        pairs, metrics_of[task], split_of, task, size, label, other
                    )
                deltas.setdefault(label, {})[task] = entry
        by_size[size] = {
            "scenarios": scenarios,
            "baselines": baselines,
            "deltas": deltas,
            "delta_m": _delta_m(cells, types),
            "shared_test_splits": shared,
        }
    family_size = _adjust_over_family(by_size)
    largest = by_size[sizes[-1]]
    # A fork's reused seconds were spent by its source: counted once, there, if it is here.
    names = {run.name for run in runs}
    forks = [run for run in runs if run.reused_seconds and run.fork_source in names]
    seconds = [
        run.train_seconds - (run.reused_seconds if run in forks else 0.0)
        for run in runs
        if run.train_seconds
    ]
    return {
        "test": stats.TEST_NAME,
        "fixed_models_test": stats.FIXED_MODELS_TEST_NAME,
        "family_size": family_size,
        "alpha": stats.ALPHA,
        "metrics": {task: list(metrics_of[task]) for task in tasks},
        # Each metric's name in words (`name`), as a table header (`short`), and its direction.
        "metric_names": {
            task: {
                key: {"name": m.name, "short": m.short, "higher_is_better": m.higher_is_better}
                for key, m in kind.report_metrics.items()
            }
            for task, kind in types.items()
        },
        "bootstrap_samples": samples,
        "provenance": provenance(runs),
        "reference": reference,
        "train_seconds_total": sum(seconds),  # each second once: a fork's reused ones not again
        "reused_seconds": sum(run.reused_seconds for run in forks),
        "forks": {run.name: run.summary["fork"]["from"] for run in forks},
        "seeds": sorted({run.seed for run in runs}, key=_seed_order),
        # Run folders that hold no finished run: not in any number here.
        "incomplete": dict(incomplete or {}),
        "sizes": sizes,
        "size": sizes[-1],
        **largest,
        "by_size": by_size,
        "notes": list(dict.fromkeys(notes)),
    }


def _delta_m(
    cells: dict[tuple[str, str], dict[int | None, Run]], types: dict[str, TaskType]
) -> dict[str, dict]:
    """Per scenario label, Δm (%) over the single-task baselines (`stats.delta_m_over_seeds`):
    every task and each of its type's report metrics, each seed against the same seed's
    baselines; a metric better when lower counts with its sign flipped."""
    lower = {
        (task, key)
        for task, kind in types.items()
        for key, metric in kind.report_metrics.items()
        if not metric.higher_is_better
    }

    def by_seed(label: str) -> dict[int | None, dict[tuple[str, str], float]]:
        found: dict[int | None, dict[tuple[str, str], float]] = {}
        for task, kind in types.items():
            for seed, run in cells.get((label, task), {}).items():
                for metric in kind.report_metrics:
                    value = run.last(f"test/{task}/{metric}")
                    if value is not None:
                        found.setdefault(seed, {})[(task, metric)] = value
        return found

    baseline = by_seed(BASELINE)
    labels = dict.fromkeys(label for label, _ in cells if label != BASELINE)
    result = {}
    for label in labels:
        numbers = stats.delta_m_over_seeds(by_seed(label), baseline, lower)
        if numbers["n"]:
            result[label] = numbers
    return result


def _delta_m_lines(numbers: dict) -> list[str]:
    """report.md's Δm section: one row per scenario (and weighting) and training-set size."""
    rows = []
    for size in numbers["sizes"]:
        for label, cell in numbers["by_size"][size].get("delta_m", {}).items():
            spread = MISSING if cell["std"] is None else f"{cell['std']:.2f}"
            interval = "n=1, no CI" if cell["ci95"] is None else _interval_of(cell["ci95"])
            per_seed = ", ".join(
                f"{seed}: {value:+.2f}"
                for seed, value in zip(cell["seeds"], cell["values"], strict=True)
            )
            rows.append(
                [label, size, str(cell["n"]), f"{cell['mean']:+.2f}", spread, interval, per_seed]
            )
    if not rows:
        return []
    header = ["scenario", "size", "seeds", "Δm (%)", "std", "95% CI", "per seed"]
    return [
        "",
        "## Δm over the single-task baselines",
        "",
        "Δm (Maninis et al. 2019, as LibMTL): the mean over tasks and their two test metrics of "
        f"(M − M_{BASELINE}) / M_{BASELINE} in percent (a metric better when lower would count "
        "with the sign flipped; every metric here is better when higher); each seed against the "
        "same seed's baselines, then the mean over seeds with its 95% t-interval. Positive: "
        "better than training each task alone.",
        "",
        *_table(header, rows),
    ]


def _best_epochs(run: Run, task: str) -> str:
    """`own / chosen`: the task's best val epoch and the tested checkpoint's (summary.json's
    `best_epochs`), `!` where they are more than one epoch apart; — when not recorded."""
    best = run.summary.get("best_epochs") or {}
    own, chosen = (best.get("per_task") or {}).get(task), best.get("chosen")
    if own is None or chosen is None:
        return MISSING
    return f"{own} / {chosen}" + (" !" if abs(own - chosen) > 1 else "")


def _short(numbers: dict, task: str, metric: str) -> str:
    """A metric's table header, as its task type names it (report.json's `metric_names`)."""
    return numbers["metric_names"][task][metric]["short"]


def _fmt(value: float | int | None, spec: str) -> str:
    return MISSING if value is None else format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _spread(numbers: dict | None) -> str:
    """`mean ± std`, or the one value with `n=1`."""
    if not numbers or numbers["mean"] is None:
        return MISSING
    if numbers["n"] == 1:
        return f"{numbers['mean']:.4f} (n=1)"
    return f"{numbers['mean']:.4f} ± {numbers['std']:.4f}"


def _interval(numbers: dict | None) -> str:
    if not numbers or numbers["mean"] is None:
        return MISSING
    if numbers["ci95"] is None:
        return "n=1, no CI"
    low, high = numbers["ci95"]
    return f"[{low:.4f}, {high:.4f}]"


def _per_seed(numbers: dict | None) -> str:
    if not numbers or not numbers["values"]:
        return MISSING
    pairs = zip(numbers["seeds"], numbers["values"], strict=True)
    return ", ".join(f"{seed}: {value:.4f}" for seed, value in pairs)


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _interval_of(ci95: Sequence[float]) -> str:
    low, high = ci95
    return f"[{low:+.4f}, {high:+.4f}]"


def _difference(delta: dict | None) -> str:
    """`+0.0300 [+0.0100, +0.0500] p=0.004, Holm p=0.020; fixed models p<0.001`: the
    seed-level interval and p-values, `≈` when within noise by the Holm-adjusted one, then the
    example-level bootstrap's p-value (one seed: no seed-level test, its interval instead)."""
    if not delta:
        return MISSING
    fixed = delta["fixed_models"]
    if delta["p"] is None:
        return (
            f"{delta['delta']:+.4f}, one seed: no seed-level test; fixed models "
            f"{_interval_of(fixed['ci95'])} {_p(fixed['p'])}"
        )
    text = f"{delta['delta']:+.4f} {_interval_of(delta['ci95'])} {_p(delta['p'])}, Holm "
    text += _p(delta["p_holm"]) + (" ≈" if delta["within_noise"] else "")
    return text + f"; fixed models {_p(fixed['p'])}"


def _power_lines(numbers: dict, tasks: Sequence[str]) -> list[str]:
    """What the seed-level test can see with these seeds, and the seeds each difference within
    noise would need (its primary metric)."""
    seeds = len(numbers["seeds"])
    if seeds < 2:
        return [
            "",
            "One seed: no seed-level test, so no ≈ marks; the fixed-models bootstrap says only "
            "whether these trained models differ on this test set. Give `SEEDS` (three or more).",
        ]
    lines = [
        "",
        f"With {seeds} seeds the seed-level test has little power: the t-test has {seeds - 1} "
        f"degree{'s' if seeds > 2 else ''} of freedom (its 97.5% quantile "
        f"{stats.t_quantile_975(seeds - 1):.2f}, "
        "against 1.96 with many seeds), and a small gap needs many seeds to stand out from "
        "how much training varies between them. A difference within noise is not shown to be "
        "none. The seeds each such difference would need (`SEEDS`) for 80% power in a paired "
        "t-test at α = 0.05, and in brackets at Holm's strictest step (α divided by the "
        "family's size), if its mean is as observed and its spread over seeds the larger of "
        "the per-seed differences' std and the test examples' noise within a seed (the "
        "fixed-models bootstrap's std of a seed's difference), which three close seeds can "
        "understate:",
        "",
    ]
    found = []
    for size in numbers["sizes"]:
        for label, by_task in numbers["by_size"][size]["deltas"].items():
            for task in tasks:
                for versus, by_metric in (by_task.get(task) or {}).items():
                    delta = by_metric and by_metric[numbers["metrics"][task][0]]
                    if not delta or not delta["within_noise"] or delta["delta"] == 0:
                        continue
                    other = BASELINE if versus == "vs_single_task" else numbers["reference"]
                    count = (
                        "no count: the seeds share one test split, whose noise more seeds do "
                        "not average away (a larger test split does)"
                        if delta["shared_test_split"]
                        else f"{_seeds(delta['seeds_for_power'])} "
                        f"({_seeds(delta['seeds_for_power_holm'])})"
                    )
                    found.append(
                        f"- `{label}` − `{other}`, `{task}` "
                        f"{_short(numbers, task, numbers['metrics'][task][0])}"
                        f" ({_size_title(size)}): {delta['delta']:+.4f}, {count}"
                    )
    return lines + (found or ["- (no difference within noise)"])


def _seeds(count: int | None) -> str:
    return f"{count} seeds" if count else "more than 1000 seeds"


def _shared_split_lines(numbers: dict) -> list[str]:
    found = [
        f"`{task}` ({_size_title(size)}): seeds {', '.join(map(str, group))}"
        for size in numbers["sizes"]
        for task, groups in numbers["by_size"][size]["shared_test_splits"].items()
        for group in groups
    ]
    if not found:
        return ["Every seed has a test split of its own (none of their test examples agree)."]
    return [
        "Seeds sharing one test split (the same `idx` and labels in their test predictions), "
        "which share each bootstrap resample of it: " + "; ".join(found) + "."
    ]


def _size_title(size: str) -> str:
    return "all training examples" if size == ALL else f"{size} training examples per task"


def study_markdown(numbers: dict, tasks: Sequence[str]) -> list[str]:
    """The study's sections of report.md: spread over seeds, then paired differences."""
    reference = numbers["reference"]
    metrics = numbers["metrics"]
    versus = [BASELINE] + ([reference] if reference else [])
    lines = [
        "## Test metrics over seeds",
        "",
        "Each task's primary metric and its companion (accuracy and macro-F1; Spearman and "
        "Pearson for a similarity task): mean ± sample std over seeds, the 95% t-interval of the "
        "mean, and each seed's number. "
        f"`{BASELINE}`: the single-task baseline, full fine-tuning of the task alone (same "
        "encoder, epochs and seeds).",
    ]
    for size in numbers["sizes"]:
        section = numbers["by_size"][size]
        rows_of = {**section["scenarios"], BASELINE: None}
        for task in tasks:
            rows = []
            for label in rows_of:
                cell = section["baselines"].get(task) if label == BASELINE else rows_of[label]
                cell = cell.get(task) if cell and label != BASELINE else cell
                if not cell:
                    continue
                found = [cell[metric] for metric in metrics[task]]
                rows.append(
                    [label, str(found[0]["n"])]
                    + [text for m in found for text in (_spread(m), _interval(m))]
                    + [_per_seed(m) for m in found]
                )
            if not rows:
                continue
            lines += ["", f"### `{task}`, {_size_title(size)}", ""]
            shorts = [_short(numbers, task, metric) for metric in metrics[task]]
            header = ["scenario", "seeds"]
            header += [text for a in shorts for text in (f"test {a}", f"{a} 95% CI")]
            lines += _table(header + [f"{a} per seed" for a in shorts], rows)
    lines += _delta_m_lines(numbers)
    lines += [
        "",
        "## Differences from the single-task baseline and from the reference",
        "",
        f"Scenario minus `{BASELINE}`, and minus the reference "
        + (f"`{reference}`" if reference else "(none: give `--reference <scenario>`)")
        + ": the mean over seeds of the difference in each test metric (runs of one seed and "
        "size share their test split, so each seed's difference is paired on the same "
        "examples), [its 95% interval] and two-sided p-value at the seed level, then that "
        "p-value Holm-adjusted, then the fixed-models p-value.",
        "",
        "- Seed level (does the scenario differ?): the larger p, and the union of the "
        "intervals, of a paired t-test over the per-seed differences and of a two-level "
        f"bootstrap ({numbers['bootstrap_samples']:,} resamples of the seeds, then of the test "
        "examples within each). Both count how much training varies from seed to seed. The "
        "t-test's t quantiles stay honest with few seeds, where a bootstrap over three seeds "
        "(ten distinct draws) understates their spread; the bootstrap counts the noise of a "
        "test split the seeds share, which a t-test over them cannot see.",
        (
            f"- ≈ marks a difference within noise: its Holm-adjusted seed-level p ≥ "
            f"{numbers['alpha']}, Holm's step-down adjustment over the report's family of "
            f"{numbers['family_size']} comparisons (every scenario, task, metric and "
            "training-set size, against the baseline and the reference), so that the chance of "
            "any false difference among them stays at most 5%. The intervals are each "
            "comparison's own 95% (not widened for the family): an interval that leaves out "
            "0 can still be marked ≈."
            if numbers["family_size"]
            else "- No difference has a seed-level test (one needs a number at two seeds or "
            "more, on both sides), so the family Holm's adjustment runs over is empty and nothing "
            "is marked ≈: run the study with SEEDS=1,2,3 or more."
        ),
        "- Fixed models (do these trained models differ on this test set?): the paired "
        "bootstrap over the test examples with the trained models held fixed, pooled over "
        "seeds. It leaves out the seed-to-seed variance, so it finds differences that a new "
        "seed may not repeat: it is not the ≈ test.",
        "",
        *_shared_split_lines(numbers),
    ]
    for size in numbers["sizes"]:
        deltas = numbers["by_size"][size]["deltas"]
        for task in tasks:
            rows = []
            for label, by_task in deltas.items():
                entry = by_task.get(task)
                if not entry:
                    continue
                found = [entry.get("vs_single_task"), entry.get("vs_reference")][: len(versus)]
                rows.append(
                    [label] + [_difference(d and d[m]) for m in metrics[task] for d in found]
                )
            if not rows:
                continue
            lines += ["", f"### `{task}`, {_size_title(size)}", ""]
            header = [
                f"Δ {_short(numbers, task, m)} vs {other}"
                for m in metrics[task]
                for other in versus
            ]
            lines += _table(["scenario", *header], rows)
    lines += _power_lines(numbers, tasks)
    if numbers["notes"]:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in numbers["notes"]]
    return lines


def markdown_report(
    runs: Sequence[Run],
    tasks: Sequence[str],
    plots: Sequence[str],
    numbers: dict | None = None,
) -> str:
    """The report's text: the study (over seeds, paired differences), then every run's own
    numbers, the plots. `numbers`: `study(runs, tasks)`, computed here when not given."""
    numbers = study(runs, tasks) if numbers is None else numbers
    seeds = ", ".join(str(seed) for seed in numbers["seeds"])
    sizes = ", ".join(numbers["sizes"])
    baselines = sum(1 for run in runs if run.label == BASELINE)
    lines = [
        "# Scenario study",
        "",
        f"{len(runs)} runs ({baselines} of them single-task baselines): seeds {seeds}; "
        f"training examples per task: {sizes}; {numbers['train_seconds_total']:.0f} s of "
        "training in all. Test values are of the best checkpoint by `val/primary_mean`, the "
        "mean over tasks of each one's primary metric (accuracy; Spearman for similarity), "
        "among the epochs the scenario scores (only_head_frozen: those with its head frozen) "
        "(entire_network_frozen: of the model as loaded).",
        "",
        _provenance_line(numbers["provenance"]),
        "",
    ]
    incomplete = numbers.get("incomplete") or {}
    if incomplete:
        lines += [
            f"**{len(incomplete)} unfinished run{'s' if len(incomplete) > 1 else ''}, left out of "
            "every number below** (rerun or resume them, then rebuild the report):",
            "",
            *(f"- `{name}`: {why}" for name, why in incomplete.items()),
            "",
        ]
    if numbers["forks"]:
        lines += [
            f"{len(numbers['forks'])} runs forked from another run's first epochs, which they "
            f"share exactly (`fork_from`): {numbers['reused_seconds']:.0f} s of training not "
            "done twice. Their train time below includes those epochs; the total above counts "
            "them once.",
            "",
        ]
    lines += study_markdown(numbers, tasks)
    lines += tuning_lines(numbers)
    lines += [
        "",
        "## Every run",
        "",
        "Best val values are maxima over epochs; train time is the wall time of fitting, "
        "validation included (0 when nothing trains); trainable params are those of the last "
        "epoch.",
        "",
    ]
    lines += _table(
        [
            "run",
            "scenario",
            "seed",
            "size",
            "best val primary (mean)",
            "test primary (mean)",
            "train time (s)",
            "trainable params",
        ],
        [
            [
                run.name,
                run.label,
                str(run.seed),
                run.size_label,
                _fmt(primary_mean(run, "val", best=True), ".4f"),
                _fmt(primary_mean(run, "test"), ".4f"),
                _fmt(run.train_seconds, ".1f"),
                _fmt(run.trainable_params, ","),
            ]
            for run in runs
        ],
    )
    for task in tasks:
        lines += ["", f"### Task `{task}`", ""]
        shown = task_type(runs, task).report_metrics
        lines += _table(
            ["run", "scenario"]
            + [f"{stage} {m.short}" for stage in ("best val", "test") for m in shown.values()]
            + ["forgetting", "best epoch: own / checkpoint's"],
            [
                [run.name, run.label]
                + [_fmt(run.best(f"val/{task}/{key}"), ".4f") for key in shown]
                + [_fmt(run.last(f"test/{task}/{key}"), ".4f") for key in shown]
                + [_fmt(run.last(f"val/{task}/forgetting"), "+.4f"), _best_epochs(run, task)]
                for run in runs
            ],
        )
    far = [
        f"- `{run.name}`: {run.summary['best_epochs']['note']}"
        for run in runs
        if (run.summary.get("best_epochs") or {}).get("note")
    ]
    if far:
        lines += [
            "",
            "Best epoch: the epoch of the task's own best val primary metric, and the epoch of "
            "the checkpoint tested (the best mean over tasks). Runs where a task peaked more than "
            "one epoch from the checkpoint, so that its test metrics are not its best:",
            "",
            *far,
        ]
    if any(run.history.get(f"val/{task}/forgetting") for run in runs for task in tasks):
        lines += [
            "",
            "Forgetting (only_head_frozen, the frozen head's task): val accuracy when the head "
            "froze minus at the last epoch; positive means the task got worse.",
        ]
    lines += ["", "### Runs", ""]
    lines += [f"- `{run.name}`: {' '.join(run.overrides) or '(defaults)'}" for run in runs]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(plot).stem}]({plot})" for plot in plots]
    return "\n".join(lines) + "\n"


def tuning(sweep: Path) -> dict:
    """The searches of a study at an equal tuning budget (`mtl_lightning.study.tune`), by size
    and label: the chosen configuration (`best_params`, `best_value`), the experiment's
    defaults that its first trial ran and their score (`defaults`, `defaults_val`: None in a
    search that queued none), each finished trial's best `val/primary_mean` over epochs in the
    order they ran, and the expected best validation score of n = 1 .. N trials with its std
    (`stats.expected_max_curve`). Empty without."""
    found: dict[str, dict] = {}
    for size, labels in searches.search_folders(sweep).items():
        for label, folder in labels.items():
            trials = []
            ran = searches.trial_folders(folder)
            for trial in ran:
                if unfinished(trial) is not None:
                    continue
                score = primary_mean(load_run(trial), "val", best=True)
                if score is not None:
                    trials.append({"trial": trial.name, "val": score})
            defaults = searches.queued_defaults(folder)
            first = ran[0].name if ran and defaults is not None else None
            found.setdefault(size, {})[label] = {
                **searches.chosen(folder),
                "defaults": defaults,
                "defaults_val": next((t["val"] for t in trials if t["trial"] == first), None),
                "trials": trials,
                "expected_best_val": stats.expected_max_curve([t["val"] for t in trials]),
            }
    return found


def _budgets(trials: int) -> list[int]:
    """The numbers of trials a table shows: 1, 2, 4, ... and all of them."""
    shown = [n for n in (2**k for k in range(trials.bit_length())) if n <= trials]
    return sorted(set(shown) | {trials}) if trials else []


def _params_text(params: dict | None) -> str:
    if params is None:
        return "(search unfinished)"
    if not params:
        return "(nothing searched)"
    return ", ".join(
        f"`{key}={value:.3g}`" if isinstance(value, float) else f"`{key}={value}`"
        for key, value in params.items()
    )


def tuning_lines(numbers: dict) -> list[str]:
    """report.md's section on the searches (`tuning`), or nothing without them."""
    found = numbers.get("tuning") or {}
    if not found:
        return []
    lines = [
        "",
        "## Tuning: an equal budget per scenario",
        "",
        "Each scenario and each single-task baseline (`single_task_<task>`) had the same number "
        "of Optuna trials (`make compare TUNE=N`), each over its own space (its experiment's "
        "`tune:`), scored by the best `val/primary_mean` over epochs on the validation split; "
        "trials never ran a test. The first trial of each search runs its experiment's defaults "
        "(defaults' val; — for a search that ran none), so the chosen configuration, the one "
        "trained over the seeds and tested above, scores at least as well on validation. E[best "
        "val] at n trials: the expected best validation score of n trials drawn from the observed"
        " ones, ± its std (Dodge et al. 2019, expected validation performance): where two curves "
        "cross, which scenario looks better depends on the budget.",
    ]
    for size, labels in found.items():
        most = max((len(entry["trials"]) for entry in labels.values()), default=0)
        budgets = _budgets(most)
        rows = []
        for label, entry in labels.items():
            curve = {point["n"]: point for point in entry["expected_best_val"]}
            cells = [
                MISSING if n not in curve else f"{curve[n]['mean']:.4f} ± {curve[n]['std']:.4f}"
                for n in budgets
            ]
            rows.append(
                [
                    label,
                    str(len(entry["trials"])),
                    _fmt(entry.get("defaults_val"), ".4f"),
                    _fmt(entry["best_value"], ".4f"),
                    _params_text(entry["best_params"]),
                    *cells,
                ]
            )
        header = ["scenario", "trials", "defaults' val", "best val", "chosen configuration"]
        header += [f"E[best val], n={n}" for n in budgets]
        lines += ["", f"### {_size_title(size)}", "", *_table(header, rows)]
    return lines


def plot_expected_validation(labels: dict) -> Figure:
    """Expected best validation score against the number of trials, one line per search (a
    scenario, a baseline) of one training-set size, with a band of ± its std."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure()
    axes = figure.add_subplot()
    for index, (label, entry) in enumerate(labels.items()):
        curve = [p for p in entry["expected_best_val"] if p["mean"] is not None]
        if not curve:
            continue
        ns = [p["n"] for p in curve]
        means = [p["mean"] for p in curve]
        axes.plot(ns, means, marker="o", label=label, color=_color(index))
        low = [p["mean"] - p["std"] for p in curve]
        high = [p["mean"] + p["std"] for p in curve]
        axes.fill_between(ns, low, high, color=_color(index), alpha=0.15, linewidth=0)
    axes.set(
        title="expected best validation score against the tuning budget",
        xlabel="trials of hyperparameter search",
        ylabel="E[best val primary (mean)] ± std",
    )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def _figure() -> Figure:
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError as error:
        raise ConfigError(
            "mtl_lightning.study.report needs matplotlib for its plots, which is not installed: "
            "`pip install -e '.[report]'` (or `pip install matplotlib`)."
        ) from error
    # A bare Figure, not pyplot: no GUI backend, no global state, works in any process.
    return Figure(figsize=(6.4, 4.2), layout="constrained")


def _color(index: int) -> str:
    """The same colour for a scenario in every plot, whichever scenarios a plot leaves out."""
    return f"C{index % 10}"


def _largest_size(runs: Sequence[Run]) -> list[Run]:
    """The runs at the study's largest training-set size (all examples, by default)."""
    largest = max((run.size_label for run in runs), key=_size_order)
    return [run for run in runs if run.size_label == largest]


def _spread_of(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value): the point and the half-width of a band."""
    numbers = stats.over_seeds(values)
    return numbers["mean"], numbers["std"] or 0.0


def plot_val_curves(runs: Sequence[Run], task: str) -> Figure:
    """Validation accuracy of `task` per epoch, one line per scenario: the mean over seeds, with
    a band of ± one std where there are several seeds (at the largest training-set size)."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure()
    axes = figure.add_subplot()
    kind = task_type(runs, task)
    primary = kind.primary  # accuracy, or a similarity task's Spearman
    runs = _largest_size(runs)
    for index, label in enumerate(_labels(runs)):
        curves = [dict(run.curve(f"val/{task}/{primary}")) for run in runs if run.label == label]
        curves = [curve for curve in curves if curve]
        if not curves:
            continue
        epochs = sorted({epoch for curve in curves for epoch in curve})
        points = [_spread_of([c[e] for c in curves if e in c]) for e in epochs]
        means = [mean for mean, _ in points]
        name = f"{label} (n={len(curves)})"
        axes.plot(epochs, means, marker="o", label=name, color=_color(index))
        if len(curves) > 1:
            low = [mean - std for mean, std in points]
            high = [mean + std for mean, std in points]
            axes.fill_between(epochs, low, high, color=_color(index), alpha=0.2, linewidth=0)
    name = kind.report_metrics[primary].name
    axes.set(title=f"{task}: validation {name}", xlabel="epoch", ylabel=f"val {name}")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def plot_time_vs_accuracy(runs: Sequence[Run]) -> Figure:
    """Train time against mean test accuracy, one point per scenario (mean over seeds, error
    bars of ± one std); single-task baselines, which test one task each, are left out."""
    figure = _figure()
    axes = figure.add_subplot()
    runs = _largest_size(runs)
    for index, label in enumerate(_labels(runs)):
        points = [
            (run.train_seconds, primary_mean(run, "test"))
            for run in runs
            if run.label == label and label != BASELINE
        ]
        points = [(t, a) for t, a in points if t is not None and a is not None]
        if not points:
            continue
        (seconds, seconds_std), (accuracy, accuracy_std) = (
            _spread_of([t for t, _ in points]),
            _spread_of([a for _, a in points]),
        )
        axes.errorbar(
            seconds, accuracy, xerr=seconds_std, yerr=accuracy_std, fmt="o", color=_color(index)
        )
        axes.annotate(
            label, (seconds, accuracy), fontsize="small", xytext=(4, 4), textcoords="offset points"
        )
    axes.margins(x=0.25, y=0.15)  # room for the labels of the outermost points
    axes.set(
        title="train time vs test accuracy",
        xlabel="train time (s)",
        ylabel="test primary metric (mean over tasks)",
    )
    axes.grid(alpha=0.3)
    return figure


def _train_examples(run: Run, task: str) -> float | None:
    count = run.summary.get("examples", {}).get(task, {}).get("train")
    return float(count) if count is not None else (None if run.size is None else float(run.size))


def plot_accuracy_vs_examples(runs: Sequence[Run], task: str) -> Figure:
    """Test primary metric (accuracy; Spearman) of `task` against its training examples, one
    line per scenario (mean over seeds, error bars of ± one std): the study's data-size axis."""
    kind = task_type(runs, task)
    primary, name = kind.primary, kind.report_metrics[kind.primary].name
    figure = _figure()
    axes = figure.add_subplot()
    sizes = sorted({run.size_label for run in runs}, key=_size_order)
    ticks: set[float] = set()
    for index, label in enumerate(_labels(runs)):
        xs, ys, errors = [], [], []
        for size in sizes:
            points = [
                (_train_examples(run, task), run.last(f"test/{task}/{primary}"))
                for run in runs
                if run.label == label and run.size_label == size
            ]
            points = [(x, y) for x, y in points if x is not None and y is not None]
            if points:
                xs.append(_spread_of([x for x, _ in points])[0])
                mean, std = _spread_of([y for _, y in points])
                ys.append(mean)
                errors.append(std)
        if xs:
            axes.errorbar(
                xs, ys, yerr=errors, marker="o", capsize=3, label=label, color=_color(index)
            )
            ticks.update(xs)
    axes.set_xscale("log")
    # Ticks at the sizes trained, not at powers of ten.
    axes.set_xticks(sorted(ticks), [f"{x:,.0f}" for x in sorted(ticks)])
    axes.minorticks_off()
    axes.set(
        title=f"{task}: test {name} against training examples",
        xlabel="training examples of the task",
        ylabel=f"test {name}",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def write_report(sweep_dir: str | Path, reference: str | None = None) -> Path:
    """Write `report.md`, `report.json` and the PNG plots into the sweep folder; return the
    report's path. `reference`: the scenario every other one is also compared with (None:
    full_finetune where the sweep has it)."""
    sweep = Path(sweep_dir).expanduser()
    runs, incomplete = scan_sweep(sweep)
    tasks = task_names(runs)
    labels = {run.label for run in runs}
    if reference is not None and reference not in labels:
        raise ConfigError(
            f"--reference {reference} is not a scenario of {sweep}: use one of {sorted(labels)}."
        )
    reference = reference or REFERENCE
    numbers = study(runs, tasks, reference, incomplete=incomplete)
    numbers["tuning"] = tuning(sweep)
    figures = {f"val_acc_{task}.png": plot_val_curves(runs, task) for task in tasks}
    figures[TIME_PLOT] = plot_time_vs_accuracy(runs)
    if len(numbers["sizes"]) > 1:
        for task in tasks:
            figures[f"test_acc_vs_examples_{task}.png"] = plot_accuracy_vs_examples(runs, task)
    for size, labels in numbers["tuning"].items():
        figures[f"expected_val_{size}.png"] = plot_expected_validation(labels)
    for name, figure in figures.items():
        figure.savefig(inside(sweep, name), dpi=120)
    (sweep / REPORT_JSON).write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")
    report = sweep / REPORT_FILE
    report.write_text(markdown_report(runs, tasks, list(figures), numbers), encoding="utf-8")
    return report
