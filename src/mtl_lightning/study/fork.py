"""`fork_from`: start a run from another run's state at an epoch's end, where that is exact.

`only_head_frozen`'s warm-up epochs train everything jointly: at `full_finetune`'s rates and
epochs (not its experiment's own), they are `full_finetune`'s first epochs for the same seed,
bit for bit. A fork starts from that epoch instead of training it again. The
source's full training state (weights, optimizer, LR schedule, RNG, loops, the best-checkpoint
bookkeeping) is written into this run's folder as `checkpoints/fork-epochNN.ckpt`, as if this
run had trained those epochs itself: where this run scores none of them (`Scenario.scores`:
`only_head_frozen`'s warm-up), its best checkpoint starts afresh, as it would have. The
source's metrics.csv rows up to then are carried over, and training resumes from there. So
the result is the run from scratch: `tests/test_fork.py` checks the weights, the metrics and the
forgetting.

It is exact only when these hold, and a fork is refused, naming the reason, otherwise:
- the source is a full-state checkpoint written at an epoch's end (`fork_points=[0]` keeps
  `checkpoints/epoch00.ckpt`), inside its Hydra run folder (`.hydra/config.yaml` beside
  `checkpoints/`);
- both configs agree on every key except the scenario (`freezing`), the keys `fork_ignores`
  lists (conf/train.yaml: paths, loggers, progress bars, the exact frozen caches) and the
  callbacks that say they do not change training (a class attribute `changes_training = False`:
  the metric-writing ones); a checkpoint callback that monitors a metric (it chooses the best
  epoch) is compared but for its folder, one that monitors none is left out;
- the two scenarios train the same heads and encoder groups in every epoch before the fork,
  give every epoch of the run the same number of steps (the LR schedule spans the run), and
  score the same of those epochs for the best checkpoint, unless this run scores none;
- both scenarios say they fork (`Scenario.forks`): not `gradual_unfreeze` (it unfreezes, and
  warms groups up, within epochs) nor `entire_network_frozen` (it trains nothing).

`fork_from=<folder>` (what `make compare` passes: its sweep folder) looks through the runs in
it for the latest fork point this run can start from, and trains from scratch when none fits.
Not covered: the check counts batches for one process (under DDP, joint sampling's per-rank
counts follow from them; the other modes' are not checked), and every rank makes the fork.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from mtl_lightning.callbacks.best_checkpoint import BestCheckpoint
from mtl_lightning.core.checkpoint import (
    AtomicCheckpointIO,
    check_resumable,
    check_resume_tasks,
    read_checkpoint,
)
from mtl_lightning.core.compat import LIGHTNING_OBSERVERS, checkpoint_boundary_epoch
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.names import inside
from mtl_lightning.scenarios.base import Scenario
from mtl_lightning.scenarios.build import build_scenario
from mtl_lightning.scenarios.forgetting import Forgetting
from mtl_lightning.scenarios.schedule import FreezingSchedule

log = logging.getLogger(__name__)


def _callback_class(target: Any) -> type | None:
    """The class a callback's `_target_` names, or None where it cannot be imported."""
    try:
        return get_class(str(target))
    except Exception:  # Hydra wraps the ImportError in its own exception types
        return None


def changes_training(cls: type | None) -> bool:
    """Whether a callback of class `cls` may change what trains. A class says so itself
    (`changes_training = False`: it only writes or shows things); Lightning's observers are
    known (`core.compat.LIGHTNING_OBSERVERS`); any other class, or None (it cannot be imported),
    may."""
    if cls is None:
        return True
    if issubclass(cls, LIGHTNING_OBSERVERS):
        return False
    return bool(getattr(cls, "changes_training", True))


def _comparable(cfg: DictConfig, ignores: list[str]) -> dict[str, Any]:
    """The config as Hydra saved it (unresolved), without the keys a fork may differ in: those
    `fork_ignores` lists (conf/train.yaml), the scenario (compared as plans, epoch by epoch:
    `schedule_problem`) and the callbacks that do not change training."""
    config = OmegaConf.to_container(cfg, resolve=False)
    for key in ["freezing", "fork_ignores", *ignores]:
        *parents, last = key.split(".")
        node = config
        for parent in parents:
            node = node.get(parent) or {}
        node.pop(last, None)
    callbacks = config.get("callbacks") or {}
    for name, node in list(callbacks.items()):
        target = node.get("_target_") if isinstance(node, dict) else None
        if target is None:
            continue
        cls = _callback_class(target)
        if cls is not None and issubclass(cls, ModelCheckpoint):
            if node.get("monitor") is None:  # it keeps files, and chooses no best epoch
                del callbacks[name]
            else:  # which epoch is "best" is chosen by it: compared, wherever it writes
                callbacks[name] = {k: v for k, v in node.items() if k != "dirpath"}
        elif not changes_training(cls):
            del callbacks[name]
    return config


