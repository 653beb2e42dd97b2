"""`make compare TUNE=N`: an equal tuning budget per scenario, on validation data only."""

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
import yaml
from conftest import EXPERIMENTS, compose_cfg
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mtl_lightning import tune as tune_cli
from mtl_lightning.config_check import check_train_config
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.scenarios.build import build_scenario
from mtl_lightning.study import stats
from mtl_lightning.study.report import plot_expected_validation, tuning, tuning_lines
from mtl_lightning.study.tune import (
    default_value,
    queue_defaults,
    queued_defaults,
    searches,
    seeds_test_on_search_examples,
)
from mtl_lightning.train import build, build_data, build_module
from mtl_lightning.tune import search_command

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "src" / "mtl_lightning" / "data" / "tiny"
TRAINING_KNOBS = {"model.weight_decay", "model.warmup_ratio", "trainer.max_epochs"}


# --- Dodge et al. 2019's expected validation performance, against the closed form by hand ---

# Scores 0.6, 0.5, 0.7 (N = 3; sorted 0.5, 0.6, 0.7). n draws with replacement:
# P(max <= v_(i)) = (i/3)^n, so the weights of 0.5, 0.6, 0.7 are
#   n=1: 1/3, 1/3, 1/3      -> E = 0.6,       E[x^2] = 1.10/3
#   n=2: 1/9, 3/9, 5/9      -> E = 5.8/9,     E[x^2] = 3.78/9 = 0.42
#   n=3: 1/27, 7/27, 19/27  -> E = 18/27,     E[x^2] = (0.25 + 2.52 + 9.31)/27 = 12.08/27
HAND_WORKED = [
    (1, 0.6, 1.10 / 3 - 0.36),
    (2, 5.8 / 9, 0.42 - (5.8 / 9) ** 2),
    (3, 18 / 27, 12.08 / 27 - (18 / 27) ** 2),
]


@pytest.mark.parametrize(("n", "mean", "variance"), HAND_WORKED)
def test_expected_best_of_n_trials_is_the_closed_form(n, mean, variance):
    found = stats.expected_max([0.6, 0.5, 0.7], n)
    assert found["n"] == n
    assert found["mean"] == pytest.approx(mean, abs=1e-12)
    assert found["std"] == pytest.approx(math.sqrt(variance), abs=1e-12)


def test_expected_best_grows_to_the_best_score_and_ties_have_no_spread():
    curve = stats.expected_max_curve([0.6, 0.5, 0.7], up_to=60)
    means = [point["mean"] for point in curve]
    assert means == sorted(means)  # more trials never expect a worse best
    assert means[0] == pytest.approx(0.6)  # one trial: the mean score
    assert means[-1] == pytest.approx(0.7, abs=1e-9)  # many: the best one observed
    assert curve[-1]["std"] < 1e-4
    assert stats.expected_max([0.4, 0.4], 3) == {"n": 3, "mean": 0.4, "std": 0.0}
    assert [p["n"] for p in stats.expected_max_curve([0.1, 0.2])] == [1, 2]


# --- the search spaces ---


