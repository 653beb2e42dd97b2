"""One run per run folder: a live or finished run's folder is refused, a resume into it is not."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from datetime import datetime

import pytest
from conftest import CONF_DIR
from omegaconf import OmegaConf

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.run_folder import LOCK_FILE, claim_run_folder


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_finished_run_folder_is_refused_unless_resuming(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    with (
        pytest.raises(ConfigError, match=r"^hydra\.run\.dir=.* holds a finished run \(summary"),
        claim_run_folder(tmp_path, None),
    ):
        pass
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    with claim_run_folder(tmp_path, str(ckpt)):
        assert (tmp_path / LOCK_FILE).read_text().split() == [
            str(os.getpid()),
            socket.gethostname(),
        ]
    assert not (tmp_path / LOCK_FILE).exists()  # released


def test_a_live_run_folder_is_refused_and_a_dead_ones_lock_taken_over(tmp_path):
    lock = tmp_path / LOCK_FILE
    lock.write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live process: this one
    with (
        pytest.raises(ConfigError, match=rf"holds a run that is still running \(pid {os.getpid()}"),
        claim_run_folder(tmp_path, str(tmp_path / "checkpoints" / "last.ckpt")),  # resuming too
    ):
        pass
    assert lock.is_file()  # the live run's lock is left alone
    lock.write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    with claim_run_folder(tmp_path):
        assert lock.read_text().split()[0] == str(os.getpid())
        with pytest.raises(ConfigError, match="still running"), claim_run_folder(tmp_path):
            pass  # a second run into the folder while the first trains
    assert not lock.exists()


def test_the_default_run_folder_names_differ_within_one_second():
    hydra = OmegaConf.load(CONF_DIR / "hydra" / "default.yaml")
    for node in (hydra.run, hydra.sweep):
        pattern = re.search(r"\$\{now:([^}]*)\}", node._get_node("dir")._value()).group(1)
        first, second = (datetime(2026, 1, 2, 3, 4, 5, micro) for micro in (1000, 2000))
        assert first.strftime(pattern) != second.strftime(pattern)


@pytest.mark.subprocess
def test_cli_refuses_a_folder_a_live_run_trains_in(tiny_encoders, tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("the first run's config\n")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) as first:
        (run / LOCK_FILE).write_text(f"{first.pid} {socket.gethostname()}\n")
        command = [
            sys.executable, "-m", "mtl_lightning.train", "data=tiny", "logger=csv",
            f"model.encoder.name_or_path={tiny_encoders['bert']}", f"paths.root_dir={tmp_path}",
            f"hydra.run.dir={run}", "trainer.max_epochs=1",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        first.kill()
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: hydra.run.dir={run} holds a run that is still running (pid {first.pid} on "
        f"{socket.gethostname()}, {run / LOCK_FILE}): give this run a folder of its own, or wait "
        f"for that run to end (delete {run / LOCK_FILE} if no such process runs)."
    )
    assert "Traceback" not in result.stderr
    # Refused before Hydra writes into the folder: the first run's record is untouched.
    assert sorted(p.name for p in run.iterdir()) == [".hydra", LOCK_FILE]
    assert (run / ".hydra" / "config.yaml").read_text() == "the first run's config\n"
