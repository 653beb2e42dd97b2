"""Training entry point: `train(cfg)` does the work; `main` is only Hydra around it.

python -m mtl_lightning.train experiment=only_head_frozen
python -m mtl_lightning.train -m experiment=only_transformer_frozen,gradual_unfreeze
"""

from __future__ import annotations

import csv
import logging
import shutil
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from mtl_lightning.callbacks.best_checkpoint import BestCheckpoint
from mtl_lightning.callbacks.sigterm import SigtermCheckpoint
from mtl_lightning.config_check import check_frozen_layers, check_train_config
from mtl_lightning.core.checkpoint import (
    check_resumable,
    check_resume_splits,
    check_resume_tasks,
    read_checkpoint,
    remove_stale_temporaries,
)
from mtl_lightning.core.console import quiet_loggers, quiet_third_party
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.provenance import loaded_commit
from mtl_lightning.core.run_folder import claim_run_folder
from mtl_lightning.core.summary import PrimaryHistory, write_summary
from mtl_lightning.data.datamodule import MultiTaskDataModule
from mtl_lightning.model.adapters import to_adapted
from mtl_lightning.model.encoder_match import check_same_encoder
from mtl_lightning.model.module import MultiTaskModule, rename_weighting_keys
from mtl_lightning.scenarios.base import Scenario, logged
from mtl_lightning.scenarios.build import build_scenario
from mtl_lightning.scenarios.forgetting import Forgetting
from mtl_lightning.scenarios.schedule import FreezingSchedule
from mtl_lightning.study.fork import Fork, Forked
from mtl_lightning.weighting import LossWeighting, StaticWeighting

log = logging.getLogger(__name__)
# Frozen modules are in eval mode on purpose (deterministic, so cacheable); Lightning warns.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start")
quiet_third_party()


def load_init_weights(
    module: MultiTaskModule, ckpt_path: str, datamodule: MultiTaskDataModule | None = None
) -> list[str]:
    """Start from the weights of an earlier run (`model.init_from`): encoder and heads.

    A task the checkpoint has no head for gets a fresh head (continual learning: stage 2 adds
    task B to a model trained on task A alone); its names are returned and logged. The
    checkpoint's encoder must read sentences as this run's does: the same weight shapes,
    pooling and normalisation, and (given `datamodule`) the tokenizer of its data.
    """
    path = Path(ckpt_path).expanduser()
    checkpoint = read_checkpoint(path, "model.init_from")
    saved_tasks = checkpoint["hyper_parameters"]["tasks"]
    for task, labels in module.tasks.items():
        if task in saved_tasks and list(saved_tasks[task]) != list(labels):
            saved = list(saved_tasks[task])
            raise ConfigError(
                f"model.init_from={ckpt_path} has {len(saved)} classes {saved} for task {task}, "
                f"the data has {len(labels)} {list(labels)}: use a checkpoint trained on this "
                "task's labels."
            )
    if datamodule is not None:
        check_same_encoder(checkpoint, module, datamodule, "model.init_from", ckpt_path)
    state = checkpoint["state_dict"]
    new_tasks = [t for t in module.tasks if not any(k.startswith(f"heads.{t}.") for k in state)]
    fresh = tuple(f"{p}.{t}" for t in new_tasks for p in ("heads", "weighting.log_vars"))
    # Adapters: a new task's own (one per task) starts fresh, and all of them where the
    # checkpoint has none (its encoder weights are then the adapted layers' base weights).
    names = {id(p): n for n, p in module.named_parameters()}
    parts = module.adapter_parts()
    fresh_tasks = list(parts) if not checkpoint["hyper_parameters"].get("adapters") else new_tasks
    fresh_adapters = {names[id(p)] for t in fresh_tasks for p in parts.get(t, ([], []))[0]}
    if parts:
        renamed = to_adapted(state, set(module.state_dict()))
        state = {renamed[key]: value for key, value in state.items()}
    rename_weighting_keys(state)
    missing, unexpected = module.load_state_dict(state, strict=False)
    # The run's own weighting starts afresh where the checkpoint's was another method.
    unexpected = [k for k in unexpected if not k.startswith("weighting.")]
    missing = [
        k
        for k in missing
        if not k.startswith(("metrics.", "weighting.", *fresh)) and k not in fresh_adapters
    ]
    if unexpected or missing:
        raise ConfigError(
            f"model.init_from={ckpt_path} does not fit this model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}): use a checkpoint of the same encoder and tasks."
        )
    loaded = sorted(set(module.tasks) - set(new_tasks))
    log.info("Initialised the encoder and heads %s from %s.", loaded, path)
    if new_tasks:
        log.info("New heads, trained from scratch: %s (no head in %s).", new_tasks, path)
    return new_tasks