def _values(key: str, space: str) -> list:
    """The values a trial can take at the ends of a space (Hydra's sweep syntax)."""
    (override,) = OverridesParser.create().parse_overrides([f"{key}={space}"])
    if override.is_choice_sweep():
        return list(override.sweep_iterator())
    assert override.is_interval_sweep(), f"{key}: {space}"
    return [override.value().start, override.value().end]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_declares_its_own_space_of_valid_values(make_cfg, experiment):
    """Each experiment's `tune:` names its own knobs, and each end of each range is a valid
    config: no trial of `make compare TUNE=N` is refused."""
    base = (f"experiment={experiment}", "data.only_tasks=classification")[
        : 2 if experiment == "single_task" else 1
    ]
    space = OmegaConf.to_container(make_cfg(*base).tune)
    keys = set(space)
    if experiment == "entire_network_frozen":  # trains nothing: only its readout is a choice
        assert keys == {"callbacks.frozen_readout.kind", "callbacks.frozen_readout.k"}
    else:
        assert keys >= TRAINING_KNOBS
        assert keys & {"model.lr", "model.head_lr"}
    if experiment == "gradual_unfreeze":
        assert keys >= {"model.layerwise_lr_decay", "freezing.every_n_epochs", "model.lr"}
    if experiment == "only_head_frozen":
        assert "freezing.head_warmup_epochs" in keys
    datamodule = build_data(make_cfg(*base).data)
    for key, text in space.items():
        for value in _values(key, text):
            cfg = make_cfg(*base, f"{key}={value}")
            check_train_config(cfg)
            build_scenario(cfg.freezing, None)
            build_module(cfg.model, datamodule.label_names, datamodule.task_specs, cfg.weighting)
            for node in cfg.callbacks.values():
                if node is not None:
                    build(node)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiments_defaults_are_values_of_its_space(experiment):
    """The first trial of a search runs the experiment's defaults only where they are values of
    its `tune:` space (else that key is drawn): keep the defaults inside it."""
    pytest.importorskip("optuna")
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    only = ["data.only_tasks=classification"] if experiment == "single_task" else []
    cfg = compose_cfg("train", f"experiment={experiment}", *only)
    space = OmegaConf.to_container(cfg.tune)
    distributions, _ = create_params_from_overrides([f"{k}={v}" for k, v in space.items()])
    assert set(distributions) == set(space)
    for key, distribution in distributions.items():
        value = default_value(cfg, key)  # a scenario's null setting: what the scenario settles
        if (experiment, key) == ("only_head_frozen", "freezing.head_warmup_epochs"):
            assert OmegaConf.select(cfg, key) is None and value == 2  # a fresh run's
            trained = compose_cfg("train", f"experiment={experiment}", "model.init_from=x.ckpt")
            assert default_value(trained, key) == 0  # from a trained head: outside, drawn
        inside = distribution._contains(distribution.to_internal_repr(value))
        assert inside, f"{experiment}: {key}={value} is outside its space {space[key]}"


def test_seeds_whose_test_split_holds_the_searchs_validation_examples_are_named():
    """With data.seed following seed (the default), seeds 2 and 3 carve their test split from
    the pool seed 1 validated on; with one split for every seed, or one seed, nothing to say."""
    cfg = compose_cfg("train", "experiment=full_finetune")
    line = seeds_test_on_search_examples(cfg, [1, 2, 3])
    assert line.startswith("Seeds 2, 3 split the data their own way")
    assert "at seed 1 (about 10% of each, at random)" in line and 'ARGS="data.seed=0"' in line
    assert seeds_test_on_search_examples(cfg, [1]) is None
    fixed = compose_cfg("train", "experiment=full_finetune", "data.seed=0")
    assert seeds_test_on_search_examples(fixed, [1, 2, 3]) is None


def test_the_searches_are_the_scenarios_then_one_baseline_per_task():
    found = searches(["full_finetune", "gradual_unfreeze"], ["a", "b"], ["static", "pcgrad"])
    assert [s.label for s in found] == [
        "full_finetune",
        "full_finetune+pcgrad",
        "gradual_unfreeze",
        "gradual_unfreeze+pcgrad",
        "single_task_a",
        "single_task_b",
    ]
    assert found[-1].overrides == ("experiment=single_task", "data.only_tasks=b")
    assert found[-1].baseline and not found[0].baseline
    command = search_command(Path("/s"), found[0], "500", 4, 7, ["x=1"])
    assert "hparams_search=tune" in command and "hydra.sweeper.n_trials=4" in command
    assert "data.max_train_examples=500" in command and "seed=7" in command
    assert "hydra.sweep.dir=/s/tune/500/full_finetune" in command and command[-1] == "x=1"


