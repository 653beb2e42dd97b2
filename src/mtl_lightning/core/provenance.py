"""Which code a run or an export came from: the project's git commit, when it is a checkout."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/mtl_lightning


def _git(folder: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):  # no git, a hung filesystem, ...
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def project_commit(package_dir: Path = PACKAGE_DIR) -> dict | None:
    """`{"sha", "dirty"}` of the git checkout the package is imported from, or None when it is
    not one: an installed copy inside some other repository (a venv in a checkout) is not."""
    top = _git(package_dir, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() / "src" / package_dir.name != package_dir.resolve():
        return None
    sha = _git(package_dir, "rev-parse", "HEAD")
    if not sha:
        return None
    status = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status)}


@functools.cache
def loaded_commit() -> dict | None:
    """`project_commit()` as it was at this process's first call, kept: the commit of the code
    the process loaded (`train()` asks at its start), not of a checkout that has moved on while
    a long multirun trained."""
    return project_commit()
