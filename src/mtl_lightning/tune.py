"""`make compare TUNE=N`: the study at an equal tuning budget (`mtl_lightning.study.tune`).

    python -m mtl_lightning.tune <sweep> --trials N --scenarios a,b --tasks t,u --seeds 1,2,3 \\
        [--sizes all] [--weightings static,pcgrad] [-- <Hydra overrides for every run>]

1. For each training-set size, each scenario (and each single-task baseline) gets N trials of
   Optuna (`hparams_search=tune`) over its experiment's `tune:` space at the first seed, on the
   validation split only (trials never test), into `<sweep>/tune/<size>/<label>/`; the first
   trial is the experiment's defaults (`queue_defaults`).
2. Seed by seed, each one's best parameters are retrained and tested once, into the sweep folder
   as `make compare` names runs (`<k>_<run_name>_seed<s>`, `baseline_<k>_<run_name>_seed<s>`).

A search with its `optimization_results.yaml`, and a run with its `summary.json`, are not run
again: a stopped study continues where it stopped, given the same SWEEP. A run found in a place
this study would train another one (other SCENARIOS or SIZES before) is refused.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mtl_lightning.core.errors import ConfigError, one_line_errors
from mtl_lightning.core.summary import SUMMARY_FILE
from mtl_lightning.study.tune import (
    RESULTS_FILE,
    Search,
    best_overrides,
    overrides_not_in,
    queue_defaults,
    search_dir,
    searches,
    seeds_test_on_search_examples,
    size_override,
)

TRAIN = [sys.executable, "-m", "mtl_lightning.train", "-m"]


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def _run(command: list[str]) -> None:
    print(shlex.join(command), flush=True)
    result = subprocess.run(command)
    if result.returncode != 0:
        raise ConfigError(f"this run failed (exit code {result.returncode}): {shlex.join(command)}")


def shared_embeddings(sweep: Path) -> str:
    """Every trial and run of a study shares a frozen pretrained encoder's sentence embeddings
    (`model.frozen_cache_dir`): the first to need them computes them."""
    return f"model.frozen_cache_dir={Path(sweep) / 'frozen_embeddings'}"


def search_command(
    sweep: Path,
    job: Search,
    size: str,
    trials: int,
    seed: int,
    args: Sequence[str] = (),
    storage: str | None = None,
) -> list[str]:
    """The Optuna multirun of one search: `trials` trials over the job's `tune:` space at
    `seed`, none of them tested (hparams_search=tune), into `tune/<size>/<label>/`; `storage`:
    the study to continue (`queue_defaults`: its first trial queued)."""
    return [
        *TRAIN,
        *job.overrides,
        "hparams_search=tune",
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweeper.study_name={job.label}",
        *([f"hydra.sweeper.storage='{storage}'"] if storage else []),
        f"seed={seed}",
        size_override(size),
        shared_embeddings(sweep),
        f"hydra.sweep.dir={search_dir(sweep, size, job.label)}",
        *args,
    ]


def job_config(job: Search, size: str, seed: int, args: Sequence[str] = ()) -> DictConfig:
    """The config a search's trials start from, as `--cfg job` prints it (unresolved)."""
    command = [*TRAIN[:-1], *job.overrides, f"seed={seed}", size_override(size), *args]
    result = subprocess.run([*command, "--cfg", "job"], capture_output=True, text=True)
    if result.returncode != 0:
        raise ConfigError(
            f"this config does not compose (exit code {result.returncode}): "
            f"{shlex.join(command)}: {(result.stderr.strip().splitlines() or [''])[-1]}"
        )
    return OmegaConf.create(result.stdout)