def test_the_first_trial_queued_is_the_experiments_defaults(tmp_path, capsys):
    """What the experiment sets for each searched key is queued as the study's first trial; a
    key the study's overrides fix is not searched, and a default outside its space is drawn,
    with a sentence naming it."""
    optuna = pytest.importorskip("optuna")
    config = OmegaConf.create(
        {
            "tune": {
                "model.lr": "tag(log, interval(1e-5, 2e-4))",
                "model.weight_decay": "interval(0.0, 0.1)",
                "trainer.max_epochs": "choice(2, 3, 4)",
                "callbacks.readout.kind": "choice(centroid, knn)",
            },
            "model": {"lr": 5e-5, "weight_decay": 0.5},
            "trainer": {"max_epochs": 3},
            "callbacks": {"readout": {"kind": "knn"}},
        }
    )
    folder = tmp_path / "tune" / "all" / "full_finetune"
    for _ in range(2):  # a search started again queues its first trial again, once
        storage = queue_defaults(folder, "full_finetune", config, ["trainer.max_epochs=1"])
        (folder / "0" / ".hydra").mkdir(parents=True)  # a trial of the stopped search
        (folder / "0" / ".hydra" / "config.yaml").write_text("seed: 1\n")
    queue_defaults(folder, "full_finetune", config, ["trainer.max_epochs=1"])
    assert not (folder / "0").exists()  # its trials start again, none left from before
    expected = {"model.lr": 5e-5, "callbacks.readout.kind": "knn"}
    assert queued_defaults(folder) == expected
    study = optuna.load_study(study_name="full_finetune", storage=storage)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.WAITING
    assert trial.system_attrs["fixed_params"] == expected
    said = capsys.readouterr().out
    assert "draws model.weight_decay" in said and "0.5" in said and "max_epochs" not in said
    assert queued_defaults(tmp_path) is None


def test_a_continued_study_keeps_only_its_own_runs(tmp_path, monkeypatch):
    """Given the same SWEEP again, a run already trained with the search's choice is kept; a run
    of another scenario in its place (other SCENARIOS before) is refused, not kept as this one.
    Overrides compare as Hydra reads them, and keys that ARGS sets are the study's own."""
    started = []
    monkeypatch.setattr(tune_cli, "_run", started.append)
    for label in ("full_finetune", "gradual_unfreeze"):
        _fake_search(tmp_path / "tune" / "all" / label, [0.6, 0.7], {"model.lr": 3.0e-5})
    run = tmp_path / "0_full_finetune_seed1"
    (run / ".hydra").mkdir(parents=True)
    (run / "summary.json").write_text("{}")

    def recorded(*overrides: str) -> None:
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))

    same = ["experiment=full_finetune", "seed=1", "data.max_train_examples=null"]
    recorded(*same, "model.lr=3.0e-05", "logger=csv")  # 3.0e-05 is 3e-05; ARGS' key as given
    tune_cli.tune_study(tmp_path, 2, ["full_finetune"], [], [1], args=["logger=csv"])
    recorded(*same[:2], "data.max_train_examples=200", "model.lr=3e-05")
    tune_cli.tune_study(
        tmp_path, 2, ["full_finetune"], [], [1], ["all"], [], ["data.max_train_examples=200"]
    )
    assert started == []  # searched and trained already: kept
    with pytest.raises(ConfigError, match="0_full_finetune_seed1 holds another run than this "):
        tune_cli.tune_study(tmp_path, 2, ["gradual_unfreeze"], [], [1])
    recorded(*same)  # another learning rate
    with pytest.raises(ConfigError, match=r"\(started without model.lr=3e-05\)"):
        tune_cli.tune_study(tmp_path, 2, ["full_finetune"], [], [1])
    # Two runs in one place: the one that is this study's is kept, whichever sorts first.
    other = tmp_path / "0_a_full_finetune_seed1"
    shutil.copytree(run, other)
    recorded(*same, "model.lr=3e-05")
    tune_cli.tune_study(tmp_path, 2, ["full_finetune"], [], [1])
    (run / ".hydra" / "overrides.yaml").unlink()
    shutil.rmtree(other)
    with pytest.raises(ConfigError, match=r"\(it records no .hydra/overrides.yaml\)"):
        tune_cli.tune_study(tmp_path, 2, ["full_finetune"], [], [1])
    assert started == []


