"""Outputs that predict, encode and export write: checked before the work, failures in one sentence.

A read-only folder, a path under a file, or a full disk should not cost a model load and a pass
over the data before it shows, nor end in an `OSError` traceback: `check_writable` tries a file
where the output will go before anything is loaded, and `cannot_write` turns an `OSError` met
while writing into one sentence naming the config key and the path. `staged_folder` writes a
folder beside its target and moves it into place once whole, so a failed write leaves nothing
half-written under the name (which a second try would refuse as not empty).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mtl_lightning.core.errors import ConfigError


def nearest_folder(path: Path) -> Path:
    """The closest existing ancestor of `path` (what creating `path` would write into)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def cannot_write(key: str, path: Path, error: OSError) -> ConfigError:
    """The sentence for an `OSError` met writing `key=path`."""
    reason = error.strerror or type(error).__name__
    where = f": {error.filename}" if error.filename and str(error.filename) != str(path) else ""
    return ConfigError(
        f"{key}={path} cannot be written ({reason}{where}): give a path in a folder you can "
        "write to, on a disk with free space."
    )


def check_writable(path: Path, key: str) -> None:
    """Fail now if `path` (a file or a folder, created with its parents if missing) could not be
    written: a file is created and removed in its nearest existing folder."""
    folder = nearest_folder(path)
    if not folder.is_dir():
        raise ConfigError(
            f"{key}={path} cannot be written: {folder} is a file, not a folder; give a path in "
            "a folder."
        )
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as error:
        raise cannot_write(key, path, error) from None


@contextmanager
def staged_folder(output: Path, key: str) -> Iterator[Path]:
    """A new, empty folder to write `key=output`'s files into, created now (so an output that
    cannot be written fails before the work), moved into place when the block ends well, and
    removed whatever happens. It lies beside `output`; where only `output` (an existing folder)
    can be written, inside it. `output` new or empty takes the folder in one rename; otherwise
    (overwrite) each file and folder written replaces its namesake in `output`."""
    resolved = output.resolve()
    name = f".{resolved.name}.{os.getpid()}.partial"
    staging = resolved.parent / name
    try:
        folder = nearest_folder(resolved)
        if not folder.is_dir():
            raise ConfigError(
                f"{key}={output} cannot be written: {folder} is a file, not a folder; give a "
                "path in a folder."
            )
        try:
            resolved.parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir()  # the umask's mode, as the final folder should have
        except PermissionError:
            if not resolved.is_dir():
                raise
            staging = resolved / name
            staging.mkdir()
    except OSError as error:
        raise cannot_write(key, output, error) from None
    try:
        yield staging
        _place(staging, resolved)
    except OSError as error:
        raise cannot_write(key, output, error) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _place(staging: Path, output: Path) -> None:
    """Move what `staging` holds to `output` (see `staged_folder`)."""
    if staging.parent == output.parent and (
        not output.exists() or (output.is_dir() and not any(output.iterdir()))
    ):
        try:
            os.replace(staging, output)  # a new (or empty) folder: whole, in one step
            return
        except OSError:
            if not output.is_dir():  # e.g. a mount point: entry by entry below
                raise
    output.mkdir(exist_ok=True)
    for entry in sorted(staging.iterdir()):
        target = output / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif entry.is_dir() and (target.exists() or target.is_symlink()):
            target.unlink()
        os.replace(entry, target)


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write` a file under `.<name>.<pid>.tmp` beside `path`, then rename it over `path`:
    readers never see half a file, and the temporary goes whatever fails (a killed process's is
    the one `core.checkpoint.remove_stale_temporaries` removes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
