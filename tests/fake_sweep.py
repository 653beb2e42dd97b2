"""A sweep folder as a finished `make compare` leaves it, written by hand: known numbers, no run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mtl_lightning.study import stats
from mtl_lightning.tasks.similarity import Similarity

# Per run: scenario, train seconds, trainable params, and per epoch the validation metrics.
RUNS = {
    "0_full_finetune": {
        "scenario": "full_finetune",
        "seconds": 120.34,
        "params": 22_713_216,
        "val": [
            {"classification/acc": 0.50, "classification/f1": 0.40, "sentiment/acc": 0.60},
            {"classification/acc": 0.80, "classification/f1": 0.75, "sentiment/acc": 0.70},
            {"classification/acc": 0.70, "classification/f1": 0.72, "sentiment/acc": 0.72},
        ],
        "test": {"classification/acc": 0.78, "sentiment/acc": 0.71},
    },
    "1_only_head_frozen": {
        "scenario": "only_head_frozen",
        "seconds": 100.0,
        "params": 22_710_912,
        "val": [
            {"classification/acc": 0.60, "sentiment/acc": 0.60},
            {"classification/acc": 0.58, "sentiment/acc": 0.66, "classification/forgetting": 0.02},
            {"classification/acc": 0.55, "sentiment/acc": 0.69, "classification/forgetting": 0.05},
        ],
        "test": {"classification/acc": 0.57, "sentiment/acc": 0.68},
    },
    "2_entire_network_frozen": {
        "scenario": "entire_network_frozen",
        "seconds": 0.0,
        "params": 0,
        "val": [{"classification/acc": 0.20, "sentiment/acc": 0.50}],
        "test": {"classification/acc": 0.17, "sentiment/acc": 0.50},
    },
}


def _mean_acc(values: dict[str, float]) -> float:
    return (values["classification/acc"] + values["sentiment/acc"]) / 2


def make_fake_sweep(sweep: Path) -> Path:
    """Three run folders (metrics.csv, .hydra/, summary.json), multirun.yaml, a stray folder."""
    for name, run in RUNS.items():
        folder = sweep / name
        (folder / ".hydra").mkdir(parents=True)
        # As Hydra saves it: interpolations unresolved, some only resolvable inside Hydra.
        (folder / ".hydra" / "config.yaml").write_text(
            f"freezing:\n  scenario: {run['scenario']}\nrun_name: ${{freezing.scenario}}\n"
            "seed: 42\npaths:\n  output_dir: ${hydra:runtime.output_dir}\n"
        )
        (folder / ".hydra" / "overrides.yaml").write_text(
            f"- experiment={run['scenario']}\n- trainer.max_epochs=3\n"
        )
        rows = []
        for epoch, val in enumerate(run["val"]):
            rows.append({"epoch": epoch, "freeze/trainable_params": run["params"]})
            metrics = {f"val/{k}": v for k, v in val.items()}
            rows.append({"epoch": epoch, "val/acc_mean": _mean_acc(val), **metrics})
        test = {f"test/{k}": v for k, v in run["test"].items()}
        rows.append({"epoch": len(run["val"]), "test/acc_mean": _mean_acc(run["test"]), **test})
        columns = sorted({key for row in rows for key in row} | {"step"})
        with (folder / "metrics.csv").open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        summary = {"train_seconds": run["seconds"], "trainable_params": run["params"]}
        (folder / "summary.json").write_text(json.dumps(summary))
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / "stray").mkdir()  # no .hydra/config.yaml: not a run
    return sweep


# A two-seed study: two scenarios and the single-task baselines, each run with its per-example
# test predictions. Every test split has STUDY_TEST_SIZE examples, the label of example i is
# (i + seed) % classes (each seed its own split, as with data.seed=${seed}; or i % classes for
# every seed: one shared split), and a run gets its first k examples wrong (k below): known
# accuracies, and errors nested, so two runs differ on exactly the examples between their two k.
STUDY_TASKS = {"classification": ["ABBR", "DESC", "NUM"], "sentiment": ["negative", "positive"]}
STUDY_TEST_SIZE = 40
STUDY_ERRORS = {  # (scenario, seed) -> task -> wrong test predictions
    ("full_finetune", 1): {"classification": 8, "sentiment": 10},
    ("full_finetune", 2): {"classification": 4, "sentiment": 12},
    ("only_head_frozen", 1): {"classification": 20, "sentiment": 10},
    ("only_head_frozen", 2): {"classification": 24, "sentiment": 12},
    ("single_task", 1): {"classification": 6, "sentiment": 10},
    ("single_task", 2): {"classification": 6, "sentiment": 12},
}


def study_predictions(task: str, wrong: int, shift: int = 0) -> tuple[list[int], list[int]]:
    classes = len(STUDY_TASKS[task])
    labels = [(i + shift) % classes for i in range(STUDY_TEST_SIZE)]
    preds = [(label + 1) % classes if i < wrong else label for i, label in enumerate(labels)]
    return labels, preds


def _macro_f1(labels: list[int], preds: list[int], classes: int) -> float:
    scores = []
    for c in range(classes):
        tp = sum(1 for y, p in zip(labels, preds, strict=True) if y == p == c)
        support = labels.count(c) + preds.count(c)
        if support:
            scores.append(2 * tp / support)
    return sum(scores) / len(scores)


def make_fake_study(
    sweep: Path, sizes: tuple[int | None, ...] = (None,), shared_test_split: bool = False
) -> Path:
    """Run folders of `STUDY_ERRORS` at each training-set size; baselines as `make compare`
    names them (`baseline_<n>_single_task_<task>`), the scenarios `<n>_<scenario>`. Each seed
    has its own test split, or with `shared_test_split` all seeds have one (as data.seed=0)."""
    job = {"scenario": 0, "baseline": 0}
    for size in sizes:
        for (scenario, seed), errors in STUDY_ERRORS.items():
            baseline = scenario == "single_task"
            for only in list(errors) if baseline else [None]:
                tasks = [only] if only else list(errors)
                kind = "baseline" if baseline else "scenario"
                prefix = "baseline_" if baseline else ""
                name = f"{prefix}{job[kind]}_{scenario}" + (f"_{only}" if only else "")
                job[kind] += 1
                folder = sweep / name
                (folder / ".hydra").mkdir(parents=True)
                (folder / ".hydra" / "config.yaml").write_text(
                    "freezing:\n  scenario: " + ("full_finetune" if baseline else scenario) + "\n"
                    f"seed: {seed}\ndata:\n  seed: {0 if shared_test_split else '${seed}'}\n"
                    f"  max_train_examples: {'null' if size is None else size}\n"
                    f"  only_tasks: {only or 'null'}\n"
                )
                (folder / ".hydra" / "overrides.yaml").write_text(
                    f"- experiment={scenario}\n- seed={seed}\n"
                )
                val = {"epoch": 0} | {f"val/{t}/acc": 0.5 for t in tasks}
                test = {"epoch": 1}
                (folder / "test_predictions").mkdir()
                for task in tasks:
                    shift = 0 if shared_test_split else seed
                    labels, preds = study_predictions(task, errors[task], shift)
                    test[f"test/{task}/acc"] = 1 - errors[task] / STUDY_TEST_SIZE
                    test[f"test/{task}/f1"] = _macro_f1(labels, preds, len(STUDY_TASKS[task]))
                    with (folder / "test_predictions" / f"{task}.csv").open("w") as file:
                        file.write("idx,label,pred\n")
                        # Stored out of order: the report pairs examples by idx, not by row.
                        for i in reversed(range(STUDY_TEST_SIZE)):
                            file.write(f"{i},{labels[i]},{preds[i]}\n")
                test["test/acc_mean"] = sum(test[f"test/{t}/acc"] for t in tasks) / len(tasks)
                columns = sorted(set(val) | set(test) | {"step"})
                with (folder / "metrics.csv").open("w", newline="") as file:
                    writer = csv.DictWriter(file, fieldnames=columns)
                    writer.writeheader()
                    writer.writerows([val, test])
                summary = {
                    "train_seconds": 10.0 * seed,
                    "trainable_params": 100,
                    "tasks": {t: STUDY_TASKS[t] for t in tasks},
                    "examples": {t: {"train": 1000 if size is None else size} for t in tasks},
                }
                (folder / "summary.json").write_text(json.dumps(summary))
    return sweep


# A two-seed study of one similarity task: true scores in [0, 1] with ties, each run's predicted
# cosines a known distortion of them (the baseline's a monotone map: Spearman 1).
SCORES = [round((i * 7 % 11) / 10, 1) for i in range(STUDY_TEST_SIZE)]  # 0.0 .. 1.0, tied
SIMILARITY_RUNS = {  # (scenario, seed) -> how far each prediction strays from its score
    ("full_finetune", 1): 0.3,
    ("full_finetune", 2): 0.4,
    ("single_task", 1): 0.0,
    ("single_task", 2): 0.0,
}


def similarity_predictions(stray: float) -> list[float]:
    return [score**2 + stray * ((i * 5 % 7) / 7 - 0.5) for i, score in enumerate(SCORES)]


def make_fake_similarity_study(sweep: Path) -> Path:
    """`SIMILARITY_RUNS` of the task `sts`: logged Spearman and Pearson, predictions beside."""
    for job, ((scenario, seed), stray) in enumerate(SIMILARITY_RUNS.items()):
        baseline = scenario == "single_task"
        folder = sweep / (f"baseline_{job}_single_task_sts" if baseline else f"{job}_{scenario}")
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text(
            f"freezing:\n  scenario: full_finetune\nseed: {seed}\n"
            f"data:\n  max_train_examples: null\n  only_tasks: {'[sts]' if baseline else 'null'}\n"
        )
        preds = similarity_predictions(stray)
        found = stats.score(Similarity("sts"), SCORES, preds)
        spearman, pearson = found["spearman"], found["pearson"]
        (folder / "test_predictions").mkdir()
        with (folder / "test_predictions" / "sts.csv").open("w") as file:
            file.write("idx,label,pred\n")
            file.writelines(f"{i},{SCORES[i]!r},{preds[i]!r}\n" for i in range(STUDY_TEST_SIZE))
        rows = [
            {"epoch": 0, "val/sts/spearman": 0.5, "val/primary_mean": 0.5},
            {"epoch": 1, "test/sts/spearman": spearman, "test/sts/pearson": pearson},
        ]
        with (folder / "metrics.csv").open("w", newline="") as file:
            columns = sorted({key for row in rows for key in row} | {"step"})
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        summary = {"train_seconds": 1.0, "trainable_params": 1, "tasks": {"sts": []}}
        (folder / "summary.json").write_text(json.dumps(summary))
    return sweep
