"""An equal tuning budget per scenario (`make compare TUNE=N`): the searches, and what they chose.

Each scenario (and each single-task baseline) gets the same `N` Optuna trials
(`hparams_search=tune`) over the space its experiment declares under `tune:`, on the validation
split: trials stop after fitting (`test_after_fit=false`), so no test metric exists to be read.
A search's trials and Optuna's `optimization_results.yaml` live in
`<sweep>/tune/<size>/<label>/`; its best parameters are then retrained over the seeds, into the
sweep folder as `make compare` names runs, and tested once.

The report reads the searches back (`read_tuning`): each one's chosen configuration, and its
expected best validation score as a function of the number of trials (`stats.expected_max`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from mtl_lightning.core.errors import ConfigError

TUNE_DIR = "tune"  # under the sweep folder: tune/<size>/<label>/<n>_<run_name>/
RESULTS_FILE = "optimization_results.yaml"  # the Optuna sweeper's: best_params, best_value
BASELINE_PREFIX = "single_task_"  # a baseline's search: single_task_<task>


@dataclass(frozen=True)
class Search:
    """One search of the study: a scenario (under a loss weighting), or one task's baseline."""

    label: str  # its folder under tune/<size>/: <scenario>[+<weighting>] or single_task_<task>
    overrides: tuple[str, ...]  # what makes the run this scenario or baseline
    baseline: bool = False


def searches(
    scenarios: Sequence[str], tasks: Sequence[str], weightings: Sequence[str] = ()
) -> list[Search]:
    """The scenarios (each under each of `weightings`, none given: the default), then one
    single-task baseline per task (static weighting, as `make compare` runs them)."""
    found = []
    for scenario in scenarios:
        for weighting in weightings or [None]:
            label = scenario if weighting in (None, "static") else f"{scenario}+{weighting}"
            overrides = (f"experiment={scenario}",)
            if weighting is not None:
                overrides += (f"weighting={weighting}",)
            found.append(Search(label, overrides))
    for task in tasks:
        overrides = ("experiment=single_task", f"data.only_tasks={task}")
        found.append(Search(f"{BASELINE_PREFIX}{task}", overrides, baseline=True))
    return found


def size_override(size: str) -> str:
    """`data.max_train_examples` for a size of `SIZES` (`all`: null, every example)."""
    return f"data.max_train_examples={'null' if size == 'all' else size}"


def search_dir(sweep: Path, size: str, label: str) -> Path:
    return Path(sweep) / TUNE_DIR / size / label


def best_overrides(folder: Path) -> list[str]:
    """The best trial's parameters of the search in `folder`, as Hydra overrides."""
    results = folder / RESULTS_FILE
    if not results.is_file():
        raise ConfigError(
            f"{results} does not exist: the search in {folder} did not finish; rerun "
            "`make compare TUNE=...` with SWEEP= that folder's sweep to finish it."
        )
    params = OmegaConf.to_container(OmegaConf.load(results)).get("best_params") or {}
    return [f"{key}={_override_value(value)}" for key, value in params.items()]


def _override_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _size_order(size: str) -> float:
    return math.inf if size == "all" else int(size) if size.isdigit() else math.inf


def _job_number(folder: Path) -> tuple[float, str]:
    match = re.match(r"(\d+)_", folder.name)
    return (int(match.group(1)) if match else math.inf, folder.name)


def trial_folders(folder: Path) -> list[Path]:
    """A search's trial run folders, in the order they ran (Hydra's job number)."""
    found = [p for p in folder.iterdir() if (p / ".hydra" / "config.yaml").is_file()]
    return sorted(found, key=_job_number)


def search_folders(sweep: Path) -> dict[str, dict[str, Path]]:
    """{size: {label: search folder}} of a sweep's `tune/`, sizes ascending, scenarios by name
    and the baselines after them; empty where it has none."""
    root = Path(sweep) / TUNE_DIR
    if not root.is_dir():
        return {}
    found: dict[str, dict[str, Path]] = {}
    for size_dir in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name):
        folders = sorted(
            size_dir.iterdir(), key=lambda p: (p.name.startswith(BASELINE_PREFIX), p.name)
        )
        labels = {p.name: p for p in folders if p.is_dir()}
        if labels:
            found[size_dir.name] = labels
    return dict(sorted(found.items(), key=lambda item: _size_order(item[0])))


def chosen(folder: Path) -> dict:
    """A search's `best_params` and `best_value` (None for a search that has not finished)."""
    results = folder / RESULTS_FILE
    if not results.is_file():
        return {"best_params": None, "best_value": None}
    data = OmegaConf.to_container(OmegaConf.load(results))
    return {"best_params": data.get("best_params") or {}, "best_value": data.get("best_value")}
