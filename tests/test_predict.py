"""Prediction and encoding from a checkpoint: the CLIs as users run them, the Python API, errors."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_cfg

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.encode import encode
from mtl_lightning.model.inference import Predictor
from mtl_lightning.model.module import MultiTaskModule
from mtl_lightning.predict import predict

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
LABELS = {
    "classification": ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"],
    "sentiment": ["negative", "positive"],
}
# Lengths out of order, so that length-sorted batches must be put back; one sentence is longer
# than the tiny encoder's 128 positions, so it must be truncated.
TEXTS = [
    "Who wrote Hamlet?",
    "a thoroughly enjoyable , clever and moving film about growing up in a small town",
    "ok",
    "How far is the moon from the earth in kilometres ?",
    " ".join(["long"] * 300),
    "dull",
]


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor.from_checkpoint(ckpt, device="cpu")


def run_cli(module: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", f"mtl_lightning.{module}", *overrides]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def check_prediction(record: dict, text: str) -> None:
    """Exactly the documented shape: text, then per task a label and its probabilities."""
    assert list(record) == ["text", *LABELS]
    assert record["text"] == text
    for task, labels in LABELS.items():
        assert set(record[task]) == {"label", "probs"}
        probs = record[task]["probs"]
        assert list(probs) == labels
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert record[task]["label"] == max(probs, key=probs.get)


def test_checkpoint_loads_without_the_encoder_folder(run_root, ckpt, predictor):
    assert not (run_root / "encoder").exists()
    module = MultiTaskModule.load_from_checkpoint(ckpt, map_location="cpu")
    assert module.tasks == LABELS
    # The tokenizer came out of the checkpoint: the packaged (uncased BERT) vocabulary.
    assert predictor.tokenizer("Hello")["input_ids"] == [101, 7592, 102]


@pytest.mark.subprocess
@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_predict_cli_writes_one_object_per_line_in_input_order(ckpt, tmp_path, suffix):
    source = tmp_path / f"sentences{suffix}"
    if suffix == ".txt":
        source.write_text("\n".join(TEXTS) + "\n")
    else:
        source.write_text(
            "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS))
        )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    output = tmp_path / "out" / "predictions.jsonl"
    overrides = [f"ckpt_path={ckpt}", f"input={source}", f"output={output}", "batch_size=2"]
    run_cli("predict", *overrides, cwd=cwd)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == len(TEXTS)
    for record, text in zip(records, TEXTS, strict=True):
        check_prediction(record, text)
    assert list(cwd.iterdir()) == []  # Hydra left no run folder or log behind


@pytest.mark.subprocess
def test_predict_cli_text_prints_one_json_line(ckpt, tmp_path, predictor):
    result = run_cli("predict", f"ckpt_path={ckpt}", "text=Who wrote Hamlet?", cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    check_prediction(record, "Who wrote Hamlet?")
    expected = predictor.predict(["Who wrote Hamlet?"])[0]
    assert record["sentiment"]["probs"] == pytest.approx(expected["sentiment"]["probs"], abs=1e-6)


def test_batched_predictions_equal_one_at_a_time(predictor):
    batched = predictor.predict(TEXTS)
    for record, text in zip(batched, TEXTS, strict=True):
        alone = predictor.predict([text])[0]
        for task in LABELS:
            assert record[task]["probs"] == pytest.approx(alone[task]["probs"], abs=1e-5)


@pytest.mark.subprocess
def test_encode_cli_matches_each_sentence_encoded_alone(ckpt, tmp_path, predictor):
    source = tmp_path / "sentences.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    output = tmp_path / "embeddings.npy"
    overrides = [f"ckpt_path={ckpt}", f"input={source}", f"output={output}", "batch_size=2"]
    run_cli("encode", *overrides, cwd=tmp_path)
    embeddings = np.load(output)
    assert embeddings.shape == (len(TEXTS), 32)
    alone = np.concatenate([predictor.encode([text]) for text in TEXTS])
    np.testing.assert_allclose(embeddings, alone, atol=1e-5)


def test_predict_and_encode_cut_sentences_where_training_did(ckpt, tmp_path, predictor):
    # The conftest run trained with data.max_length=64 (data=tiny): a longer sentence read
    # whole at prediction (up to the tiny encoder's 128 positions) would be another input.
    assert predictor.max_length == 64
    long = TEXTS[4]
    assert len(predictor.tokenizer(long)["input_ids"]) > 128
    source = tmp_path / "long.txt"
    source.write_text(long + "\n")
    cut = {"ckpt_path": str(ckpt), "input": str(source), "device": "cpu"}
    for length, expected in ((None, 64), (100, 100)):
        given = [] if length is None else [f"max_length={length}"]
        output = tmp_path / f"e{length}.npy"
        overrides = [f"{k}={v}" for k, v in cut.items()] + [f"output={output}", *given]
        encode(compose_cfg("encode", *overrides))
        again = Predictor.from_checkpoint(ckpt, device="cpu", max_length=expected)
        np.testing.assert_allclose(np.load(output), again.encode([long]), atol=1e-6)
    assert not np.allclose(np.load(tmp_path / "eNone.npy"), np.load(tmp_path / "e100.npy"))
    row = predict(compose_cfg("predict", f"ckpt_path={ckpt}", f"text='{long}'", "device=cpu"))[0]
    assert row == predictor.predict([long])[0]


def test_encode_plain_encoder_from_csv(tiny_encoders, tmp_path):
    source = tmp_path / "sentences.csv"
    source.write_text('id,text\n1,"Who wrote Hamlet?"\n2,"a clever, moving film"\n')
    output = tmp_path / "plain.npy"
    cfg = compose_cfg(
        "encode",
        "ckpt_path=none",
        f"encoder={tiny_encoders['distilbert']}",
        "pooling=cls",
        f"input={source}",
        f"output={output}",
        "device=cpu",
    )
    encode(cfg)
    plain = Predictor.from_encoder(tiny_encoders["distilbert"], pooling="cls", device="cpu")
    expected = plain.encode(["Who wrote Hamlet?", "a clever, moving film"])
    np.testing.assert_allclose(np.load(output), expected, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="needs pyarrow")
def test_encode_writes_parquet(ckpt, tmp_path, predictor):
    import pyarrow.parquet as pq

    source = tmp_path / "sentences.txt"
    source.write_text("\n".join(TEXTS))
    output = tmp_path / "embeddings.parquet"
    encode(compose_cfg("encode", f"ckpt_path={ckpt}", f"input={source}", f"output={output}"))
    table = pq.read_table(output)
    assert table.column("text").to_pylist() == TEXTS
    embeddings = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(embeddings, predictor.encode(TEXTS), atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_without_pyarrow_is_refused(ckpt, tmp_path):
    source = tmp_path / "sentences.txt"
    source.write_text("ok\n")
    cfg = compose_cfg("encode", f"ckpt_path={ckpt}", f"input={source}", "output=e.parquet")
    with pytest.raises(ConfigError, match=r"needs pyarrow.*output=e\.npy"):
        encode(cfg)


def test_user_errors_name_the_key_and_the_fix(ckpt, tmp_path):
    good = tmp_path / "sentences.txt"
    good.write_text("ok\n")
    no_text_csv = tmp_path / "bad.csv"
    no_text_csv.write_text("sentence,label\nok,1\n")
    no_text_jsonl = tmp_path / "bad.jsonl"
    no_text_jsonl.write_text('{"text": "ok"}\n{"sentence": "ok"}\n')
    out = f"output={tmp_path / 'out.jsonl'}"
    cases = [
        (("ckpt_path=missing.ckpt", f"input={good}", out), "ckpt_path=missing.ckpt does not exist"),
        ((f"ckpt_path={ckpt}", f"input={tmp_path / 'no.txt'}", out), "no.txt does not exist"),
        ((f"ckpt_path={ckpt}", f"input={no_text_csv}", out), "has no `text` column"),
        ((f"ckpt_path={ckpt}", f"input={no_text_jsonl}", out), "record 2 has no `text` field"),
        ((f"ckpt_path={ckpt}", f"input={tmp_path / 'a.xlsx'}", out), "a.xlsx has an unknown ext"),
        ((f"ckpt_path={ckpt}", f"input={good}", "output=p.csv"), "p.csv has an unknown extension"),
        ((f"ckpt_path={ckpt}",), "Give either input=<file> and output=<file.jsonl>, or text="),
        ((f"input={good}", out), "ckpt_path is missing"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            predict(compose_cfg("predict", *overrides))
    with pytest.raises(ConfigError, match="e.txt has an unknown extension: give a .npy or"):
        encode(compose_cfg("encode", f"ckpt_path={ckpt}", f"input={good}", "output=e.txt"))
    with pytest.raises(ConfigError, match="ckpt_path=none for the plain encoder"):
        encode(compose_cfg("encode", f"input={good}", "output=e.npy"))


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_txt_lines_split_at_line_ends_and_blank_lines_are_skipped(tmp_path, newline):
    from mtl_lightning.model.inference import read_rows, read_texts

    # A form feed and U+2028 inside a sentence are part of it; blank lines are no sentences
    # (a CSV's are skipped too), so two sentences give two predictions.
    lines = ["page one\fpage two", "", "first\u2028second", "  ", "last", ""]
    source = tmp_path / "sentences.txt"
    source.write_bytes((newline.join(lines) + newline).encode("utf-8"))
    sentences = ["page one\fpage two", "first\u2028second", "last"]
    assert read_texts(source) == sentences
    assert read_rows(source) == [{"text": text} for text in sentences]


@pytest.mark.subprocess
def test_predict_cli_text_is_the_text_as_typed(ckpt, tmp_path):
    result = run_cli("predict", f"ckpt_path={ckpt}", "text=true", "text_pair=1e3", cwd=tmp_path)
    record = json.loads(result.stdout)
    assert (record["text"], record["text_pair"]) == ("true", "1e3")  # not True, 1000.0
    # From Python there is no command line to read it back: a typed value is refused.
    with pytest.raises(ConfigError, match=r"""^text=True is not a string .* text='"True"'\.$"""):
        predict(compose_cfg("predict", f"ckpt_path={ckpt}", "text=true"))


def test_encode_refuses_pooling_or_normalize_with_a_checkpoint(tmp_path):
    files = [f"input={tmp_path / 'in.txt'}", f"output={tmp_path / 'out.npy'}"]
    for given, shown in (
        (["pooling=cls", "normalize=false"], "pooling=cls and normalize=false"),
        (["normalize=true"], "normalize=true"),
    ):
        with pytest.raises(
            ConfigError,
            match=rf"^{shown} cannot change a checkpoint's encoder, .*: drop them, or give "
            r"ckpt_path=none encoder=",
        ):
            encode(compose_cfg("encode", "ckpt_path=run.ckpt", *files, *given))


def test_predict_refuses_to_overwrite_its_input(tmp_path):
    source = tmp_path / "sentences.jsonl"
    source.write_text('{"text": "ok"}\n')
    for output in (source, tmp_path / "sub" / ".." / "sentences.jsonl"):
        cfg = compose_cfg("predict", "ckpt_path=any.ckpt", f"input={source}", f"output={output}")
        with pytest.raises(ConfigError, match="is the input file, which writing would destroy"):
            predict(cfg)
    assert source.read_text() == '{"text": "ok"}\n'


def test_folders_given_as_files_are_called_folders(tmp_path):
    cfg = compose_cfg("predict", "ckpt_path=any.ckpt", f"input={tmp_path}", "output=o.jsonl")
    with pytest.raises(ConfigError, match=r"is a folder: give a file in it"):
        predict(cfg)
    source = tmp_path / "sentences.txt"
    source.write_text("ok\n")
    output = f"output={tmp_path / 'o.jsonl'}"
    cfg = compose_cfg("predict", f"ckpt_path={tmp_path}", f"input={source}", output)
    with pytest.raises(ConfigError, match=r"is a folder: give the \.ckpt file, e\.g\. ckpt_path="):
        predict(cfg)


def test_outputs_replace_the_old_file_whole_or_not_at_all(tmp_path):
    from mtl_lightning.model.inference import write_embeddings, write_jsonl

    output = tmp_path / "predictions.jsonl"
    output.write_text("old\n")
    with pytest.raises(TypeError):  # the second record cannot be written
        write_jsonl(output, [{"text": "fine"}, {"text": object()}])
    assert output.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.jsonl"]
    write_jsonl(output, [{"text": "new"}])
    assert output.read_text() == '{"text": "new"}\n'
    embeddings = tmp_path / "e.npy"
    write_embeddings(embeddings, ["a"], np.ones((1, 2), dtype=np.float32))
    assert np.load(embeddings).tolist() == [[1.0, 1.0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "predictions.jsonl"]
    plain = tmp_path / "plain.txt"
    plain.write_text("")  # the permissions any new file gets here
    assert output.stat().st_mode == embeddings.stat().st_mode == plain.stat().st_mode


def test_predict_says_when_it_replaces_an_output(ckpt, tmp_path, capsys):
    source = tmp_path / "sentences.txt"
    source.write_text("ok\n")
    output = tmp_path / "predictions.jsonl"
    cfg = compose_cfg("predict", f"ckpt_path={ckpt}", f"input={source}", f"output={output}")
    predict(cfg)
    assert "replacing" not in capsys.readouterr().err
    predict(cfg)
    assert f"{output} (replacing the file that was there)." in capsys.readouterr().err


def test_an_output_that_cannot_be_written_fails_before_the_model_loads(ckpt, tmp_path, monkeypatch):
    source = tmp_path / "sentences.txt"
    source.write_text("ok\n")
    blocker = tmp_path / "a_file"
    blocker.write_text("")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(Predictor, "from_checkpoint", no_model)
    output = blocker / "predictions.jsonl"
    with pytest.raises(
        ConfigError,
        match=rf"^output={re.escape(str(output))} cannot be written: {re.escape(str(blocker))} "
        r"is a file, not a folder; give a path in a folder\.$",
    ):
        predict(compose_cfg("predict", f"ckpt_path={ckpt}", f"input={source}", f"output={output}"))
    embeddings = f"output={blocker / 'sub' / 'e.npy'}"
    with pytest.raises(ConfigError, match=r"e\.npy cannot be written: .* is a file, not a folder"):
        encode(compose_cfg("encode", f"ckpt_path={ckpt}", f"input={source}", embeddings))
    if os.geteuid() != 0:  # root writes into read-only folders
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o555)
        with pytest.raises(ConfigError, match=r"cannot be written \(Permission denied"):
            predict(
                compose_cfg(
                    "predict", f"ckpt_path={ckpt}", f"input={source}",
                    f"output={readonly / 'p.jsonl'}",
                )
            )  # fmt: skip


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_one_sentence_and_keeps_the_old_output(ckpt, tmp_path):
    source = tmp_path / "sentences.txt"
    source.write_text("ok\n")
    output = tmp_path / "predictions.jsonl"
    output.write_text("old\n")
    # predict writes beside the output first: there, every write fails as on a full disk.
    (tmp_path / f".predictions.jsonl.{os.getpid()}.partial").symlink_to("/dev/full")
    with pytest.raises(
        ConfigError,
        match=rf"^output={re.escape(str(output))} cannot be written \(No space left on device\): "
        r"give a path in a folder you can write to, on a disk with free space\.$",
    ):
        predict(compose_cfg("predict", f"ckpt_path={ckpt}", f"input={source}", f"output={output}"))
    assert output.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl", "sentences.txt"]


def test_predict_on_a_runs_own_test_texts_reproduces_its_test_predictions_and_accuracy(
    make_cfg, tmp_path
):
    """The end-to-end truth: the tested checkpoint, loaded by predict on the run's own test
    sentences, gives every row of test_predictions/<task>.csv and the accuracy of summary.json."""
    import csv

    from mtl_lightning.train import build_data, train

    cfg = make_cfg("trainer.max_epochs=2")
    train(cfg)
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    predictor = Predictor.from_checkpoint(best)
    datamodule = build_data(cfg.data)  # the same config: the same splits
    for task, labels in summary["tasks"].items():
        test = datamodule.datasets[task]["test"]
        predicted = predictor.predict(list(test.texts))
        with (run / "test_predictions" / f"{task}.csv").open() as file:
            rows = {int(r["idx"]): (int(r["label"]), int(r["pred"])) for r in csv.DictReader(file)}
        assert sorted(rows) == list(range(len(test.texts)))
        for index, result in enumerate(predicted):
            label, pred = rows[index]
            assert label == test.labels[index], (task, index)  # the same example at idx
            assert result[task]["label"] == labels[pred], (task, index)
        accuracy = np.mean([labels[rows[i][0]] == predicted[i][task]["label"] for i in rows])
        assert accuracy == pytest.approx(summary["metrics"][f"test/{task}/acc"], abs=1e-6)
