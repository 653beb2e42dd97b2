"""The comparison report: from a hand-written sweep folder, and from a real tiny multirun."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_sweep import (
    SCORES,
    SIMILARITY_RUNS,
    STUDY_TASKS,
    _macro_f1,
    make_fake_similarity_study,
    make_fake_study,
    make_fake_sweep,
    similarity_predictions,
    study_predictions,
)
from helpers import FULL_FINETUNE_RATES

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.summary import best_epochs, read_summary, write_summary
from mtl_lightning.report import main
from mtl_lightning.study import stats
from mtl_lightning.study.report import (
    Run,
    _provenance_line,
    fingerprint_of_test_split,
    load_runs,
    markdown_report,
    provenance,
    task_names,
    write_report,
)
from mtl_lightning.tasks.classification import Classification
from mtl_lightning.tasks.similarity import Similarity

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def a_drawn_png(path) -> bool:
    """A PNG that decodes to an image of some size with something drawn on it (not one
    colour): a plot, not an empty figure."""
    from matplotlib.image import imread

    if not path.read_bytes().startswith(PNG_MAGIC):
        return False
    pixels = imread(path)
    return min(pixels.shape[:2]) >= 200 and float(pixels[..., :3].std()) > 0.01


@pytest.mark.slow
def test_report_tables_and_plots_from_a_sweep_folder(tmp_path):
    sweep = make_fake_sweep(tmp_path / "sweep")
    report = write_report(sweep)
    text = report.read_text()
    assert "3 runs (0 of them single-task baselines): seeds 42; training examples" in text
    # One seed: the value, and no interval.
    assert "| full_finetune | 1 | 0.7800 (n=1) | n=1, no CI |" in text
    # Overall: best val acc_mean (a max over epochs), test acc_mean, seconds, trainable params.
    assert (
        "| 0_full_finetune | full_finetune | 42 | all | 0.7500 | 0.7450 | 120.3 | 22,713,216 |"
        in (text)
    )
    assert (
        "| 2_entire_network_frozen | entire_network_frozen | 42 | all | 0.3500 | 0.3350 | 0.0 |"
        in (text)
    )
    # Per task: best val acc and F1 (maxima of their own), test acc and F1, forgetting.
    classification = text.split("### Task `classification`")[1].split("### Task `sentiment`")[0]
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
        assert a_drawn_png(sweep / plot)
        assert f"]({plot})" in text
    names = [run.name for run in load_runs(sweep)]
    assert names == ["0_full_finetune", "1_only_head_frozen", "2_entire_network_frozen"]


@pytest.mark.slow
def test_report_json_of_a_two_seed_study(tmp_path):
    """Known numbers (fake_sweep.STUDY_ERRORS): spread over seeds, baselines, paired deltas."""
    sweep = make_fake_study(tmp_path / "sweep")
    text = write_report(sweep).read_text()
    numbers = json.loads((sweep / "report.json").read_text())
    assert numbers["seeds"] == [1, 2] and numbers["sizes"] == ["all"]
    assert numbers["reference"] == "full_finetune" and "paired t-test over seeds" in numbers["test"]
    assert "models held fixed" in numbers["fixed_models_test"]
    # full_finetune, classification: 8 and 4 of 40 wrong -> 0.80, 0.90.
    acc = numbers["scenarios"]["full_finetune"]["classification"]["acc"]
    half = 12.7062 * math.sqrt(0.005) / math.sqrt(2)  # t(0.975, 1) * std / sqrt(n)
    assert acc["mean"] == pytest.approx(0.85) and acc["std"] == pytest.approx(math.sqrt(0.005))
    assert acc["ci95"] == pytest.approx([0.85 - half, 0.85 + half], abs=1e-4)
    assert acc["n"] == 2 and acc["values"] == pytest.approx([0.8, 0.9])
    assert set(numbers["scenarios"]) == {"full_finetune", "only_head_frozen"}
    # The single-task baselines: 6 of 40 wrong on classification in both seeds.
    baseline = numbers["baselines"]["classification"]["acc"]
    assert baseline["mean"] == pytest.approx(0.85) and baseline["std"] == pytest.approx(0)
    assert set(numbers["baselines"]) == {"classification", "sentiment"}
    # only_head_frozen - full_finetune, classification: (0.5 - 0.8 + 0.4 - 0.9) / 2, every
    # discordant example one way: far outside the noise of the test examples, given these models.
    deltas = numbers["deltas"]["only_head_frozen"]["classification"]
    gap = deltas["vs_reference"]["acc"]
    assert gap["delta"] == pytest.approx(-0.4) and gap["per_seed"] == pytest.approx([-0.3, -0.5])
    fixed = gap["fixed_models"]
    assert fixed["ci95"][0] < -0.4 < fixed["ci95"][1] < 0 and fixed["p"] < 0.001
    # At the seed level, two seeds: t = -0.4 / (0.1414 / sqrt 2) = -4 on 1 degree of freedom
    # (a Cauchy variable): p = 1 - 2 atan(4) / pi = 0.156. The verdict is the larger p of the
    # t-test and the two-level bootstrap (both seeds negative: its p is tiny): within noise.
    t_test = gap["t_test"]
    assert t_test["t"] == pytest.approx(-4) and t_test["df"] == 1
    assert t_test["p"] == pytest.approx(1 - 2 * math.atan(4) / math.pi)
    assert t_test["ci95"] == pytest.approx([-0.4 - 1.27062, -0.4 + 1.27062], abs=1e-4)
    assert gap["two_level_bootstrap"]["p"] < 0.001
    assert gap["p"] == pytest.approx(t_test["p"]) and gap["ci95"][0] <= t_test["ci95"][0]
    assert gap["n"] == 2 and gap["within_noise"]
    assert not gap["shared_test_split"] and gap["seeds_for_power"] == 4
    # At Holm's strictest step over the family of 12 (alpha 0.05 / 12), more seeds.
    assert gap["seeds_for_power_holm"] == stats.seeds_for_power(
        [-0.3, -0.5], 0.05 / 12, spread=gap["power_spread"]
    )
    assert gap["seeds_for_power_holm"] > 4
    # The family: full_finetune vs the baseline (2 tasks x 2 metrics), only_head_frozen vs the
    # baseline and the reference (2 x 2 x 2).
    assert numbers["family_size"] == 12 and numbers["shared_test_splits"] == {}
    versus_baseline = deltas["vs_single_task"]["acc"]
    assert versus_baseline["delta"] == pytest.approx(-0.4)  # (0.5 - 0.85 + 0.4 - 0.85) / 2
    assert versus_baseline["per_seed"] == pytest.approx([-0.35, -0.45])
    # Holm over the 12, by hand: the smallest p is this gap's, t = -0.4 / (0.0707 / sqrt 2) = -8
    # on 1 degree of freedom, p = 1 - 2 atan(8) / pi = 0.0792, times 12 = 0.950 (F1's, next,
    # times 11 is less; Holm keeps the running maximum); the reference gap's 0.156 is the
    # third smallest: times 10 is over 1. Sentiment's six, no difference, stay at 1.
    smallest = 1 - 2 * math.atan(8) / math.pi
    assert versus_baseline["p"] == pytest.approx(smallest)
    assert versus_baseline["p_holm"] == pytest.approx(12 * smallest)
    assert deltas["vs_single_task"]["f1"]["p_holm"] == pytest.approx(12 * smallest)
    assert gap["p_holm"] == 1.0 and deltas["vs_reference"]["f1"]["p_holm"] == 1.0
    assert set(deltas["vs_reference"]) == {"acc", "f1"}
    # Sentiment: the same predictions in every scenario: no difference at all.
    same = numbers["deltas"]["full_finetune"]["sentiment"]["vs_single_task"]["f1"]
    assert same["delta"] == 0 and same["ci95"] == [0, 0] and same["p"] == 1
    assert same["within_noise"]
    # The reference is not compared with itself.
    assert "vs_reference" not in numbers["deltas"]["full_finetune"]["classification"]
    assert numbers["by_size"]["all"]["deltas"] == numbers["deltas"] and not numbers["notes"]
    # report.md: the same numbers, the tests named, gaps within noise marked.
    assert "of a paired t-test over the per-seed differences and of a two-level" in text
    assert "Holm's step-down adjustment over the report's family of 12 comparisons" in text
    assert "| full_finetune | 2 | 0.8500 ± 0.0707 | [0.2147, 1.4853] |" in text
    assert "| only_head_frozen | -0.4000 [" in text
    assert "p=0.156, Holm p=" in text and "; fixed models p<0.001 |" in text
    assert "+0.0000 [+0.0000, +0.0000] p=1.000, Holm p=1.000 ≈; fixed models p=1.000" in text
    assert "With 2 seeds the seed-level test has little power" in text
    assert "- `only_head_frozen` − `full_finetune`, `classification` acc (all training" in text
    assert "Every seed has a test split of its own" in text
    assert "| baseline_0_single_task_classification | single_task | 1 | all |" in text


@pytest.mark.slow
def test_report_of_a_similarity_task_uses_spearman_and_pearson(tmp_path):
    """A similarity task's numbers are its primary metric (Spearman) and Pearson, over seeds and
    as paired bootstrap differences of the predicted scores, not accuracies."""
    sweep = make_fake_similarity_study(tmp_path / "sweep")
    text = write_report(sweep).read_text()
    numbers = json.loads((sweep / "report.json").read_text())
    assert numbers["metrics"] == {"sts": ["spearman", "pearson"]}
    expected = {
        seed: stats.score(Similarity("sts"), SCORES, similarity_predictions(stray))["spearman"]
        for (scenario, seed), stray in SIMILARITY_RUNS.items()
        if scenario == "full_finetune"
    }
    cell = numbers["scenarios"]["full_finetune"]["sts"]
    assert set(cell) == {"seeds", "spearman", "pearson"}
    assert cell["spearman"]["values"] == pytest.approx([expected[1], expected[2]])
    assert numbers["baselines"]["sts"]["spearman"]["mean"] == pytest.approx(1.0)
    gap = numbers["deltas"]["full_finetune"]["sts"]["vs_single_task"]["spearman"]
    assert gap["per_seed"] == pytest.approx([expected[1] - 1, expected[2] - 1])
    fixed = gap["fixed_models"]
    assert fixed["ci95"][0] < gap["delta"] < fixed["ci95"][1] < 0 and fixed["p"] < 0.05
    # Two seeds, both below the baseline: the seed-level t-test has one degree of freedom.
    assert gap["t_test"]["df"] == 1 and gap["p"] >= gap["t_test"]["p"] > fixed["p"]
    assert "| scenario | seeds | test Spearman | Spearman 95% CI | test Pearson |" in text
    header = "| scenario | Δ Spearman vs single_task | Δ Spearman vs full_finetune | Δ Pearson vs"
    assert header in text


@pytest.mark.slow
def test_report_pairs_only_runs_on_the_same_test_examples(tmp_path):
    sweep = make_fake_study(tmp_path / "sweep")
    # A run whose test split is another one (e.g. other data): no paired test with it.
    predictions = sweep / "2_only_head_frozen" / "test_predictions" / "classification.csv"
    rows = predictions.read_text().splitlines()
    predictions.write_text("\n".join([rows[0], *(r.replace(",0,", ",1,") for r in rows[1:])]))
    write_report(sweep)
    numbers = json.loads((sweep / "report.json").read_text())
    gap = numbers["deltas"]["only_head_frozen"]["classification"]["vs_reference"]["acc"]
    assert gap["seeds"] == [2] and gap["n"] == 1  # seed 1's run left out
    assert gap["p"] is None and gap["within_noise"] is None  # one seed: no seed-level test
    assert gap["fixed_models"]["p"] < 0.001
    assert any("2_only_head_frozen" in note for note in numbers["notes"])


@pytest.mark.slow
def test_report_detects_a_test_split_the_seeds_share(tmp_path):
    """Seeds with one test split (the same idx and labels) share each resample of it: their
    differences move together, so the example-level interval of their mean is wider than with a
    split per seed (the same discordant examples, resampled independently): here by
    sqrt((8.4 + 10 + 2 * 6) / (8.4 + 10)) = 1.29, the covariance of nested discordant sets of 12
    and 20 of 40 examples (multinomial counts: n p (1 - p) and n p1 (1 - p2))."""
    own = json.loads(
        (write_report(make_fake_study(tmp_path / "own")).parent / "report.json").read_text()
    )
    write_report(make_fake_study(tmp_path / "shared", shared_test_split=True))
    shared = json.loads((tmp_path / "shared" / "report.json").read_text())
    assert own["shared_test_splits"] == {}
    assert shared["shared_test_splits"] == {"classification": [[1, 2]], "sentiment": [[1, 2]]}
    widths = []
    for numbers in (own, shared):
        gap = numbers["deltas"]["only_head_frozen"]["classification"]["vs_reference"]["acc"]
        assert gap["per_seed"] == pytest.approx([-0.3, -0.5])
        low, high = gap["fixed_models"]["ci95"]
        widths.append(high - low)
    assert gap["shared_test_split"]
    assert widths[1] / widths[0] == pytest.approx(math.sqrt(30.4 / 18.4), rel=0.08)
    text = (tmp_path / "shared" / "report.md").read_text()
    assert "Seeds sharing one test split" in text and "`classification` (all training" in text
    # Within noise on a shared split: no seed count is promised (its noise does not average).
    assert "no count: the seeds share one test split" in text


def test_split_fingerprint_is_the_examples_not_the_config():
    index, labels = list(range(6)), [0, 1, 2, 0, 1, 2]
    same = fingerprint_of_test_split("classification", index, labels)
    assert same == fingerprint_of_test_split("classification", list(index), list(labels))
    assert same != fingerprint_of_test_split("classification", index, [0, 1, 2, 0, 2, 1])
    assert same != fingerprint_of_test_split("classification", index[:5], labels[:5])
    assert same != fingerprint_of_test_split("sentiment", index, labels)


@pytest.mark.slow
def test_report_reference_is_configurable(tmp_path):
    sweep = make_fake_study(tmp_path / "sweep")
    main([str(sweep), "--reference", "only_head_frozen"])
    numbers = json.loads((sweep / "report.json").read_text())
    gap = numbers["deltas"]["full_finetune"]["classification"]["vs_reference"]["acc"]
    assert gap["delta"] == pytest.approx(0.4)
    assert "vs_reference" not in numbers["deltas"]["only_head_frozen"]["classification"]
    with pytest.raises(SystemExit, match=r"^Error: --reference gradual is not a scenario of"):
        main([str(sweep), "--reference", "gradual"])
    # Without full_finetune (any multirun's folder) and no --reference: baselines only.
    for folder in ("0_full_finetune", "1_full_finetune"):
        shutil.rmtree(sweep / folder)
    text = write_report(sweep).read_text()
    numbers = json.loads((sweep / "report.json").read_text())
    assert numbers["reference"] is None
    assert set(numbers["deltas"]["only_head_frozen"]["sentiment"]) == {"vs_single_task"}
    assert "| scenario | Δ acc vs single_task | Δ F1 vs single_task |" in text


@pytest.mark.slow
def test_report_of_a_study_at_two_training_set_sizes(tmp_path):
    sweep = make_fake_study(tmp_path / "sweep", sizes=(64, None))
    text = write_report(sweep).read_text()
    numbers = json.loads((sweep / "report.json").read_text())
    assert numbers["sizes"] == ["64", "all"] and set(numbers["by_size"]) == {"64", "all"}
    small = numbers["by_size"]["64"]["scenarios"]["only_head_frozen"]["classification"]["acc"]
    assert small["n"] == 2 and small["mean"] == pytest.approx(0.45)
    assert "### `classification`, 64 training examples per task" in text
    for task in ("classification", "sentiment"):
        plot = f"test_acc_vs_examples_{task}.png"
        assert a_drawn_png(sweep / plot) and f"]({plot})" in text


def test_report_on_a_folder_without_runs_says_what_to_give(tmp_path):
    with pytest.raises(ConfigError, match=r"holds no finished run folders \(\.hydra/config\.yaml"):
        write_report(tmp_path)
    with pytest.raises(SystemExit, match=r"^Error: sweep folder .*/missing does not exist"):
        main([str(tmp_path / "missing")])


@pytest.mark.subprocess
def test_two_seed_study_multirun_then_report(tiny_encoders, tmp_path):
    """As `make compare SEEDS=1,2` does, with two scenarios: the scenarios' multirun, the
    single-task baselines' multirun into the same folder, then the report. only_head_frozen,
    here at full_finetune's rates with a 1-epoch warm-up (its experiment's own rates would train
    that epoch itself), forks full_finetune's first epoch of its seed (freezing sentiment's
    head: on data=tiny classification's epochs are the longer, so the epochs keep their length)."""
    sweep = tmp_path / "compare"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    common = [
        "seed=1,2",
        "data.max_train_examples=null",
        "data=tiny",
        f"model.encoder.name_or_path={tiny_encoders['bert']}",
        f"paths.root_dir={tmp_path}",
        "trainer.max_epochs=2",
        "+trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
    ]
    train = [sys.executable, "-m", "mtl_lightning.train", "-m"]
    for axis in (
        [
            "experiment=full_finetune,only_head_frozen",
            "freezing.head=sentiment",
            "freezing.fresh_head_warmup_epochs=1",
            *FULL_FINETUNE_RATES,
            "fork_points=[0]",
            f"fork_from={sweep}",
        ],
        ["experiment=single_task", "data.only_tasks=classification,sentiment"],
    ):
        result = subprocess.run(
            train + axis + common, capture_output=True, text=True, env=env, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
    report = [sys.executable, "-m", "mtl_lightning.report", str(sweep)]
    result = subprocess.run(report, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    text = (sweep / "report.md").read_text()
    assert "8 runs (4 of them single-task baselines): seeds 1, 2;" in text
    assert "2 runs forked from another run's first epochs" in text
    sentiment = text.split("### Task `sentiment`")[1]
    frozen_row = next(line for line in sentiment.splitlines() if "2_only_head_frozen" in line)
    cells = [cell.strip() for cell in frozen_row.split("|")]
    assert cells[-3][0] in "+-"  # forgetting, a signed number
    own, chosen = cells[-2].rstrip(" !").split(" / ")  # the best epochs: the task's, the run's
    assert own.isdigit() and chosen.isdigit()
    plots = ("val_acc_classification.png", "val_acc_sentiment.png", "time_vs_accuracy.png")
    for plot in plots:
        assert a_drawn_png(sweep / plot)
    numbers = json.loads((sweep / "report.json").read_text())
    assert not numbers["notes"]  # every baseline's test split is its multi-task run's
    assert numbers["forks"] == {
        f"{job}_only_head_frozen": str(sweep / f"{source}_full_finetune/checkpoints/epoch00.ckpt")
        for job, source in ((2, 0), (3, 1))  # seed 1, seed 2
    }
    assert 0 < numbers["reused_seconds"] < numbers["train_seconds_total"]
    for task in ("classification", "sentiment"):
        assert numbers["scenarios"]["only_head_frozen"][task]["acc"]["n"] == 2
        assert numbers["baselines"][task]["f1"]["n"] == 2
        for versus in ("vs_single_task", "vs_reference"):
            delta = numbers["deltas"]["only_head_frozen"][task][versus]["acc"]
            assert delta["n"] == 2 and 0 < delta["p"] <= 1
    baseline = sweep / "baseline_0_single_task_classification"
    assert json.loads((baseline / "summary.json").read_text())["tasks"].keys() == {"classification"}

    run = sweep / "0_full_finetune"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_seconds"] > 0
    assert 0 < summary["trainable_params"] == summary["total_params"]
    with (run / "metrics.csv").open() as file:
        columns = next(csv.reader(file))
    # The LR monitor logs one learning rate per named optimizer group.
    assert {"lr-AdamW/heads", "lr-AdamW/layer_0", "lr-AdamW/embeddings/no_decay"} <= set(columns)
    for task in ("classification", "sentiment"):
        # The confusion matrices: labelled, and their diagonal is the logged test accuracy.
        with (run / f"confusion_{task}.csv").open() as file:
            header, *rows = list(csv.reader(file))
        assert header[0] == "true\\predicted" and [r[0] for r in rows] == header[1:]
        counts = [[int(c) for c in r[1:]] for r in rows]
        correct = sum(counts[i][i] for i in range(len(counts)))
        accuracy = correct / sum(map(sum, counts))
        assert accuracy == pytest.approx(summary["metrics"][f"test/{task}/acc"], abs=1e-6)
        # The test predictions: one row per test example, the logged accuracy and macro-F1.
        with (run / "test_predictions" / f"{task}.csv").open() as file:
            rows = list(csv.DictReader(file))
        assert [int(r["idx"]) for r in rows] == list(range(sum(map(sum, counts))))
        labels, preds = ([int(r[key]) for r in rows] for key in ("label", "pred"))
        found = stats.score(Classification(task, summary["tasks"][task]), labels, preds)
        assert found["acc"] == pytest.approx(accuracy)
        assert found["f1"] == pytest.approx(summary["metrics"][f"test/{task}/f1"], abs=1e-6)
        assert summary["examples"][task]["train"] > 0
        tables = list((run / "wandb").glob(f"offline-run-*/files/media/table/test/{task}/*.json"))
        assert len(tables) == 1  # the W&B confusion-matrix chart's table


@pytest.mark.slow
def test_summary_train_time_is_the_fit_alone(make_cfg, tmp_path):
    """Testing the best checkpoint restores its Timer state; that must not count twice."""
    import json
    import time
    from datetime import datetime, timezone

    from mtl_lightning.train import train

    before = datetime.now(timezone.utc).replace(microsecond=0)
    start = time.perf_counter()
    train(make_cfg("experiment=full_finetune", "trainer.max_epochs=2"))
    elapsed = time.perf_counter() - start
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 < summary["train_seconds"] < elapsed
    # When the run began and ended, UTC (the report's span of a study).
    began, ended = map(datetime.fromisoformat, (summary["started"], summary["finished"]))
    assert (
        before <= began <= ended <= datetime.now(timezone.utc)
        and began.utcoffset().total_seconds() == 0
    )
    assert (ended - began).total_seconds() >= summary["train_seconds"] - 1


@pytest.mark.subprocess
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_report_picks_the_newest_sweep_by_time(tmp_path):
    """`logs/compare/default` sorts after any dated folder by name; the newer one is meant."""
    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").touch()
    installed = tmp_path / ".venv" / "bin" / ".installed"
    installed.parent.mkdir(parents=True)
    installed.touch()
    for path in (tmp_path / "Makefile", tmp_path / "pyproject.toml"):
        os.utime(path, (1_000, 1_000))  # older than .installed: `install` has nothing to do
    sweeps = tmp_path / "logs" / "compare"
    for name, mtime in (("default", 2_000), ("2026-01-02_03-04-05", 3_000), ("a_old", 1_500)):
        (sweeps / name).mkdir(parents=True)
        os.utime(sweeps / name, (mtime, mtime))
    result = subprocess.run(
        ["make", "-n", "report"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert "-m mtl_lightning.report logs/compare/2026-01-02_03-04-05 " in result.stdout + " "


@pytest.mark.slow
def test_report_delta_m_per_scenario_and_weighting(tmp_path):
    """Δm over the baselines (fake_sweep.STUDY_ERRORS), each seed against its own; a copy of
    full_finetune's runs trained with `weighting=pcgrad` is a group of its own."""
    sweep = make_fake_study(tmp_path / "sweep")
    for job, original in ((10, "0_full_finetune"), (11, "1_full_finetune")):
        copy = sweep / f"{job}_full_finetune"
        shutil.copytree(sweep / original, copy)
        overrides = copy / ".hydra" / "overrides.yaml"
        overrides.write_text(overrides.read_text() + "- weighting=pcgrad\n")
    text = write_report(sweep).read_text()
    numbers = json.loads((sweep / "report.json").read_text())

    def f1(task: str, wrong: int, seed: int) -> float:
        labels, preds = study_predictions(task, wrong, seed)
        return _macro_f1(labels, preds, len(STUDY_TASKS[task]))

    # full_finetune: classification 8 and 4 wrong against the baselines' 6, sentiment as many
    # wrong as its baselines (10, 12): accuracy -0.05/0.85 and +0.05/0.85, F1 likewise, and 0
    # for sentiment's two metrics; the mean over the four terms.
    expected = [
        (-0.05 / 0.85 + (f1("classification", 8, 1) / f1("classification", 6, 1) - 1)) * 25,
        (+0.05 / 0.85 + (f1("classification", 4, 2) / f1("classification", 6, 2) - 1)) * 25,
    ]
    assert expected[0] < 0 < expected[1]
    for label in ("full_finetune", "full_finetune+pcgrad"):
        delta_m = numbers["delta_m"][label]
        assert delta_m["seeds"] == [1, 2] and delta_m["values"] == pytest.approx(expected)
        assert delta_m["mean"] == pytest.approx(sum(expected) / 2)
    # only_head_frozen: 20 and 24 wrong on classification, far worse than the baselines.
    assert numbers["delta_m"]["only_head_frozen"]["mean"] < -10
    assert "single_task" not in numbers["delta_m"]
    assert "## Δm over the single-task baselines" in text
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("| full_finetune+pcgrad | all"))
    assert f"1: {expected[0]:+.2f}, 2: {expected[1]:+.2f}" in row


@pytest.mark.slow
def test_report_names_a_killed_run_and_a_cut_off_summary(tmp_path):
    """A third seed of full_finetune killed mid-training (validation rows only, no summary.json,
    a last.ckpt) and one whose summary.json was cut mid-write: both are named in report.md and
    report.json, left out of the numbers, and the header's seeds are those that finished."""
    sweep = make_fake_study(tmp_path / "sweep")
    killed, cut = sweep / "10_full_finetune", sweep / "11_only_head_frozen"
    for copy, original in ((killed, "0_full_finetune"), (cut, "2_only_head_frozen")):
        shutil.copytree(sweep / original, copy)
        config = copy / ".hydra" / "config.yaml"
        config.write_text(config.read_text().replace("seed: 1\n", "seed: 3\n"))
    (killed / "summary.json").unlink()
    shutil.rmtree(killed / "test_predictions")
    with (killed / "metrics.csv").open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["epoch"] == "0"]
    with (killed / "metrics.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (killed / "checkpoints").mkdir()
    (killed / "checkpoints" / "last.ckpt").write_bytes(b"")
    text = (cut / "summary.json").read_text()
    (cut / "summary.json").write_text(text[: len(text) // 2])

    text = write_report(sweep).read_text()
    numbers = json.loads((sweep / "report.json").read_text())
    assert numbers["seeds"] == [1, 2]
    assert set(numbers["incomplete"]) == {"10_full_finetune", "11_only_head_frozen"}
    assert numbers["incomplete"]["10_full_finetune"].startswith(
        "no summary.json and no test metrics"
    )
    assert (
        f"ckpt_path={killed / 'checkpoints' / 'last.ckpt'}"
        in numbers["incomplete"]["10_full_finetune"]
    )
    assert "summary.json is cut off" in numbers["incomplete"]["11_only_head_frozen"]
    assert numbers["scenarios"]["full_finetune"]["classification"]["acc"]["n"] == 2
    assert ": seeds 1, 2; training examples" in text
    assert "**2 unfinished runs, left out of every number below**" in text
    assert "- `10_full_finetune`: no summary.json and no test metrics: it stopped" in text
    assert "- `11_only_head_frozen`: summary.json is cut off" in text
    with pytest.raises(ConfigError, match=r"summary\.json is not valid JSON .* cut off"):
        read_summary(cut)


def test_summary_is_written_atomically(tmp_path, monkeypatch):
    """A write stopped midway leaves the previous summary.json (or none), never half of one."""
    from types import SimpleNamespace

    trainer = SimpleNamespace(is_global_zero=True, callbacks=[])
    module = torch.nn.Linear(2, 2)
    write_summary(tmp_path, trainer, module, {"val/x": 0.5}, 1.0)
    before = (tmp_path / "summary.json").read_text()

    def cut_off(self, text, **kwargs):  # the process dies after half the text is on disk
        with open(self, "w", **kwargs) as file:
            file.write(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", cut_off)
    with pytest.raises(KeyboardInterrupt):
        write_summary(tmp_path, trainer, module, {"val/x": 0.75}, 2.0)
    monkeypatch.undo()
    assert (tmp_path / "summary.json").read_text() == before
    assert read_summary(tmp_path)["metrics"] == {"val/x": 0.5}


def test_each_tasks_best_epoch_is_shown_beside_the_checkpoints(tmp_path):
    """summary.json's best_epochs: each task's own best val epoch against the tested
    checkpoint's, flagged (and its note repeated) where they are more than one epoch apart."""
    sweep = make_fake_sweep(tmp_path / "sweep")
    history = {
        0: {"classification": 0.90, "sentiment": 0.50, "primary_mean": 0.70},
        1: {"classification": 0.70, "sentiment": 0.60, "primary_mean": 0.65},
        2: {"classification": 0.60, "sentiment": 0.95, "primary_mean": 0.775},
    }
    path = sweep / "1_only_head_frozen" / "summary.json"
    summary = json.loads(path.read_text())
    summary["best_epochs"] = best_epochs(history)
    path.write_text(json.dumps(summary))
    runs = load_runs(sweep)
    text = markdown_report(runs, task_names(runs), plots=[])
    classification = text.split("### Task `classification`")[1].split("### Task `sentiment`")[0]
    assert "| 1_only_head_frozen | only_head_frozen |" in classification
    assert classification.split("| 1_only_head_frozen |")[1].split("\n")[0].endswith("| 0 / 2 ! |")
    assert classification.split("| 0_full_finetune |")[1].split("\n")[0].endswith("| — |")
    sentiment = text.split("### Task `sentiment`")[1]
    assert sentiment.split("| 1_only_head_frozen |")[1].split("\n")[0].endswith("| 2 / 2 |")
    assert "- `1_only_head_frozen`: The checkpoint is of epoch 2" in text
    assert "(classification at epoch 0)" in text


def test_the_report_says_which_commits_the_runs_came_from_and_when_they_ran(tmp_path):
    def run(name, sha, dirty, started, finished):
        commit = {"sha": sha, "dirty": dirty} if sha else None
        summary = {"commit": commit, "started": started, "finished": finished}
        return Run(tmp_path / name, "full_finetune", 1, [], summary=summary)

    runs = [
        run(
            "a",
            "19bef5d" + "0" * 33,
            False,
            "2026-12-06T01:52:10+00:00",
            "2026-12-06T02:04:00+00:00",
        ),
        run(
            "b",
            "19bef5d" + "0" * 33,
            True,
            "2026-12-06T02:04:05+00:00",
            "2026-12-06T03:20:40+00:00",
        ),
        run(
            "c",
            "abcdef1" + "0" * 33,
            False,
            "2026-12-06T02:30:00+00:00",
            "2026-12-06T02:40:00+00:00",
        ),
    ]
    found = provenance(runs)
    assert found["commits"] == [
        {"sha": "19bef5d" + "0" * 33, "runs": 2, "dirty": 1},
        {"sha": "abcdef1" + "0" * 33, "runs": 1, "dirty": 0},
    ]
    assert found["wall_seconds"] == 88 * 60 + 30 and found["unknown"] == 0
    assert _provenance_line(found) == (
        "Code: commit 19bef5d (2 runs, 1 with uncommitted changes), commit abcdef1 (1 run). "
        "Ran 2026-12-06 01:52 to 03:20 UTC: 1h28m from the first run's start to the last one's end."
    )
    # A run from before summaries recorded the time, or outside a git checkout: said, not guessed.
    older = provenance([*runs, run("d", None, False, None, None)])
    assert older["wall_seconds"] is None and older["unknown"] == 1
    assert _provenance_line(older).endswith(
        "1 run without a recorded commit. When they ran: not recorded by every run."
    )
    # Summaries written by hand or by other tools: no sha, not a dict, a time without a zone
    # (taken as UTC), a time that is not one. Counted or left out, never a crash.
    odd = [
        run("e", None, False, "2026-12-06T01:00:00", "2026-12-06T01:30:00"),
        run("f", None, False, "2026-12-06T00:30:00+00:00", "2026-12-06T02:00:00+00:00"),
    ]
    odd[0].summary["commit"] = {"dirty": True}
    odd[1].summary["commit"] = "19bef5d"
    found = provenance(odd)
    assert found["unknown"] == 2 and found["commits"] == []
    assert found["started"] == "2026-12-06T00:30:00+00:00" and found["wall_seconds"] == 5400
    odd[1].summary["finished"] = "yesterday"
    assert provenance(odd)["wall_seconds"] is None
