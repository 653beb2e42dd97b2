"""The Makefile's own logic, dry-run (`make -n`) in a copy: nothing is installed or trained."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


@pytest.fixture
def installed(tmp_path) -> Path:
    """A copy of the Makefile beside a .venv that `make install` finished with the CPU build."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / ".torch").write_text("torch==2.13.0\n")
    (tmp_path / ".venv" / "bin" / ".installed").touch()  # newer than the copies
    return tmp_path


def dry_run(folder: Path, *args: str, env: dict | None = None) -> str:
    command = ["make", "-n", *args]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_install_reinstalls_torch_when_torch_changes(installed):
    assert "pip" not in dry_run(installed, "install")  # up to date
    assert "pip" not in dry_run(installed, "install", "TORCH=torch==2.13.0")  # the same TORCH
    plan = dry_run(installed, "install", f"TORCH={CUDA}")
    assert ".venv/bin/pip uninstall -y -q torch" in plan  # pip would keep 2.13.0+cpu
    assert f"--no-compile {CUDA}" in plan
    assert f"printf '%s\\n' '{CUDA}' > .venv/.torch" in plan
    # The CUDA build installed: a later target without TORCH keeps it (no CPU reinstall).
    (installed / ".venv" / ".torch").write_text(CUDA + "\n")
    assert "pip" not in dry_run(installed, "test")


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("args", "tasks"),
    [("", "classification,sentiment"), ("data=tiny_types", "classification,paraphrase,similarity")],
)
def test_compare_baselines_are_the_data_configs_tasks(args, tasks):
    """`make compare`'s single-task baselines: one per task of the data config ARGS composes."""
    venv = Path(sys.executable).parent.parent  # this interpreter's, as `make test` runs it
    plan = dry_run(ROOT, "compare", f"VENV={venv}", f"ARGS={args}", "SEEDS=1", "SWEEP=/nowhere")
    baselines = [line for line in plan.splitlines() if "experiment=single_task" in line]
    assert baselines and f"experiment=single_task data.only_tasks={tasks} seed=" in baselines[0]


def _collected(*args: str) -> list[str]:
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [line for line in result.stdout.splitlines() if "::" in line]


@pytest.mark.subprocess
def test_make_test_fast_leaves_out_the_slow_ddp_and_subprocess_tests(installed):
    """Issue 23, item 30: the inner loop's marker expression (as `make test-fast` runs it) names
    registered markers and leaves out the multi-process and training-heavy tests."""
    (expression,) = [
        line.split('-m "', 1)[1].split('"', 1)[0]
        for line in dry_run(installed, "test-fast").splitlines()
        if " -m pytest " in line  # not make's "Entering directory /tmp/pytest-of-..." under make
    ]
    everything = _collected("--strict-markers", "tests")
    fast = _collected("--strict-markers", "-m", expression, "tests")
    assert 0 < len(fast) < len(everything) * 0.8
    assert not [t for t in fast if t.startswith("tests/test_ddp.py")]  # the DDP tests
    assert any(t.startswith("tests/test_stats.py") for t in fast)  # the statistics, no training
