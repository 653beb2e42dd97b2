"""Checkpoint files: read weights-only with one-sentence errors, and written atomically.

Every checkpoint this project reads (`ckpt_path` to resume, `model.init_from`, predict's and
encode's `ckpt_path`) goes through `read_checkpoint`: `torch.load(weights_only=True)` unpickles
tensors and plain containers only, so a crafted file cannot run code. The project's checkpoints
hold nothing else (the RNG callback stores NumPy's state as lists for that reason).
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from typing_extensions import override

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.names import check_file_name, check_task_names

log = logging.getLogger(__name__)
HINT = "give a .ckpt written by mtl_lightning.train, such as <run>/checkpoints/last.ckpt"


def read_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """The checkpoint at `path` (given as config key `key`), loaded weights-only on the CPU.

    Missing, empty, truncated, garbage and foreign files, and files holding Python objects other
    than tensors and plain containers, all raise one ConfigError naming `key=path`.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(
            f"{key}={path} is a folder: give the .ckpt file, e.g. "
            f"{key}={path}/checkpoints/last.ckpt for a run folder."
        )
    if not path.is_file():
        raise ConfigError(f"{key}={path} does not exist: {HINT}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))
        if refused:
            raise ConfigError(
                f"{key}={path} is not a readable checkpoint of this project: it holds the Python "
                f"object {refused.group(1)}, which is refused because loading it could run code; "
                f"{HINT}."
            ) from None
        raise ConfigError(
            f"{key}={path} is not a readable checkpoint of this project (not a torch file): {HINT}."
        ) from None
    except MemoryError:
        raise
    except Exception as error:  # empty: EOFError, truncated: RuntimeError, text: KeyError, ...
        raise ConfigError(
            f"{key}={path} is not a readable checkpoint of this project (truncated, corrupt or "
            f"unreadable: {type(error).__name__}): {HINT}."
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not (
        isinstance(hparams, dict)
        and isinstance(hparams.get("tasks"), dict)
        and isinstance(checkpoint.get("state_dict"), dict)
    ):
        raise ConfigError(
            f"{key}={path} is not a readable checkpoint of this project (it has no state_dict "
            f"and task labels): {HINT}."
        )
    check_stored_names(checkpoint, f"{key}={path}")
    return checkpoint


def check_stored_names(checkpoint: Mapping[str, Any], where: str) -> None:
    """Refuse a checkpoint whose stored names could reach a path or a class: task names that
    are not plain names, tokenizer files that are not plain file names, and a `_target_`
    anywhere in its settings (this project never stores one). Nothing is written or built
    before this check; the model checks the settings' names against its arguments
    (`mtl_lightning.model.module.load_module`)."""
    hparams = checkpoint["hyper_parameters"]
    for section in ("tasks", "task_types", "loss_weights"):
        check_task_names(hparams.get(section) or {}, f"{where} (hyper_parameters.{section})")
    if _holds_target(hparams):
        raise ConfigError(
            f"{where} stores hyper_parameters ['_target_'], which this project never writes: it "
            f"is not a checkpoint this project wrote, and nothing in it was built; {HINT}."
        )
    files = checkpoint.get("tokenizer_files")
    if files is not None:
        if not isinstance(files, Mapping) or not all(isinstance(v, bytes) for v in files.values()):
            raise ConfigError(
                f"{where} holds tokenizer_files that are not file names with their bytes: it "
                f"is not a checkpoint this project wrote; {HINT}."
            )
        for name in files:
            check_file_name(name, f"{where} (tokenizer_files)")


def check_settings(settings: object, target: type, section: str, where: str) -> None:
    """Stored `settings` are keyword arguments of `target`: anything else is not ours."""
    if not isinstance(settings, Mapping):
        raise ConfigError(
            f"{where} holds {section} that is not a mapping: it is not a checkpoint this project "
            f"wrote; {HINT}."
        )
    accepted = set(inspect.signature(target).parameters)
    unknown = sorted(str(k) for k in settings if k not in accepted)
    if unknown:
        raise ConfigError(
            f"{where} stores {section} {unknown}, which this project never writes: it is not a "
            f"checkpoint this project wrote, and nothing in it was built; {HINT}."
        )


def _holds_target(value: object) -> bool:
    if isinstance(value, Mapping):
        return "_target_" in value or any(_holds_target(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_target(v) for v in value)
    return False


def check_resumable(checkpoint: Mapping[str, Any], key: str, path: str | Path) -> None:
    """A resume needs the optimizer and loop state, which a weights-only best-*.ckpt lacks."""
    if not {"optimizer_states", "loops"} <= checkpoint.keys():
        raise ConfigError(
            f"{key}={path} holds weights only (a best-*.ckpt): resume from "
            f"<run>/checkpoints/last.ckpt, or start a new run from these weights with "
            f"model.init_from={path}."
        )


def check_resume_tasks(
    checkpoint: Mapping[str, Any], tasks: Mapping[str, list[str]], key: str, path: str
) -> None:
    """A resumed run trains the same tasks with the same labels in the same class order."""
    saved = dict(checkpoint["hyper_parameters"]["tasks"])
    if set(saved) != set(tasks):
        only_saved = sorted(set(saved) - set(tasks))
        only_data = sorted(set(tasks) - set(saved))
        raise ConfigError(
            f"{key}={path} was trained on tasks {sorted(saved)}, the data has {sorted(tasks)} "
            f"(only in the checkpoint: {only_saved}, only in the data: {only_data}): resume with "
            f"the same data.tasks, or start a new run from it with model.init_from={path}."
        )
    for task, labels in tasks.items():
        if list(saved[task]) != list(labels):
            raise ConfigError(
                f"{key}={path} has labels {list(saved[task])} for task {task}, the data has "
                f"{list(labels)} (class ids would not match): resume with the same "
                f"data.tasks.{task}.label_names, in the same order."
            )


def check_resume_splits(
    checkpoint: Mapping[str, Any], record: Mapping[str, Any], key: str, path: str
) -> None:
    """A resumed run trains, validates and tests on the examples it started with: splits
    carved with another seed or fraction, or from other files, would test it on examples it
    had trained on. `record` is this run's data (`MultiTaskDataModule.record`); a checkpoint
    that records no splits (written before they were) is resumed with a note."""
    saved = checkpoint.get("data")
    saved_splits = saved.get("splits") if isinstance(saved, Mapping) else None
    if not isinstance(saved_splits, Mapping):
        log.info(
            "%s=%s does not record its data splits (written by an older version): resuming "
            "without checking that they are this run's.",
            key,
            path,
        )
        return
    changed = [
        f"{task}/{split}"
        for task, splits in record["splits"].items()
        for split, fingerprint in splits.items()
        if (saved_splits.get(task) or {}).get(split) != fingerprint
    ]
    if not changed:
        return
    then = saved.get("settings") if isinstance(saved.get("settings"), Mapping) else {}
    settings = ", ".join(
        f"data.{name}={then[name]} then, {value} now"
        for name, value in record["settings"].items()
        if name in then and then[name] != value
    )
    raise ConfigError(
        f"{key}={path} was trained on other data splits than this run's ({', '.join(changed)} "
        f"differ{'; ' + settings if settings else ''}), so its test examples may have been "
        "trained on: resume with the seed, data settings and files it was trained with, or "
        f"start a new run from its weights with model.init_from={path}."
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the `.<name>.<pid>.tmp` files that `AtomicCheckpointIO` leaves when its process is
    killed mid-write (as large as a checkpoint), where that process is gone; return them."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        match = re.fullmatch(r"\.(.+)\.(\d+)\.tmp", path.name)
        if match and not _alive(int(match.group(2))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _disk_full(error: BaseException, partial: Path) -> int | None:
    """The free bytes where `partial` was being written, if `error` came of a full disk: an
    `ENOSPC`, or torch's writer failing (a `RuntimeError` from its zip writer) with less room left
    than it had written or than 64 MB. None otherwise."""
    if not isinstance(error, OSError | RuntimeError):
        return None
    try:
        free = shutil.disk_usage(partial.parent).free
        written = partial.stat().st_size if partial.exists() else 0
    except OSError:
        return None
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return free
    return free if free < max(64 * 2**20, written) else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its target, then renames it over it.

    A run killed, or a disk that fills, while a checkpoint is written leaves the previous file
    whole under the final name. Lightning's own writer stages in `$TMPDIR`, and a move from
    another filesystem there is a copy into the final name. Loading is always weights-only.
    """

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):  # remote: fsspec's transaction
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # not *.ckpt: no glob
        try:
            with temporary.open("wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)  # same folder, so same filesystem: atomic
        except BaseException as error:
            full = _disk_full(error, temporary)
            temporary.unlink(missing_ok=True)
            if full is not None:
                raise ConfigError(
                    f"Writing the checkpoint {target} failed: the disk holding it is full "
                    f"({full / 2**20:.0f} MB free); free space there, or give paths.output_dir "
                    "on another disk."
                ) from error
            raise
        if hasattr(os, "O_DIRECTORY"):  # the rename itself survives a power cut
            folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    @override
    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # Never unpickle arbitrary objects, whatever the caller asked for.
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