def tune_study(
    sweep: Path,
    trials: int,
    scenarios: Sequence[str],
    tasks: Sequence[str],
    seeds: Sequence[int],
    sizes: Sequence[str] = ("all",),
    weightings: Sequence[str] = (),
    args: Sequence[str] = (),
) -> None:
    """Search, then retrain each best configuration over `seeds` (see the module's docstring)."""
    if trials < 1:
        raise ConfigError(f"TUNE={trials} must be a number of trials, at least 1: e.g. TUNE=8.")
    if not seeds:
        raise ConfigError("SEEDS is empty: give at least one seed, e.g. SEEDS=1,2,3.")
    jobs = searches(scenarios, tasks, weightings)
    notice = None
    for size in sizes:
        for job in jobs:
            folder = search_dir(sweep, size, job.label)
            if (folder / RESULTS_FILE).is_file():
                print(f"{folder}: searched already, kept.", flush=True)
                continue
            # Its first trial is the experiment's defaults: they compete within the N trials.
            config = job_config(job, size, seeds[0], args)
            if notice is None:  # said once, before the first search
                notice = seeds_test_on_search_examples(config, seeds) or ""
                if notice:
                    print(notice, flush=True)
            storage = queue_defaults(folder, job.label, config, args)
            _run(search_command(sweep, job, size, trials, seeds[0], args, storage))
    best = {
        (size, job.label): best_overrides(search_dir(sweep, size, job.label))
        for size in sizes
        for job in jobs
    }
    for seed in seeds:
        for baselines in (False, True):
            for number, (size, job) in enumerate(
                (size, job) for size in sizes for job in jobs if job.baseline == baselines
            ):
                prefix = "baseline_" if baselines else ""
                subdir = f"{prefix}{number}_${{run_name}}_seed{seed}"
                run = [
                    *job.overrides,
                    f"seed={seed}",
                    size_override(size),
                    *best[(size, job.label)],
                ]
                done = sorted(
                    found.parent
                    for found in Path(sweep).glob(f"{prefix}{number}_*_seed{seed}/{SUMMARY_FILE}")
                )
                missing = [overrides_not_in(folder, run, args) for folder in done]
                if [] in missing:
                    print(f"{done[missing.index([])]}: trained already, kept.", flush=True)
                    continue
                if done:  # another SCENARIOS, SIZES or search filled this place before
                    why = (
                        "it records no .hydra/overrides.yaml"
                        if missing[0] is None
                        else f"started without {' '.join(missing[0])}"
                    )
                    raise ConfigError(
                        f"{done[0]} holds another run than this study's {job.label} at seed "
                        f"{seed} ({why}): give a new SWEEP, or move that folder away to train "
                        "this one there."
                    )
                # Scenarios keep their epoch-0 state and fork where exact, as in make compare.
                forks = [] if baselines else ["fork_points=[0]", f"fork_from={sweep}"]
                _run(
                    [
                        *TRAIN,
                        *run,
                        *forks,
                        shared_embeddings(sweep),
                        f"hydra.sweep.dir={sweep}",
                        f"hydra.sweep.subdir={subdir}",
                        *args,
                    ]
                )
        for stale in Path(sweep).glob(f"*_seed{seed}/checkpoints/epoch*.ckpt"):
            stale.unlink()


@one_line_errors
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mtl_lightning.tune",
        description="The scenario study at an equal tuning budget: N trials of search per "
        "scenario and baseline on validation data, then each best configuration over the seeds.",
    )
    parser.add_argument("sweep", help="the study's folder, e.g. logs/compare/<time>")
    parser.add_argument("--trials", type=int, required=True, help="trials per search (TUNE)")
    parser.add_argument("--scenarios", required=True, help="experiments, comma-separated")
    parser.add_argument("--tasks", default="", help="single-task baselines, comma-separated")
    parser.add_argument("--seeds", required=True, help="seeds, comma-separated; the first tunes")
    parser.add_argument("--sizes", default="all", help="training-set sizes (SIZES), or all")
    parser.add_argument("--weightings", default="", help="loss weightings (WEIGHTINGS)")
    parser.epilog = "After --: Hydra overrides for every run (make's ARGS)."
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    options, args = parser.parse_args(argv[:split]), argv[split + 1 :]
    try:
        seeds = [int(seed) for seed in _names(options.seeds)]
    except ValueError:
        raise ConfigError(f"SEEDS={options.seeds} must be integers, e.g. SEEDS=1,2,3.") from None
    tune_study(
        Path(options.sweep),
        options.trials,
        _names(options.scenarios),
        _names(options.tasks),
        seeds,
        _names(options.sizes) or ["all"],
        _names(options.weightings),
        args,
    )


if __name__ == "__main__":
    main()
