"""The package's import layers (pyproject's [tool.importlinter], run by `make lint`) hold, and a
wrong import breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(source: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts, on the package under `source`."""
    env = {"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


@pytest.mark.subprocess
def test_the_package_keeps_its_layers():
    result = lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout[-2000:]
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.subprocess
def test_an_upward_import_breaks_the_layers(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "mtl_lightning", copy / "mtl_lightning")
    tasks_base = copy / "mtl_lightning" / "tasks" / "base.py"
    text = tasks_base.read_text()
    tasks_base.write_text(text + "\nfrom mtl_lightning.model import module  # noqa: E402\n")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "mtl_lightning.tasks is not allowed to import mtl_lightning.model" in result.stdout
