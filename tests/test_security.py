"""Names from checkpoints, configs and model folders never become paths outside their folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg
from omegaconf import open_dict

from mtl_lightning.core.checkpoint import remove_stale_temporaries
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.names import inside, task_name_problem
from mtl_lightning.core.st_folder import write_folder
from mtl_lightning.encode import encode
from mtl_lightning.hub.export import export_checkpoint
from mtl_lightning.model.encoder import Encoder
from mtl_lightning.model.inference import Predictor
from mtl_lightning.train import train

PIPE = {"capture_output": True, "text": True, "check": True}


def crafted(source: Path, target: Path, change) -> Path:
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, target)
    return target


@pytest.fixture
def escaping_names(tmp_path):
    """Two tokenizer file names that would land outside any folder they are written into: an
    absolute path and a `../` name (unique, so that a file there can only be ours)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    absolute = outside / f"pwned-{uuid.uuid4().hex}.txt"
    relative = f"../pwned-{uuid.uuid4().hex}.txt"
    return absolute, relative


def written_outside(absolute: Path, relative: str, folders: list[Path]) -> list[Path]:
    """Files that a name escaping its folder would have written, from any of `folders`."""
    import tempfile

    places = [absolute] + [
        (Path(folder) / relative).resolve() for folder in [*folders, Path(tempfile.gettempdir())]
    ]
    places += [(Path(tempfile.gettempdir()) / "x" / relative).resolve()]
    return [place for place in places if place.exists()]


@pytest.mark.slow
def test_tokenizer_file_names_that_leave_the_folder_are_refused_everywhere(
    ckpt, make_cfg, tmp_path, escaping_names
):
    absolute, relative = escaping_names

    def add_names(checkpoint):
        checkpoint["tokenizer_files"][str(absolute)] = b"echo pwned\n"
        checkpoint["tokenizer_files"][relative] = b"echo pwned\n"

    bad = crafted(ckpt, tmp_path / "bad.ckpt", add_names)
    refusal = rf"{bad} \(tokenizer_files\) names the file '.*pwned-.*', which is not a plain file"
    with pytest.raises(ConfigError, match=f"^ckpt_path={refusal}"):
        Predictor.from_checkpoint(bad, device="cpu")
    inputs = tmp_path / "in.txt"
    inputs.write_text("Who wrote Hamlet?\n")
    with pytest.raises(ConfigError, match=f"^ckpt_path={refusal}"):
        encode(
            compose_cfg(
                "encode", f"ckpt_path={bad}", f"input={inputs}", f"output={tmp_path / 'e.npy'}"
            )
        )
    with pytest.raises(ConfigError, match=f"^ckpt_path={refusal}"):
        export_checkpoint(bad, tmp_path / "export")
    assert not (tmp_path / "export").exists()
    with pytest.raises(ConfigError, match=f"^model.init_from={refusal}"):
        train(make_cfg("experiment=only_head_frozen", f"model.init_from={bad}", output="init"))
    with pytest.raises(ConfigError, match=f"^ckpt_path={refusal}"):
        train(make_cfg(f"ckpt_path={bad}", output="resume"))
    assert not (tmp_path / "init" / "checkpoints").exists()
    assert not (tmp_path / "resume" / "checkpoints").exists()
    assert written_outside(absolute, relative, [tmp_path, tmp_path / "export"]) == []
    assert list(absolute.parent.iterdir()) == []


def test_the_tokenizer_writer_itself_keeps_names_inside_its_folder(ckpt, tmp_path):
    """Beneath the refusal at reading, the writer refuses too (a module given bad names)."""
    module = Predictor.from_checkpoint(ckpt, device="cpu")  # a good checkpoint works
    assert module.tokenizer("Hello")["input_ids"][0] == 101
    with pytest.raises(ConfigError, match="outside the folder"):
        inside(tmp_path, "../x.txt")
    with pytest.raises(ConfigError, match="outside the folder"):
        inside(tmp_path, str(tmp_path.parent / "x.txt"))
    assert inside(tmp_path, "ok.csv") == tmp_path / "ok.csv"