# --- the report: chosen configurations and expected-validation curves, from fixture trials ---

FIXTURE_TRIALS = {"full_finetune": [0.6, 0.5, 0.7], "entire_network_frozen": [0.4, 0.4, 0.4]}


def _fake_search(folder: Path, scores: list[float], params: dict) -> None:
    for number, score in enumerate(scores):
        trial = folder / f"{number}_trial"
        (trial / ".hydra").mkdir(parents=True)
        (trial / ".hydra" / "config.yaml").write_text("seed: 1\n")
        rows = [
            {"epoch": 0, "val/primary_mean": score - 0.1},  # the best epoch counts, not the last
            {"epoch": 1, "val/primary_mean": score},
            {"epoch": 2, "val/primary_mean": score - 0.2},
        ]
        with (trial / "metrics.csv").open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=["epoch", "step", "val/primary_mean"])
            writer.writeheader()
            writer.writerows(rows)
        (trial / "summary.json").write_text(json.dumps({"train_seconds": 1.0}))
    results = {"name": "optuna", "best_params": params, "best_value": max(scores)}
    (folder / "optimization_results.yaml").write_text(yaml.safe_dump(results))


def test_report_shows_each_chosen_configuration_and_its_expected_validation_curve(tmp_path):
    _fake_search(
        tmp_path / "tune" / "all" / "full_finetune",
        FIXTURE_TRIALS["full_finetune"],
        {"model.lr": 3.0e-5, "trainer.max_epochs": 3},
    )
    _fake_search(
        tmp_path / "tune" / "all" / "entire_network_frozen",
        FIXTURE_TRIALS["entire_network_frozen"],
        {"callbacks.frozen_readout.kind": "knn"},
    )
    # full_finetune's first trial ran its defaults; entire_network_frozen's search queued none.
    (tmp_path / "tune" / "all" / "full_finetune" / "defaults.yaml").write_text("model.lr: 5.0e-5\n")
    found = tuning(tmp_path)
    entry = found["all"]["full_finetune"]
    assert [t["val"] for t in entry["trials"]] == pytest.approx([0.6, 0.5, 0.7])  # best epoch
    assert entry["defaults"] == {"model.lr": 5.0e-5}
    assert entry["defaults_val"] == pytest.approx(0.6)
    assert found["all"]["entire_network_frozen"]["defaults_val"] is None
    assert entry["best_params"] == {"model.lr": 3.0e-5, "trainer.max_epochs": 3}
    for (n, mean, variance), point in zip(HAND_WORKED, entry["expected_best_val"], strict=True):
        assert point["n"] == n and point["mean"] == pytest.approx(mean)
        assert point["std"] == pytest.approx(math.sqrt(variance))
    text = "\n".join(tuning_lines({"tuning": found}))
    assert "## Tuning: an equal budget per scenario" in text
    assert "`model.lr=3e-05`, `trainer.max_epochs=3`" in text
    assert "`callbacks.frozen_readout.kind=knn`" in text
    assert "E[best val], n=2" in text and f"{5.8 / 9:.4f} ± " in text
    assert (
        "| defaults' val | best val |" in text and "| full_finetune | 3 | 0.6000 | 0.7000 |" in text
    )
    assert "| entire_network_frozen | 3 | — | 0.4000 |" in text
    figure = plot_expected_validation(found["all"])
    (axes,) = figure.axes
    assert list(found["all"]) == ["entire_network_frozen", "full_finetune"]  # by name
    assert [line.get_label() for line in axes.get_lines()] == list(found["all"])
    assert list(axes.get_lines()[1].get_ydata()) == pytest.approx([0.6, 5.8 / 9, 18 / 27])
    assert tuning(tmp_path / "nowhere") == {} and tuning_lines({"tuning": {}}) == []


# --- test data never enters selection ---


def _write_split(path: Path, rows: list[dict[str, str]], flip: list[str] | None = None) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["label", "text"], delimiter="\t")
        writer.writeheader()
        for row in rows:
            label = row["label"]
            if flip:  # every label replaced by the next one of the label set: all wrong
                label = flip[(flip.index(label) + 1) % len(flip)]
            writer.writerow({"label": label, "text": row["text"]})


