"""Checkpoint files: weights-only reads, one sentence for a bad file, atomic writes."""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from mtl_lightning.core.checkpoint import AtomicCheckpointIO, read_checkpoint
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.model.inference import Predictor
from mtl_lightning.train import train

TASKS = {"classification": ["ABBR", "DESC"], "sentiment": ["negative", "positive"]}


class Payload:
    """Unpickling it calls `open(marker, "w")`: a stand-in for any code a crafted file runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def bad_files(folder: Path) -> dict[str, Path]:
    """Files that are not readable checkpoints of this project, by kind."""
    real = folder / "real.ckpt"
    weights = {"state_dict": {"w": torch.ones(64, 64)}, "hyper_parameters": {"tasks": TASKS}}
    torch.save(weights, real)
    content = real.read_bytes()
    files = {
        "truncated": content[: len(content) // 2],
        "empty": b"",
        "garbage": bytes(range(256)) * 4,
        "text": b"not a checkpoint\n",
    }
    paths = {}
    for kind, data in files.items():
        paths[kind] = folder / f"{kind}.ckpt"
        paths[kind].write_bytes(data)
    paths["foreign"] = folder / "foreign.ckpt"  # a torch file, not one of ours
    torch.save({"weights": torch.ones(2)}, paths["foreign"])
    return paths


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage", "text", "foreign"])
def test_a_bad_file_is_one_sentence_naming_it(tmp_path, kind):
    path = bad_files(tmp_path)[kind]
    with pytest.raises(ConfigError) as caught:
        read_checkpoint(path, "model.init_from")
    message = str(caught.value)
    assert message.startswith(f"model.init_from={path} is not a readable checkpoint of this")
    assert "\n" not in message and message.count(". ") == 0


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_bad_files_are_refused_for_resume_init_from_and_predict(make_cfg, tmp_path, kind):
    path = bad_files(tmp_path)[kind]
    sentence = f"{path} is not a readable checkpoint of this project"
    with pytest.raises(ConfigError, match=f"^ckpt_path={sentence}"):
        train(make_cfg(f"ckpt_path={path}"))
    with pytest.raises(ConfigError, match=f"^model.init_from={sentence}"):
        train(make_cfg("experiment=only_head_frozen", f"model.init_from={path}"))
    with pytest.raises(ConfigError, match=f"^ckpt_path={sentence}"):
        Predictor.from_checkpoint(path, device="cpu")


def test_a_crafted_file_runs_no_code_anywhere(make_cfg, tmp_path):
    marker = tmp_path / "code_ran"
    crafted = tmp_path / "crafted.ckpt"
    checkpoint = {"state_dict": {}, "hyper_parameters": {"tasks": TASKS}, "x": Payload(marker)}
    torch.save(checkpoint, crafted)
    refused = f"{crafted} is not a readable checkpoint of this project: it holds the Python object"
    with pytest.raises(ConfigError, match=f"^model.init_from={refused}"):
        train(make_cfg("experiment=only_head_frozen", f"model.init_from={crafted}"))
    with pytest.raises(ConfigError, match=f"^ckpt_path={refused}"):
        train(make_cfg(f"ckpt_path={crafted}"))
    with pytest.raises(ConfigError, match=f"^ckpt_path={refused}"):
        Predictor.from_checkpoint(crafted, device="cpu")
    # What Lightning's fit and test read through is weights-only too, whatever is asked.
    with pytest.raises(Exception, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(crafted, weights_only=False)
    assert not marker.exists()


@pytest.mark.slow
def test_a_failed_checkpoint_write_leaves_the_previous_one_resumable(
    make_cfg, tmp_path, monkeypatch
):
    train(make_cfg("trainer.max_epochs=1", output="first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    # The disk fills while the next epoch's checkpoint is written, and $TMPDIR is on another
    # filesystem (a rename from there fails with EXDEV, so a move is a copy into the target).
    staging = tmp_path / "other_filesystem"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    real_rename, real_save = os.rename, torch.save

    def rename(source, target, *args, **kwargs):
        if Path(source).resolve().parent != Path(target).resolve().parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(source, target, *args, **kwargs)

    def copy_half(source, target, *args, **kwargs):
        data = Path(source).read_bytes()
        Path(target).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def save_half(obj, file, *args, **kwargs):
        if isinstance(file, io.BytesIO):  # into memory: no disk involved
            return real_save(obj, file, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        file.write(buffer.getvalue()[: buffer.tell() // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "copyfile", copy_half)
    monkeypatch.setattr(torch, "save", save_half)
    with pytest.raises(ConfigError, match="the disk holding it is full") as failed:
        train(make_cfg(f"ckpt_path={last}", output="first"))
    assert failed.value.__cause__.errno == errno.ENOSPC  # the disk, not another error on the way
    monkeypatch.undo()

    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["best-epoch00.ckpt", "last.ckpt"]
    resumed = train(make_cfg(f"ckpt_path={last}", output="first"))  # the default 2 epochs
    assert read_checkpoint(last, "ckpt_path")["epoch"] == 1
    assert 0 <= resumed["test/acc_mean"] <= 1


@pytest.mark.slow
def test_the_best_checkpoint_holds_weights_only_and_last_the_optimizer(make_cfg, tmp_path):
    metrics = train(make_cfg("trainer.max_epochs=1"))
    folder = tmp_path / "run" / "checkpoints"
    (best,) = folder.glob("best-*.ckpt")
    best_checkpoint = read_checkpoint(best, "ckpt_path")
    last_checkpoint = read_checkpoint(folder / "last.ckpt", "ckpt_path")
    assert "optimizer_states" not in best_checkpoint
    assert last_checkpoint["optimizer_states"]
    assert best.stat().st_size < 0.6 * (folder / "last.ckpt").stat().st_size
    assert "test/acc_mean" in metrics  # trainer.test ran on the best checkpoint
    prediction = Predictor.from_checkpoint(best, device="cpu").predict(["Who wrote Hamlet?"])[0]
    assert prediction["sentiment"]["label"] in ("negative", "positive")
    for name, tensor in best_checkpoint["state_dict"].items():
        torch.testing.assert_close(tensor, last_checkpoint["state_dict"][name], msg=name)
    with pytest.raises(ConfigError, match=f"^ckpt_path={best} holds weights only"):
        train(make_cfg(f"ckpt_path={best}", output="resumed"))  # a resume needs last.ckpt


def test_an_interrupted_write_keeps_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    writer, target = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    writer.save_checkpoint({"step": torch.tensor(1)}, target)
    before = target.read_bytes()
    real_save = torch.save

    def interrupted(obj, file, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        file.write(buffer.getvalue()[: buffer.tell() // 2])
        raise KeyboardInterrupt  # Ctrl-C, or a scheduler's signal, in the middle of the write

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.save_checkpoint({"step": torch.tensor(2)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("free_mb", [0, 10_000])
def test_a_full_disk_mid_checkpoint_is_one_sentence(tmp_path, monkeypatch, free_mb):
    """torch's zip writer fails with a RuntimeError when the disk fills: named as a full disk in
    one sentence (the previous file kept, no temporary left); with room left the error is not
    the disk's and passes unchanged."""
    writer, target = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    writer.save_checkpoint({"step": torch.tensor(1)}, target)
    before = target.read_bytes()

    def disk_fills(obj, file, *args, **kwargs):
        file.write(b"x" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1000 vs 900")

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(torch, "save", disk_fills)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=free_mb * 2**20))
    if free_mb:
        with pytest.raises(RuntimeError, match="unexpected pos"):
            writer.save_checkpoint({"step": torch.tensor(2)}, target)
    else:
        with pytest.raises(
            ConfigError,
            match=r"^Writing the checkpoint .*last.ckpt failed: the "
            r"disk holding it is full \(0 MB free\); free space there, or give "
            r"paths.output_dir on another disk.$",
        ):
            writer.save_checkpoint({"step": torch.tensor(2)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]