def build(node: DictConfig, **kwargs):
    """`hydra.utils.instantiate`, letting a ConfigError from a constructor through unwrapped."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise


def build_data(node: DictConfig) -> MultiTaskDataModule:
    """The datamodule of `cfg.data`, its data fetched and tokenized (`setup("fit")`)."""
    datamodule: MultiTaskDataModule = build(node)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_module(
    node: DictConfig,
    tasks: dict[str, list[str]],
    task_types: dict[str, dict] | None = None,
    weighting: DictConfig | None = None,
    adapters: dict | None = None,
) -> MultiTaskModule:
    """The model of `cfg.model` for `tasks` of `task_types` (their specs; default:
    classification), its losses combined by `cfg.weighting`, with the scenario's `adapters` on
    its encoder; weights of `model.init_from` are not loaded here."""
    settings = OmegaConf.to_container(node, resolve=True)
    settings.pop("init_from", None)
    shared_dir = settings.pop("frozen_cache_dir", None)
    module = MultiTaskModule(
        tasks=tasks,
        task_types=task_types,
        weighting=build_weighting(weighting, settings, list(tasks)),
        adapters=adapters,
        **settings,
    )
    module.share_frozen_embeddings(shared_dir)
    return module


def build_weighting(node: DictConfig | None, model: dict, tasks: list[str]) -> LossWeighting | None:
    """`cfg.weighting` for `tasks`, or None where `model.loss_weighting` (the older spelling)
    chooses it: the module then builds that one."""
    if node is None:
        return None
    weighting = build(node, tasks=tasks)
    static = isinstance(weighting, StaticWeighting)
    alias = model.get("loss_weighting", "static")
    if alias != "static":
        if not static:
            raise ConfigError(
                f"model.loss_weighting={alias} and weighting={type(weighting).__name__} both "
                "choose how the losses combine: drop model.loss_weighting, the older spelling."
            )
        return None
    if model.get("loss_weights") and not static:
        raise ConfigError(
            f"model.loss_weights is fixed weighting, and weighting={type(weighting).__name__} "
            "combines the losses its own way: set model.loss_weights=null or weighting=static."
        )
    return weighting


def _wandb_group() -> str | None:
    """Runs of one Hydra multirun share a W&B group: the sweep folder's name."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).name


def build_loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        extra = {"group": _wandb_group()} if name == "wandb" else {}
        loggers.append(build(node, **{k: v for k, v in extra.items() if v}))
    quiet_loggers(loggers)
    return loggers


class RunStopped(Exception):
    """Training was stopped by SIGTERM or Ctrl-C; `last.ckpt` holds where it stood, to resume
    from. `exit_code`: 128 + the signal's number, as a shell reports a process it ended."""

    def __init__(self, message: str, exit_code: int = 143) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# The signals SigtermCheckpoint names: how a message says them, and the exit code.
STOP_SIGNALS = {"SIGTERM": ("SIGTERM", 143), "SIGINT": ("Ctrl-C (SIGINT)", 130)}


def _run_stopped(trainer: L.Trainer, callbacks: list) -> RunStopped:
    """The sentence for a run stopped by a signal: where, and which checkpoint resumes it."""
    stops = [c for c in callbacks if isinstance(c, SigtermCheckpoint)]
    signal_name = next((c.stopped_by for c in stops if c.stopped_by), "SIGTERM")
    saved = [c.ckpt_path for c in stops if c.saved]
    then = (
        f"and saved {saved[0]}: resume with ckpt_path={saved[0]}"
        if saved
        else "with no checkpoint written at the stop: rerun it, or resume from its last.ckpt"
    )
    words, exit_code = STOP_SIGNALS[signal_name]
    return RunStopped(
        f"Training was stopped by {words} at epoch {trainer.current_epoch}, step "
        f"{trainer.global_step}, {then}.",
        exit_code,
    )