def config_problem(source: DictConfig, cfg: DictConfig) -> str | None:
    """Why the two configs may not share their first epochs, or None."""
    ignores = [str(key) for key in cfg.get("fork_ignores") or ()]  # this run's say
    mine, theirs = _comparable(cfg, ignores), _comparable(source, ignores)
    differ = sorted(_differences(mine, theirs))
    if not differ:
        return None
    shown = ", ".join(
        f"{key} ({theirs_value!r} there, {mine_value!r} here)"
        for key, theirs_value, mine_value in differ[:3]
    )
    return f"its config differs in {shown}"


def _differences(mine: Any, theirs: Any, prefix: str = "") -> Iterable[tuple[str, Any, Any]]:
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for key in sorted(set(mine) | set(theirs)):
            yield from _differences(mine.get(key), theirs.get(key), f"{prefix}{key}.")
    elif mine != theirs:
        yield prefix.rstrip("."), theirs, mine


def schedule_problem(
    source: Scenario,
    mine: Scenario,
    epoch: int,
    tasks: Sequence[str],
    num_groups: int,
    max_epochs: int,
    epoch_batches,
) -> str | None:
    """Why `mine` may not continue `source`'s first `epoch` epochs, or None.

    `epoch_batches(epoch, tasks)`: the train loader's batches of that epoch with those tasks.
    """
    for scenario in (source, mine):
        if not scenario.forks:
            return (
                f"{scenario.name} neither forks nor is forked from (its plan changes within "
                "epochs, or nothing trains)"
            )
    for e in range(epoch):
        theirs, ours = (
            source.plan(e, list(tasks), num_groups),
            mine.plan(e, list(tasks), num_groups),
        )
        if theirs != ours:
            return (
                f"in epoch {e} {source.name} trains heads {sorted(theirs.heads)} and "
                f"{theirs.encoder_groups} encoder groups, {mine.name} {sorted(ours.heads)} "
                f"and {ours.encoder_groups}"
            )
    # The best checkpoint is chosen among the epochs a scenario scores (only_head_frozen: not
    # its warm-up's). A run that scores none of the shared epochs starts its choice afresh.
    theirs_scored = [e for e in range(epoch) if source.scores(e)]
    ours_scored = [e for e in range(epoch) if mine.scores(e)]
    if ours_scored and ours_scored != theirs_scored:
        return (
            f"{mine.name} chooses its best checkpoint among epochs {ours_scored} of the first "
            f"{epoch}, {source.name} among {theirs_scored}, so this run's best epoch could differ"
        )
    for e in range(max_epochs):
        theirs = epoch_batches(e, source.plan(e, list(tasks), num_groups).heads)
        ours = epoch_batches(e, mine.plan(e, list(tasks), num_groups).heads)
        if theirs != ours:
            return (
                f"epoch {e} has {theirs} batches in {source.name} and {ours} here, so the LR "
                "schedule, which spans the run, differs from its first step (a frozen head's task "
                "leaves the epochs; with data.sampling=joint they keep their length unless it "
                "was the longest task); train this run from scratch"
            )
    return None


def source_config(path: Path) -> DictConfig:
    """The Hydra config of the run a checkpoint belongs to: `<run>/.hydra/config.yaml`."""
    config = path.parent.parent / ".hydra" / "config.yaml"
    if not config.is_file():
        raise ConfigError(
            f"fork_from={path} has no {config}: fork from a checkpoint in its Hydra run folder "
            "(<run>/checkpoints/epochNN.ckpt), whose config says what trained."
        )
    return OmegaConf.load(config)


def source_schedule(config: DictConfig) -> Scenario:
    """The source run's scenario, its defaults settled as train() settles them."""
    return build_scenario(config.get("freezing"), config.model.get("init_from"))


def fork_points(folder: Path) -> list[Path]:
    """The fork points of the runs in a sweep folder, latest epoch first."""
    found = [p for p in folder.glob("*/checkpoints/epoch*.ckpt") if p.stem[5:].isdigit()]
    return sorted(found, key=lambda p: (-int(p.stem[5:]), str(p)))


@dataclass
class Forked:
    """A fork written into this run's folder: resume from `path`; `checkpoint` its content
    (until the CSV rows are carried over), the source's `seconds` of training included."""

    path: Path
    source: Path
    epochs: int
    scenario: str | None
    seconds: float | None
    checkpoint: dict[str, Any] | None

    def summary(self) -> dict[str, Any]:
        """summary.json's `fork`: the report counts `train_seconds` once, in the source."""
        return {
            "from": str(self.source),
            "scenario": self.scenario,
            "epochs": self.epochs,
            "train_seconds": self.seconds,
        }


