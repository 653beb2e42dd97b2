"""The comparison report: from a hand-written sweep folder, and from a real tiny multirun."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from fake_sweep import make_fake_sweep

from mtl_lightning.errors import ConfigError
from mtl_lightning.report import load_runs, main, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_tables_and_plots_from_a_sweep_folder(tmp_path):
    sweep = make_fake_sweep(tmp_path / "sweep")
    report = write_report(sweep)
    text = report.read_text()
    assert "3 runs. Seed 42 in every run." in text
    # Overall: best val acc_mean (a max over epochs), test acc_mean, seconds, trainable params.
    assert "| 0_full_finetune | full_finetune | 0.7500 | 0.7450 | 120.3 | 22,713,216 |" in text
    assert "| 2_entire_network_frozen | entire_network_frozen | 0.3500 | 0.3350 | 0.0 | 0 |" in text
    # Per task: best val acc and F1 (maxima of their own), test acc and F1, forgetting.
    classification = text.split("## Task `classification`")[1].split("## Task `sentiment`")[0]
    assert (
        "| 0_full_finetune | full_finetune | 0.8000 | 0.7500 | 0.7800 | — | — |" in classification
    )
    assert "| 1_only_head_frozen | only_head_frozen | 0.6000 | — | 0.5700 | — | +0.0500 |" in (
        classification
    )
    assert "- `1_only_head_frozen`: experiment=only_head_frozen trainer.max_epochs=3" in text
    assert "stray" not in text
    plots = ["val_acc_classification.png", "val_acc_sentiment.png", "time_vs_accuracy.png"]
    for plot in plots:
        assert (sweep / plot).read_bytes().startswith(PNG_MAGIC)
        assert f"]({plot})" in text
    names = [run.name for run in load_runs(sweep)]
    assert names == ["0_full_finetune", "1_only_head_frozen", "2_entire_network_frozen"]


def test_report_on_a_folder_without_runs_says_what_to_give(tmp_path):
    with pytest.raises(ConfigError, match=r"holds no run folders with \.hydra/config\.yaml"):
        write_report(tmp_path)
    with pytest.raises(SystemExit, match=r"^Error: sweep folder .*/missing does not exist"):
        main([str(tmp_path / "missing")])


def test_two_scenario_multirun_then_report(tiny_encoders, tmp_path):
    """As `make compare` does, with two scenarios: train, then report from the sweep folder."""
    sweep = tmp_path / "compare"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "mtl_lightning.train",
        "-m",
        "experiment=full_finetune,only_head_frozen",
        "data=tiny",
        f"model.encoder.name_or_path={tiny_encoders['bert']}",
        f"paths.root_dir={tmp_path}",
        "trainer.max_epochs=2",
        "+trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = [sys.executable, "-m", "mtl_lightning.report", str(sweep)]
    result = subprocess.run(report, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    text = (sweep / "report.md").read_text()
    assert "2 runs. Seed 42 in every run." in text
    classification = text.split("## Task `classification`")[1].split("## Task `sentiment`")[0]
    frozen_row = next(line for line in classification.splitlines() if "1_only_head_frozen" in line)
    assert frozen_row.split("|")[-2].strip()[0] in "+-"  # forgetting, a signed number
    for plot in ("val_acc_classification.png", "val_acc_sentiment.png", "time_vs_accuracy.png"):
        assert (sweep / plot).read_bytes().startswith(PNG_MAGIC)

    run = sweep / "0_full_finetune"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_seconds"] > 0
    assert 0 < summary["trainable_params"] == summary["total_params"]
    with (run / "metrics.csv").open() as file:
        columns = next(csv.reader(file))
    # The LR monitor logs one learning rate per named optimizer group.
    assert {"lr-AdamW/heads", "lr-AdamW/layer_0", "lr-AdamW/embeddings/no_decay"} <= set(columns)
    # The confusion matrices: labelled, and their diagonal is the logged test accuracy.
    for task in ("classification", "sentiment"):
        with (run / f"confusion_{task}.csv").open() as file:
            header, *rows = list(csv.reader(file))
        assert header[0] == "true\\predicted" and [r[0] for r in rows] == header[1:]
        counts = [[int(c) for c in r[1:]] for r in rows]
        correct = sum(counts[i][i] for i in range(len(counts)))
        accuracy = correct / sum(map(sum, counts))
        assert accuracy == pytest.approx(summary["metrics"][f"test/{task}/acc"], abs=1e-6)
        tables = list((run / "wandb").glob(f"offline-run-*/files/media/table/test/{task}/*.json"))
        assert len(tables) == 1  # the W&B confusion-matrix chart's table


def test_summary_train_time_is_the_fit_alone(make_cfg, tmp_path):
    """Testing the best checkpoint restores its Timer state; that must not count twice."""
    import json
    import time

    from mtl_lightning.train import train

    start = time.perf_counter()
    train(make_cfg("experiment=full_finetune", "trainer.max_epochs=2"))
    elapsed = time.perf_counter() - start
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 < summary["train_seconds"] < elapsed