def _earlier_csv_rows(
    loggers: list, resume: dict, output_dir: Path, source_dir: Path | None = None
) -> dict[int, list[dict[str, str]]]:
    """Rows of the CSV loggers' metrics.csv logged before the resumed checkpoint, by logger.

    Resuming into the same run folder: Lightning's CSV writer starts the file afresh, and the
    rows a run logged after that checkpoint are logged again by the resumed run. A fork
    (`source_dir`: the run it forked from) takes them from that run's metrics.csv.
    """
    loop = resume.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    resumed_step = loop.get("_batches_that_stepped", resume.get("global_step", 0))
    kept: dict[int, list[dict[str, str]]] = {}
    for index, logger in enumerate(loggers):
        path = Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None
        if path is not None and source_dir is not None:
            path = source_dir / path.relative_to(output_dir)
        if path is None or not path.is_file():
            continue
        with path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        kept[index] = [r for r in rows if r.get("step") and float(r["step"]) < resumed_step]
    return kept


def start_fork(
    cfg: DictConfig,
    fork_from: Path,
    scenario: Scenario,
    datamodule: MultiTaskDataModule,
    module: MultiTaskModule,
    callbacks: list,
) -> Forked | None:
    """The fork this run starts from (`fork_from`: a fork point, or a sweep folder to find one
    in), written into its folder; None when a folder holds none that fits (from scratch)."""
    fork = Fork(cfg, scenario, datamodule, len(module.encoder_groups()), callbacks)
    source: Path | None = fork_from
    if fork_from.is_dir():
        source = fork.find(fork_from)
        if source is None:
            log.info(
                "fork_from=%s holds no fork point whose first epochs train what this run's do: "
                "training from scratch.",
                fork_from,
            )
            return None
    return fork.write(source)  # on an error, it removes what it wrote


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (or, for `entire_network_frozen`, evaluate) and test; return the final metrics."""
    started = datetime.now(timezone.utc)
    loaded_commit()  # the code's commit, read once per process (the summary records it)
    check_train_config(cfg)  # every key's type and range, before anything is built
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    for stale in remove_stale_temporaries(output_dir / "checkpoints"):
        log.info("Removed %s, a checkpoint write of a process that died mid-write.", stale)
    init_from = cfg.model.get("init_from")
    scenario = build_scenario(cfg.freezing, init_from)
    ckpt_path = cfg.get("ckpt_path")
    fork_from = Path(cfg.fork_from).expanduser() if cfg.get("fork_from") else None
    scenario.check_start(ckpt_path, str(fork_from) if fork_from and fork_from.is_file() else None)
    said = scenario.check_epochs(cfg.trainer.get("max_epochs"))
    # Read here (weights-only, one-sentence errors) so that a bad file fails before any work.
    resume = read_checkpoint(ckpt_path, "ckpt_path") if ckpt_path else None
    datamodule = build_data(cfg.data)
    if resume is not None:
        check_resumable(resume, "ckpt_path", ckpt_path)
        check_resume_tasks(resume, datamodule.label_names, "ckpt_path", ckpt_path)
        check_resume_splits(resume, datamodule.record(), "ckpt_path", ckpt_path)
    module = build_module(
        cfg.model,
        datamodule.label_names,
        datamodule.task_specs,
        cfg.get("weighting"),
        scenario.adapters(list(datamodule.label_names)),
    )
    module.weighting.check_sampling(datamodule.sampling)
    check_frozen_layers(scenario.keep_frozen_layers, len(module.encoder_groups()) - 1)
    if resume is not None:
        check_same_encoder(resume, module, datamodule, "ckpt_path", ckpt_path)
    new_heads = load_init_weights(module, init_from, datamodule) if init_from else []
    if init_from:
        scenario.loaded([t for t in module.tasks if t not in new_heads], new_heads)
    scenario.check_tasks(list(datamodule.label_names), new_heads)
    schedule = FreezingSchedule(scenario)
    callbacks = [schedule, Forgetting(scenario, said), PrimaryHistory()]
    callbacks += [build(c) for c in (cfg.get("callbacks") or {}).values() if c]
    for callback in callbacks:
        if isinstance(callback, BestCheckpoint):  # its best among the scenario's own epochs
            callback.scores = scenario.scores
    forked = None
    if fork_from is not None and scenario.trains:
        forked = start_fork(cfg, fork_from, scenario, datamodule, module, callbacks)
    if forked is not None:
        ckpt_path, resume = str(forked.path), forked.checkpoint
    loggers = build_loggers(cfg)
    source_dir = forked.source.parent.parent if forked is not None else None
    earlier_rows = (
        _earlier_csv_rows(loggers, resume, output_dir, source_dir) if resume is not None else {}
    )
    if forked is not None:
        forked.checkpoint = None
    resume = None  # the trainer reads the file again; do not hold a second copy while training
    trainer: L.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers)
    cached = [t.task for t in module.task_types.values() if t.backpropagates_itself]
    if cached and (module.weighting.needs_task_gradients or trainer.world_size > 1):
        refused = (
            "DDP"
            if trainer.world_size > 1
            else f"weighting={type(module.weighting).__name__}, which takes each task's gradient"
        )
        raise ConfigError(
            f"data.tasks.{cached[0]}.type_options.mini_batch_size (GradCache) backpropagates "
            f"in pieces itself, which {refused} does not see: set it to null, or train "
            "without that."
        )
    # trainer.loggers, not `loggers`: under fast_dev_run Lightning replaces them with a dummy.
    for logger in trainer.loggers:
        logger.log_hyperparams(
            {**OmegaConf.to_container(cfg, resolve=True), "new_heads": new_heads}
        )
    for index, rows in earlier_rows.items():
        if trainer.is_global_zero:
            loggers[index].experiment.metrics.extend(rows)  # written with the next rows

    try:
        # What training is belongs to the scenario (entire_network_frozen only evaluates).
        # test_after_fit=false (a tuning trial): the test split is never evaluated.
        test = cfg.get("test_after_fit", True)
        metrics, train_seconds = scenario.run(trainer, module, datamodule, ckpt_path, test=test)
        if forked is not None:  # last.ckpt holds more; the source still has this state
            forked.path.unlink(missing_ok=True)
    except SIGTERMException:  # Lightning's: a SystemExit with code 0, which reads as success
        raise _run_stopped(trainer, callbacks) from None
    except SystemExit:  # Lightning's exit(1) after a KeyboardInterrupt (a second Ctrl-C)
        stopped = any(isinstance(c, SigtermCheckpoint) and c.stopped_by for c in callbacks)
        if not stopped:
            raise
        raise _run_stopped(trainer, callbacks) from None
    finally:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.finish()
    metrics.update(logged(trainer, prefix="test/"))
    log.info("Final metrics: %s", {k: round(v, 4) for k, v in sorted(metrics.items())})
    # A fork's record travels in its checkpoints, so a resumed fork still says where it began.
    write_summary(output_dir, trainer, module, metrics, train_seconds, schedule.fork, started)
    return metrics


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry: returns the monitored metric, which sweepers optimise."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    key = "hydra.sweep.dir/hydra.sweep.subdir" if multirun else "hydra.run.dir"
    try:
        with claim_run_folder(Path(cfg.paths.output_dir), cfg.get("ckpt_path"), key):
            metrics = train(cfg)
    except ConfigError as error:
        # A mistake in the config or a file: one sentence, no traceback, and no run folder that
        # looks like a run. Removed only if it holds nothing but Hydra's config copy and log.
        output_dir = Path(cfg.paths.output_dir)
        leftovers = {p.name for p in output_dir.iterdir()} if output_dir.is_dir() else {"-"}
        if leftovers <= {".hydra", "train.log"}:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise SystemExit(f"Error: {error}") from None
    except RunStopped as stopped:
        # Not a success: a scheduler must see that the run did not finish (128 + the signal).
        print(f"Stopped: {stopped}", file=sys.stderr)
        raise SystemExit(stopped.exit_code) from None
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