class Fork:
    """The checks, then the fork checkpoint; `problem` (a reason) when not exact. `callbacks`:
    this run's, whose states the fork checkpoint carries."""

    def __init__(
        self,
        cfg: DictConfig,
        scenario: Scenario,
        datamodule,
        num_groups: int,
        callbacks: Sequence[Callback],
    ):
        self.cfg, self.scenario, self.datamodule = cfg, scenario, datamodule
        self.num_groups, self.callbacks = num_groups, list(callbacks)
        self.output = Path(cfg.paths.output_dir)
        self.written: list[Path] = []
        self._last_read: tuple[Path, dict[str, Any]] | None = None

    def problem(self, path: Path, checkpoint: dict[str, Any] | None = None) -> str | None:
        """Why this run cannot continue from `path`, or None; reads only its run's config when
        that already says no."""
        if path.resolve().parent.parent == self.output.resolve():
            return "it is this run's own folder (give the fork another hydra.run.dir)"
        source = source_config(path)
        reason = config_problem(source, self.cfg)
        if reason is not None:
            return reason
        checkpoint = checkpoint or self._read(path)
        epoch = self.epoch(checkpoint)
        if epoch is None:
            return "it was written mid-epoch (fork from an epochNN.ckpt of fork_points)"
        reason = schedule_problem(
            source_schedule(source),
            self.scenario,
            epoch,
            list(self.datamodule.label_names),
            self.num_groups,
            self.cfg.trainer.max_epochs,
            self.datamodule.train_batches,
        )
        if reason is None:
            plans = [
                self._best_files(state, c, checkpoint, epoch)
                for c, state in self._states(checkpoint)
            ]
            reason = next((plan for plan in plans if isinstance(plan, str)), None)
        return reason

    def _states(self, checkpoint: dict[str, Any]) -> list[tuple[ModelCheckpoint, dict]]:
        """This run's ModelCheckpoints with their state in the source checkpoint (a best
        checkpoint that chooses among none of the forked epochs left out: it starts afresh)."""
        saved = checkpoint.get("callbacks") or {}
        epoch = self.epoch(checkpoint) or 0
        return [
            (c, saved[c.state_key])
            for c in self.callbacks
            if isinstance(c, ModelCheckpoint)
            and c.state_key in saved
            and not self._starts_afresh(c, epoch)
        ]

    @staticmethod
    def _starts_afresh(callback: Callback, epoch: int) -> bool:
        """Whether `callback` is a best checkpoint whose run scores none of the first `epoch`
        epochs: it would have saved nothing in them."""
        return isinstance(callback, BestCheckpoint) and not any(
            callback.scores(e) for e in range(epoch)
        )

    @staticmethod
    def epoch(checkpoint: dict[str, Any]) -> int | None:
        if "loops" not in checkpoint:
            return None
        return checkpoint_boundary_epoch(checkpoint)

    def find(self, folder: Path) -> Path | None:
        """The latest fork point in `folder` this run can start from exactly, or None (a
        candidate that cannot be read, or lacks its run's config, is passed over)."""
        for path in fork_points(folder):
            try:
                if self.problem(path) is None:
                    return path
            except ConfigError as error:
                log.debug("fork_from: passing over %s: %s", path, error)
        return None

    def write(self, path: Path) -> Forked:
        """The source's state as this run's own checkpoint, `checkpoints/fork-epochNN.ckpt`:
        the callbacks' paths moved into this run's folder, its best checkpoints written there.
        On an error, what it wrote is removed."""
        try:
            return self._write(path)
        except BaseException:
            for written in self.written:
                written.unlink(missing_ok=True)
            raise

    def _read(self, path: Path) -> dict[str, Any]:
        """The fork point, read once: a folder search's winner is not read again to write it."""
        if self._last_read is None or self._last_read[0] != path:
            self._last_read = (path, read_checkpoint(path, "fork_from"))
        return self._last_read[1]

    def _write(self, path: Path) -> Forked:
        checkpoint = self._read(path)
        check_resumable(checkpoint, "fork_from", path)
        check_resume_tasks(checkpoint, self.datamodule.label_names, "fork_from", str(path))
        reason = self.problem(path, checkpoint)
        if reason is not None:
            raise ConfigError(f"fork_from={path} cannot start this run exactly: {reason}.")
        epoch = self.epoch(checkpoint)
        saved = checkpoint["callbacks"]
        scenario = (saved.get("FreezingSchedule") or {}).get("scenario")
        # Each task's value at the source's last validation (older checkpoints: in the
        # schedule's state): where a head that freezes in this run freezes.
        source = saved.get("Forgetting") or saved.get("FreezingSchedule") or {}
        seconds = (saved.get("Timer") or {}).get("time_elapsed", {}).get("train")
        forked = Forked(
            self.output / "checkpoints" / f"fork-epoch{epoch - 1:02d}.ckpt",
            path.resolve(),
            epoch,
            scenario,
            seconds,
            checkpoint,
        )
        states: dict[str, Any] = {}
        for callback in self.callbacks:
            state = saved.get(callback.state_key)
            if isinstance(callback, FreezingSchedule):
                state = {
                    "scenario": callback.scenario.name,
                    "fork": forked.summary(),  # kept by every later checkpoint, for a resume
                }
            elif isinstance(callback, Forgetting):
                state = {"acc_at_freeze": None, "last_val": dict(source.get("last_val") or {})}
            elif self._starts_afresh(callback, epoch):
                state = None  # as this run's own, which saved nothing in those epochs
            elif isinstance(callback, ModelCheckpoint) and state is not None:
                state = self._moved(state, callback, checkpoint, epoch)
            if state is not None:
                states[callback.state_key] = state
        checkpoint["callbacks"] = states  # states of callbacks this run lacks stay behind
        self._save(checkpoint, forked.path)
        log.info(
            "Forked from %s (%s): its epochs 0-%d are this run's, and training resumes at epoch "
            "%d.",
            path,
            scenario,
            epoch - 1,
            epoch,
        )
        return forked

    def _save(self, checkpoint: dict[str, Any], target: Path) -> None:
        self.written.append(target)
        AtomicCheckpointIO().save_checkpoint(checkpoint, target)

    @staticmethod
    def _best_files(
        state: dict[str, Any], callback: ModelCheckpoint, checkpoint: dict[str, Any], epoch: int
    ) -> dict[str, Path | None] | str:
        """{file name: the source file to copy, or None: rebuild it from the fork point (it is
        the boundary epoch's)} for a ModelCheckpoint's kept files, or why they cannot be had."""

        def name(e: int) -> str:
            metrics = {"epoch": e, "step": checkpoint["global_step"]}
            return Path(callback.format_checkpoint_name(metrics)).name

        boundary = name(epoch - 1)
        unique = boundary not in (name(epoch - 2), name(epoch))  # the name says the epoch
        files: dict[str, Path | None] = {}
        for source_file in state.get("best_k_models") or {}:
            source = Path(source_file)
            if unique and source.name == boundary:
                files[source.name] = None  # the source may have replaced it since
            elif source.is_file() and (unique or _epoch_of(source) < epoch):
                files[source.name] = source
            else:
                return (
                    f"its best checkpoint {source} (of an epoch before {epoch}) is gone or "
                    "overwritten, so this run could not pick its best epoch as a run from "
                    "scratch would"
                )
        return files

    def _moved(
        self,
        state: dict[str, Any],
        callback: ModelCheckpoint,
        checkpoint: dict[str, Any],
        epoch: int,
    ) -> dict[str, Any]:
        """A ModelCheckpoint's state with its files in this run's folder, written there."""
        folder = Path(callback.dirpath)

        def here(name: str | None) -> str:
            return str(folder / Path(name).name) if name else ""

        files = self._best_files(state, callback, checkpoint, epoch)
        assert not isinstance(files, str)  # problem() said so before
        kept = {}
        for source_file, score in (state.get("best_k_models") or {}).items():
            target = inside(folder, Path(source_file).name)
            source = files[target.name]
            if source is None:
                self._save(_weights(checkpoint, callback.save_weights_only), target)
            else:
                self._save(read_checkpoint(source, "fork_from"), target)
            kept[str(target)] = score
        moved = dict(state)
        moved.update(
            dirpath=str(folder),
            best_k_models=kept,
            best_model_path=here(state.get("best_model_path")),
            kth_best_model_path=here(state.get("kth_best_model_path")),
            last_model_path=here(state.get("last_model_path")),
        )
        return moved


def _weights(checkpoint: dict[str, Any], weights_only: bool) -> dict[str, Any]:
    """What Lightning writes for this epoch's best checkpoint, from the epoch's full state."""
    full_state = ("callbacks", "optimizer_states", "lr_schedulers")
    return {k: v for k, v in checkpoint.items() if not (weights_only and k in full_state)}


def _epoch_of(path: Path) -> int:
    return int(read_checkpoint(path, "fork_from").get("epoch", 2**31))