@pytest.mark.parametrize("name", ["../escape", "/tmp/pwned", ".hidden"])
def test_a_checkpoint_task_name_that_is_a_path_is_refused_in_predict_and_export(
    ckpt, tmp_path, name
):
    def rename(checkpoint):
        hparams = checkpoint["hyper_parameters"]
        hparams["tasks"] = {
            (name if t == "sentiment" else t): v for t, v in hparams["tasks"].items()
        }

    bad = crafted(ckpt, tmp_path / "bad.ckpt", rename)
    refusal = rf"^ckpt_path={bad} \(hyper_parameters.tasks\): task name '{name}'"
    with pytest.raises(ConfigError, match=refusal):
        Predictor.from_checkpoint(bad, device="cpu")
    with pytest.raises(ConfigError, match=refusal):
        export_checkpoint(bad, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def with_task(cfg, name: str, file: str):
    """`cfg` with one more tiny task named `name` (any string, as a YAML file may hold)."""
    source = {"_target_": "mtl_lightning.data.sources.base.TinySource", "file": file}
    if file == "sentiment":
        source["label_names"] = ["negative", "positive"]
    with open_dict(cfg):
        cfg.data.tasks[name] = source
    return cfg


def test_a_config_task_name_with_a_separator_is_refused_before_training(make_cfg, tmp_path):
    target = tmp_path / "pwned"
    with pytest.raises(ConfigError, match=f"^data.tasks: task name '{target}' holds a path sep"):
        train(with_task(make_cfg(), str(target), "sentiment"))
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()
    assert not target.with_suffix(".csv").exists()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a/b", "holds a path separator"),
        ("a\\b", "holds a path separator"),
        ("..", "starts with a dot"),
        (".git", "starts with a dot"),
        ("", "is empty"),
        ("train", "reserved attribute"),
        ("to", "reserved attribute"),
    ],
)
def test_task_name_rules(name, problem):
    assert problem in task_name_problem(name)


@pytest.mark.parametrize(
    "name", ["question type", "sentiment", "questions-fr", "Stimmung_ä", "感情"]
)
def test_unicode_and_spaces_stay_valid_task_names(name):
    assert task_name_problem(name) is None


@pytest.mark.slow
def test_unicode_and_space_task_names_train_and_write_their_files(make_cfg, tmp_path):
    name = "Stimmung ä"
    train(with_task(make_cfg("~data.tasks.sentiment", "trainer.max_epochs=1"), name, "sentiment"))
    assert (tmp_path / "run" / "test_predictions" / f"{name}.csv").is_file()


@pytest.mark.parametrize("where", ["hyper_parameters", "encoder", "encoder_config"])
def test_a_stored_target_is_one_sentence_and_builds_nothing(ckpt, tmp_path, where):
    marker = tmp_path / "built"

    def add_target(checkpoint):
        node = {"_target_": "pathlib.Path.touch", "self": str(marker)}
        hparams = checkpoint["hyper_parameters"]
        if where == "hyper_parameters":
            hparams["head_dropout"] = node
        else:
            hparams[where]["extra"] = node
        if where == "encoder":  # the settings themselves named as a class to build
            hparams["encoder"] = {**hparams["encoder"], "_target_": "builtins.exec"}
            del hparams["encoder"]["extra"]

    bad = crafted(ckpt, tmp_path / "target.ckpt", add_target)
    with pytest.raises(ConfigError) as caught:
        Predictor.from_checkpoint(bad, device="cpu")
    message = str(caught.value)
    assert message.startswith(f"ckpt_path={bad} stores hyper_parameters")
    assert "it is not a checkpoint this project wrote" in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.subprocess
def test_a_stored_target_through_the_predict_command_is_one_line(ckpt, tmp_path):
    def add_target(checkpoint):
        checkpoint["hyper_parameters"]["encoder"]["_target_"] = "builtins.exec"

    bad = crafted(ckpt, tmp_path / "target.ckpt", add_target)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "mtl_lightning.predict", f"ckpt_path={bad}", "text=hello"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert "not a checkpoint this project wrote" in line


def test_a_model_folder_whose_modules_leave_it_is_refused(tiny_encoders, tmp_path):
    folder = tmp_path / "st"
    shutil.copytree(tiny_encoders["bert"], folder)
    write_folder(folder, 32, "mean", False, max_seq_length=64, versions={})
    outside = tmp_path / "outside_pool"
    shutil.copytree(folder / "1_Pooling", outside)
    (outside / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    modules = json.loads((folder / "modules.json").read_text())
    modules[1]["path"] = "../outside_pool"
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match=r"gives module 1 the path '../outside_pool', which lea"):
        Encoder(str(folder))
    modules[1]["path"] = str(outside)  # an absolute path leaves it too
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="which leaves the folder"):
        Encoder(str(folder))
    modules[1]["path"] = "1_Pooling"
    (folder / "modules.json").write_text(json.dumps(modules))
    assert Encoder(str(folder)).pooling == "mean"


def test_exported_files_are_as_readable_as_the_umask_allows(ckpt, tmp_path):
    previous = os.umask(0o022)
    try:
        folder = export_checkpoint(ckpt, tmp_path / "export")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.rglob("*") if p.is_file()}
    assert modes["model.safetensors"] == 0o644 and modes["heads.safetensors"] == 0o644
    assert set(modes.values()) == {0o644}


def test_stale_checkpoint_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **PIPE)
    stale = tmp_path / f".last.ckpt.{int(dead.stdout)}.tmp"
    live = tmp_path / f".last.ckpt.{os.getpid()}.tmp"  # a write in progress, here
    for path in (stale, live):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("name", ["loss", "weight"])
def test_task_names_that_are_metric_name_parts_are_refused(name):
    assert "part of the metric names" in task_name_problem(name)