def _files_data(folder: Path, poison: bool) -> list[str]:
    """data=files with given train/val/test splits of the tiny corpus; `poison`: every test
    label flipped."""
    folder.mkdir(parents=True)
    overrides = ["data=files"]
    for task in ("classification", "sentiment"):
        with (TINY / f"{task}.tsv").open(newline="") as file:
            rows = list(csv.DictReader(file, delimiter="\t"))
        labels = sorted({row["label"] for row in rows})
        splits = {"train": rows[0::3], "val": rows[1::3], "test": rows[2::3]}
        for split, part in splits.items():
            path = folder / f"{task}_{split}.tsv"
            _write_split(path, part, labels if poison and split == "test" else None)
            overrides.append(f"data.tasks.{task}.{split}={path}")
        overrides.append(f"data.tasks.{task}.label_names=[{','.join(labels)}]")
    return overrides


def _tiny_args(tiny_encoders: dict[str, str], root: Path) -> list[str]:
    return [
        "logger=csv",
        f"model.encoder.name_or_path={tiny_encoders['bert']}",
        f"paths.root_dir={root}",
        "trainer.max_epochs=1",
        "+trainer.enable_progress_bar=false",
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_poisoned_test_split_changes_no_trial_and_no_choice(tiny_encoders, tmp_path):
    """The same search, once with every test label flipped: the same trial scores and the same
    chosen configuration; and no trial ran a test (no test metric, no test predictions)."""
    (job,) = searches(["full_finetune"], [])
    chosen = {}
    for poison in (False, True):
        root = tmp_path / ("poisoned" if poison else "clean")
        args = [*_files_data(root / "data", poison), *_tiny_args(tiny_encoders, root)]
        command = search_command(root / "sweep", job, "all", 2, 3, args)
        result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        folder = root / "sweep" / "tune" / "all" / "full_finetune"
        found = tuning(root / "sweep")["all"]["full_finetune"]
        assert len(found["trials"]) == 2
        for trial in folder.iterdir():
            if not trial.is_dir():
                continue
            assert not (trial / "test_predictions").exists()
            header = (trial / "metrics.csv").read_text().splitlines()[0]
            assert "val/primary_mean" in header and "test/" not in header
            summary = json.loads((trial / "summary.json").read_text())
            assert not [key for key in summary["metrics"] if key.startswith("test/")]
        chosen[poison] = (found["best_params"], found["best_value"], found["trials"])
    assert set(chosen[False][0]) >= {"model.lr", "model.head_lr", "model.warmup_ratio"}
    assert "trainer.max_epochs" not in chosen[False][0]  # fixed by the command line: not searched
    assert chosen[True] == chosen[False]


# --- make compare TUNE=N, end to end on tiny data ---


def _parsed(overrides: list[str]) -> dict:
    """Hydra overrides as the runs read them (`5e-05` is a float to Hydra, a string to YAML)."""
    return {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}


@pytest.fixture
def make_folder(tmp_path) -> Path:
    """A copy of the Makefile beside a .venv that `make install` finished, whose python is this
    one (the package as this test session imports it)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (tmp_path / ".venv" / ".torch").write_text("torch==2.13.0\n")
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    (bin_dir / ".installed").touch()  # newer than the copies
    return tmp_path


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_compare_without_tune_is_unchanged_and_with_it_tunes(make_folder):
    def plan(*args: str) -> str:
        command = ["make", "-n", "compare", "SEEDS=1,2", "SWEEP=/s", "TASKS=a", *args]
        result = subprocess.run(command, cwd=make_folder, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    plain = plan()
    assert "mtl_lightning.tune" not in plain and "experiment=full_finetune," in plain
    tuned = plan("TUNE=4", "SIZES=500", "ARGS=trainer.max_epochs=1")
    assert "experiment=full_finetune," not in tuned
    assert "-m mtl_lightning.tune /s --trials 4 --scenarios full_finetune," in tuned
    assert "--tasks=a --seeds 1,2 --sizes 500" in tuned and "-- trainer.max_epochs=1" in tuned
    assert "-m mtl_lightning.report /s" in tuned


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_compare_tune_runs_end_to_end_on_tiny_data(tiny_encoders, make_folder):
    """The quick form (docs/sweeps.md), shrunk: two scenarios and one baseline, 2 trials each,
    at two training-set sizes (the data-size axis), one seed, one epoch; each best
    configuration retrained and tested at its own size, then the report per size."""
    sweep = make_folder / "study"
    args = " ".join(["data=tiny", *_tiny_args(tiny_encoders, make_folder)])
    command = [
        "make",
        "compare",
        "TUNE=2",
        "SEEDS=1",
        "SIZES=24,all",
        "SCENARIOS=full_finetune,entire_network_frozen",
        "TASKS=classification",
        f"SWEEP={sweep}",
        f"ARGS={args}",
    ]
    result = subprocess.run(
        command, cwd=make_folder, capture_output=True, text=True, env=_env(), timeout=1800
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    labels = ["full_finetune", "entire_network_frozen", "single_task_classification"]
    # Runs are numbered over (size, job), sizes in the order given.
    runs = {
        "24": ["0_full_finetune_seed1", "1_entire_network_frozen_seed1"],
        "all": ["2_full_finetune_seed1", "3_entire_network_frozen_seed1"],
    }
    runs["24"].append("baseline_0_single_task_classification_seed1")
    runs["all"].append("baseline_1_single_task_classification_seed1")
    for size, size_runs in runs.items():
        for label, run in zip(labels, size_runs, strict=True):
            results = sweep / "tune" / size / label / "optimization_results.yaml"
            best = yaml.safe_load(results.read_text())["best_params"]
            overrides = yaml.safe_load((sweep / run / ".hydra" / "overrides.yaml").read_text())
            given = dict(o.split("=", 1) for o in overrides)
            # The retrained run is its size's best trial's configuration, at that size, tested once.
            assert best and {key: _parsed(overrides)[key] for key in best} == best
            assert given["data.max_train_examples"] == ("null" if size == "all" else size)
            trials = sorted((sweep / "tune" / size / label).glob("*/.hydra/overrides.yaml"))
            assert len(trials) == 2
            # The first trial is the experiment's defaults, as its config gives them.
            first = _parsed(yaml.safe_load(trials[0].read_text()))
            defaults = queued_defaults(sweep / "tune" / size / label)
            name = "single_task" if label.startswith("single_task_") else label
            experiment = OmegaConf.load(ROOT / "conf" / "experiment" / f"{name}.yaml")
            assert defaults and {k: first[k] for k in defaults} == defaults
            for key, value in defaults.items():
                found = OmegaConf.select(experiment, key)
                assert found is None or found == value, key  # else the model's or trainer's
            for trial in trials:
                trial_given = dict(o.split("=", 1) for o in yaml.safe_load(trial.read_text()))
                assert trial_given["data.max_train_examples"] == given["data.max_train_examples"]
            metrics = json.loads((sweep / run / "summary.json").read_text())["metrics"]
            assert metrics["test/primary_mean"] >= 0
    report = json.loads((sweep / "report.json").read_text())
    assert list(report["tuning"]) == ["24", "all"]
    for size in ("24", "all"):
        assert set(report["tuning"][size]) == set(labels)
        for entry in report["tuning"][size].values():
            assert len(entry["trials"]) == 2 and len(entry["expected_best_val"]) == 2
            assert entry["best_value"] == pytest.approx(
                max(t["val"] for t in entry["trials"]), abs=1e-6
            )
        assert (sweep / f"expected_val_{size}.png").is_file()
    markdown = (sweep / "report.md").read_text()
    assert "## Tuning: an equal budget per scenario" in markdown
    assert set(report["scenarios"]) == {"full_finetune", "entire_network_frozen"}
    # One seed: no seed-level test, and the report says so rather than "a family of 0".
    assert report["family_size"] == 0 and "No difference has a seed-level test" in markdown
