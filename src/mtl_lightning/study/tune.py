"""An equal tuning budget per scenario (`make compare TUNE=N`): the searches, and what they chose.

Each scenario (and each single-task baseline) gets the same `N` Optuna trials
(`hparams_search=tune`) over the space its experiment declares under `tune:`, on the validation
split: trials stop after fitting (`test_after_fit=false`), so no test metric exists to be read.
A search's trials and Optuna's `optimization_results.yaml` live in
`<sweep>/tune/<size>/<label>/`; its best parameters are then retrained over the seeds, into the
sweep folder as `make compare` names runs, and tested once.

The first trial of each search is its experiment's defaults (`defaults.yaml` in the search
folder, queued with Optuna's `enqueue_trial` in the search's study, `optuna.db`): the defaults
compete within the same N trials, so a chosen configuration never scores below them on
validation, and the report shows what the search gained over them.

The report reads the searches back (`mtl_lightning.study.report.tuning`): each one's chosen
configuration, and its expected best validation score as a function of the number of trials
(`stats.expected_max`).
"""

from __future__ import annotations

import math
import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.scenarios.build import build_scenario

TUNE_DIR = "tune"  # under the sweep folder: tune/<size>/<label>/<n>_<run_name>/
RESULTS_FILE = "optimization_results.yaml"  # the Optuna sweeper's: best_params, best_value
DEFAULTS_FILE = "defaults.yaml"  # the searched keys' values in the experiment: the first trial
STUDY_FILE = "optuna.db"  # the search's Optuna study (sqlite), holding the queued first trial
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


def default_value(config: DictConfig, key: str) -> object:
    """What a run of `config` uses for `key`: its value, or for a scenario setting left null,
    the value the scenario settles it to (`only_head_frozen`'s warm-up: its
    `fresh_head_warmup_epochs`, 2 in its experiment, or 0 with `model.init_from`); None where
    only a running job can say. A bad setting raises its ConfigError."""
    try:
        value = OmegaConf.select(config, key, default=None)
    except Exception:  # an interpolation only a running job resolves
        return None
    name = key.removeprefix("freezing.")
    if value is None and name != key:
        try:
            init_from = OmegaConf.select(config, "model.init_from", default=None)
            scenario = build_scenario(config.get("freezing"), init_from)
        except ConfigError:  # a bad setting: said as it is
            raise
        except Exception:  # an interpolation only a running job resolves
            return None
        if name in type(scenario).RULES:  # a setting, not any attribute of the scenario
            value = getattr(scenario, name, None)
    return value


def queue_defaults(folder: Path, label: str, config: DictConfig, given: Sequence[str]) -> str:
    """Start the search in `folder` afresh with its first trial queued: the values `config` (the
    experiment's, with the study's overrides) gives the keys its `tune:` space searches, but
    those the overrides `given` fix (the sweeper does not search them). Returns the Optuna
    storage URL for `hydra.sweeper.storage`. A default outside its range is not queued (Optuna
    would draw it instead): the first trial draws that key, and this says so."""
    import optuna  # the `sweep` extra, as hparams_search=tune needs
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    space = {str(k): str(v) for k, v in (config.get("tune") or {}).items()}
    fixed = {o.key_or_group for o in OverridesParser.create().parse_overrides(list(given))}
    distributions, _ = create_params_from_overrides(
        [f"{k}={v}" for k, v in space.items() if k not in fixed]
    )
    defaults = {}
    for key, distribution in distributions.items():
        value = default_value(config, key)
        if isinstance(value, int | float | str | bool) and distribution._contains(
            distribution.to_internal_repr(value)
        ):
            defaults[key] = value
        else:
            print(
                f"{folder}: the first trial draws {key} as the others do: its default "
                f"{value!r} is not a value of its space {space[key]} (the experiment's `tune:`).",
                flush=True,
            )
    folder.mkdir(parents=True, exist_ok=True)
    # A stopped search starts again at trial 0: its study and its trials' folders go with it.
    (folder / STUDY_FILE).unlink(missing_ok=True)
    for trial in trial_folders(folder):
        shutil.rmtree(trial)
    storage = f"sqlite:///{(folder / STUDY_FILE).resolve()}"
    study = optuna.create_study(study_name=label, storage=storage, direction="maximize")
    with warnings.catch_warnings():  # enqueue_trial is "experimental" in optuna 2.x
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.enqueue_trial(defaults)
    OmegaConf.save(OmegaConf.create(defaults), folder / DEFAULTS_FILE)
    return storage


def seeds_test_on_search_examples(config: DictConfig, seeds: Sequence[int]) -> str | None:
    """One line when seeds after the first split the data their own way (`data.seed` follows
    `seed`, the default), so that a test split carved out of a task's pool (not given by its
    source) holds some of the examples the search validated on, at the first seed; None when
    every seed shares one split or there is one."""
    data = OmegaConf.to_container(config, resolve=False).get("data") or {}
    if len(seeds) < 2 or data.get("seed") != "${seed}":
        return None
    share = data.get("val_fraction")
    about = f" (about {share:.0%} of each, at random)" if isinstance(share, float) else ""
    return (
        f"Seeds {', '.join(map(str, seeds[1:]))} split the data their own way (data.seed "
        f"follows seed): a test split carved out of a task's pool then holds some of the "
        f"validation examples the search chose on at seed {seeds[0]}{about}; "
        'ARGS="data.seed=0" gives every seed one split, kept apart from the search\'s validation.'
    )


def _as_map(overrides: Sequence[str]) -> dict[str, str]:
    """{key (with its + or ~): value} of Hydra overrides, as Hydra writes them (`1.0e-4` and
    `0.0001` alike); a key given twice keeps its last value, as Hydra does."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    return {o.get_key_element(): o.get_value_element_as_str() for o in parsed}


def overrides_not_in(
    run: Path, overrides: Sequence[str], given: Sequence[str] = ()
) -> list[str] | None:
    """Those of `overrides` that the run in `run` was not started with (its Hydra
    `.hydra/overrides.yaml`), but for keys the overrides `given` set (they follow the study's
    `ARGS`); empty: it is that run; None: the run recorded no overrides."""
    path = Path(run) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    recorded = _as_map(OmegaConf.load(path))
    fixed = set(_as_map(given))
    return [
        f"{key}={value}"
        for key, value in _as_map(overrides).items()
        if key not in fixed and recorded.get(key) != value
    ]


def queued_defaults(folder: Path) -> dict | None:
    """The first trial's queued defaults of the search in `folder` (None: none were queued)."""
    path = folder / DEFAULTS_FILE
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else None


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
