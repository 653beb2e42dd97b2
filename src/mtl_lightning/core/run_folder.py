"""One run per run folder: a lock file names the process training in it, and a folder that holds
a live or a finished run is refused (two runs in one folder interleave their metrics.csv rows
and checkpoints, and the first ends in a traceback)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.summary import SUMMARY_FILE

LOCK_FILE = "run.lock"


def _holder(lock: Path) -> tuple[int, str] | None:
    """(pid, host) of the lock's process, or None for a lock that names none."""
    try:
        pid, host = lock.read_text(encoding="utf-8").split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(pid: int, host: str) -> bool:
    """Whether the lock's process runs; a process on another host is taken to (we cannot ask)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _take(lock: Path) -> bool:
    """Create the lock naming this process (pid, host), whole at once: written beside it and
    linked into place, which fails if it exists. False if it does."""
    written = lock.with_name(f".{lock.name}.{os.getpid()}")
    written.write_text(f"{os.getpid()} {socket.gethostname()}\n", encoding="utf-8")
    try:
        os.link(written, lock)
    except FileExistsError:
        return False
    finally:
        written.unlink(missing_ok=True)
    return True


def check_run_folder(output_dir: Path, ckpt_path: str | None, key: str) -> None:
    """Refuse, in one sentence naming `key`, a folder whose lock names a live process, and a
    folder that holds a finished run (`summary.json`) unless `ckpt_path` resumes from a
    checkpoint inside it."""
    output_dir = Path(output_dir).expanduser().resolve()
    lock = output_dir / LOCK_FILE
    holder = _holder(lock) if lock.is_file() else None
    if holder is not None and _alive(*holder):
        raise ConfigError(
            f"{key}={output_dir} holds a run that is still running (pid {holder[0]} on "
            f"{holder[1]}, {lock}): give this run a folder of its own, or wait for that run "
            f"to end (delete {lock} if no such process runs)."
        )
    resuming = bool(ckpt_path) and output_dir in Path(ckpt_path).expanduser().resolve().parents
    if (output_dir / SUMMARY_FILE).is_file() and not resuming:
        raise ConfigError(
            f"{key}={output_dir} holds a finished run (summary.json): give this run a folder of "
            "its own (the default is new at each launch), or resume from a checkpoint in it "
            "with ckpt_path=."
        )


@contextmanager
def claim_run_folder(
    output_dir: Path, ckpt_path: str | None = None, key: str = "hydra.run.dir"
) -> Iterator[None]:
    """Hold `output_dir/run.lock` while the block runs, after `check_run_folder` (rank 0 only:
    DDP's other ranks share the folder). A lock left by a process that died is taken over."""
    if rank_zero_only.rank != 0:
        yield
        return
    output_dir = Path(output_dir).expanduser().resolve()
    lock = output_dir / LOCK_FILE
    check_run_folder(output_dir, ckpt_path, key)
    output_dir.mkdir(parents=True, exist_ok=True)
    while not _take(lock):
        check_run_folder(output_dir, ckpt_path, key)  # a run that took it since: refused
        lock.unlink(missing_ok=True)  # its process died without removing it
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


class RunFolderCheck(Callback):
    """A Hydra callback (conf/hydra/default.yaml): `check_run_folder` on `hydra.run.dir` before
    Hydra writes its `.hydra/` files and log there, which would overwrite a finished or running
    run's record. Multirun jobs are checked by `claim_run_folder` only, inside the job."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if rank_zero_only.rank != 0:
            return  # DDP's other ranks start in rank 0's folder
        HydraConfig.instance().set_config(config)  # as Hydra does next: ${hydra:...} resolve
        folder = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        try:
            check_run_folder(folder, OmegaConf.select(config, "ckpt_path"), "hydra.run.dir")
        except ConfigError as error:
            raise SystemExit(f"Error: {error}") from None
