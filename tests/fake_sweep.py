"""A sweep folder as a finished `make compare` leaves it, written by hand: known numbers, no run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

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
