"""`data=files`: the user's own CSV/TSV/JSONL files, end to end, and a clear error for bad input."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from mtl_lightning.config_check import check_train_config
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.data.datamodule import MultiTaskDataModule
from mtl_lightning.train import train

QUESTION_LABELS = ("ABBR", "HUM", "LOC")


def questions(per_class: int = 20) -> list[tuple[str, str]]:
    """(text, label) rows: enough per class for stratified val/test carving."""
    return [
        (f"{label} question number {i}?", label)
        for label in QUESTION_LABELS
        for i in range(per_class)
    ]


def reviews(per_class: int = 20) -> list[dict]:
    """JSONL rows with integer labels (0 negative, 1 positive)."""
    words = ("dull", "great")
    return [
        {"text": f"A {words[label]} film, take {i}.", "label": label}
        for label in (0, 1)
        for i in range(per_class)
    ]


def csv_bytes(rows: list[tuple[str, str]], header=("text", "label"), delimiter: str = ",") -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")


def write(folder: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        (folder / name).write_bytes(content)


def setup_data(cfg) -> MultiTaskDataModule:
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


@pytest.mark.slow
def test_train_end_to_end_on_csv_and_jsonl(make_cfg, tmp_path, monkeypatch, caplog):
    blank = [("   ", "HUM"), ("", "LOC")]  # dropped, with a logged count
    write(tmp_path, {"q.csv": csv_bytes(questions() + blank), "r.jsonl": jsonl_bytes(reviews())})
    monkeypatch.chdir(tmp_path)  # relative paths start from where the command runs
    cfg = make_cfg(
        "data=files",
        "data.tasks.classification.train=q.csv",
        f"data.tasks.sentiment.train={tmp_path / 'r.jsonl'}",
        "trainer.max_epochs=1",
    )
    with caplog.at_level(logging.WARNING, logger="mtl_lightning.data.sources.base"):
        metrics = train(cfg)
    assert 0 <= metrics["test/acc_mean"] <= 1
    assert "dropped 2 of 62 examples" in caplog.text
    checkpoint = torch.load(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert checkpoint["hyper_parameters"]["tasks"] == {
        "classification": list(QUESTION_LABELS),
        "sentiment": ["0", "1"],  # integer labels become their strings
    }


def test_given_val_and_test_files_are_used_as_given(make_cfg, tmp_path):
    header = ("sentence", "category")
    val = [("Who wrote Hamlet?", "HUM"), ("Where is Peru?", "LOC")]
    test = [("What does UN stand for?", "ABBR")]
    write(
        tmp_path,
        {
            "train.tsv": csv_bytes(questions(4), header, "\t"),
            "val.tsv": csv_bytes(val, header, "\t"),
            "test.tsv": csv_bytes(test, header, "\t"),
            "r.jsonl": jsonl_bytes(reviews()),
        },
    )
    task = "data.tasks.classification"
    datamodule = setup_data(
        make_cfg(
            "data=files",
            f"{task}.train={tmp_path / 'train.tsv'}",
            f"{task}.val={tmp_path / 'val.tsv'}",
            f"{task}.test={tmp_path / 'test.tsv'}",
            f"{task}.text_column=sentence",
            f"{task}.label_column=category",
            f"{task}.label_names=[LOC,HUM,ABBR]",
            f"data.tasks.sentiment.train={tmp_path / 'r.jsonl'}",
        )
    )
    splits = datamodule.datasets["classification"]
    assert len(splits["train"]) == 12  # nothing carved out of train
    assert splits["val"].texts == [text for text, _ in val]
    assert splits["test"].texts == [text for text, _ in test]
    assert datamodule.label_names["classification"] == ["LOC", "HUM", "ABBR"]  # as declared
    assert splits["val"].labels == [1, 0]
    assert len(datamodule.datasets["sentiment"]["val"]) == 4  # carved: 10% of 20 per class


def test_documented_keys_need_no_plus(make_cfg, tmp_path):
    """`type`, `text_pair_column`, `type_options.*` of data=files (and data=hf) and
    `trainer.max_steps` are declared: ordinary overrides set them; the nulls keep the defaults."""
    scored = [(f"a cat sat {i}", f"a cat sat down {i}", str(i % 6)) for i in range(40)]
    write(
        tmp_path,
        {
            "q.csv": csv_bytes(questions()),
            "s.csv": csv_bytes(scored, ("first", "second", "score")),
        },
    )
    task = "data.tasks.sentiment"
    cfg = make_cfg(
        "data=files",
        f"data.tasks.classification.train={tmp_path / 'q.csv'}",
        f"{task}.train={tmp_path / 's.csv'}",
        f"{task}.type=similarity",
        f"{task}.text_column=first",
        f"{task}.text_pair_column=second",
        f"{task}.label_column=score",
        f"{task}.type_options.loss=cosine_mse",
        f"{task}.type_options.score_range=[0,5]",
        "trainer.max_steps=2",
    )
    assert cfg.trainer.max_steps == 2
    types = setup_data(cfg).task_types
    assert types["classification"].name == "classification"
    assert types["classification"].options == {}  # its declared nulls are not options
    assert types["sentiment"].name == "similarity"
    assert types["sentiment"].options == {
        "loss": "cosine_mse",
        "scale": 20.0,
        "score_range": [0, 5],
    }
    hf = make_cfg(
        "data=hf",
        "data.tasks.sentiment.type=similarity",
        "data.tasks.sentiment.type_options.loss=cosine_mse",
    )
    assert hf.data.tasks.sentiment.type_options.loss == "cosine_mse"
    assert make_cfg().trainer.max_steps == -1  # Lightning's default: no limit


def test_integer_labels_are_ordered_as_numbers(make_cfg, tmp_path):
    rows = [
        {"text": f"Review {i} of class {label}.", "label": label}
        for label in range(12)
        for i in range(10)
    ]
    write(tmp_path, {"q.csv": csv_bytes(questions()), "r.jsonl": jsonl_bytes(rows)})
    datamodule = setup_data(
        make_cfg(
            "data=files",
            f"data.tasks.classification.train={tmp_path / 'q.csv'}",
            f"data.tasks.sentiment.train={tmp_path / 'r.jsonl'}",
        )
    )
    assert datamodule.label_names["sentiment"] == [str(i) for i in range(12)]


GOOD_CSV = csv_bytes(questions())
TRAIN_Q = "data.tasks.classification.train=q.csv"
# case: (files written to the run's folder, overrides, what the error must say)
BAD_INPUTS = {
    "missing_train": ({}, [], r"^data\.tasks\.classification\.train is not set"),
    "no_such_file": (
        {},
        [TRAIN_Q],
        r"^data\.tasks\.classification\.train=q\.csv: .*q\.csv does not",
    ),
    "unknown_format": (
        {"q.xlsx": GOOD_CSV},
        ["data.tasks.classification.train=q.xlsx"],
        r"train=q\.xlsx has an unknown format: give a \.csv",
    ),
    "empty_file": (
        {"q.csv": b""},
        [TRAIN_Q],
        r"q\.csv \(data\.tasks\.classification\.train\) is empty",
    ),
    "header_only": (
        {"q.csv": b"text,label\n"},
        [TRAIN_Q],
        r"q\.csv \(data\.tasks\.classification\.train\) is empty",
    ),
    "missing_column": (
        {"q.csv": csv_bytes(questions(), header=("question", "label"))},
        [TRAIN_Q],
        r"q\.csv .* has no column 'text'; its columns are \['question', 'label'\]: set "
        r"data\.tasks\.classification\.text_column",
    ),
    "blank_texts": (
        {"q.csv": csv_bytes([("  ", "HUM"), ("", "LOC")])},
        [TRAIN_Q],
        r"q\.csv .* has no example with non-empty text in column 'text'",
    ),
    "blank_label": (
        {"q.csv": csv_bytes(questions() + [("Who?", " ")])},
        [TRAIN_Q],
        r"q\.csv .* line 62 has label ' '",
    ),
    "nan_label": (
        {"q.csv": csv_bytes(questions() + [("Who?", "NaN")])},
        [TRAIN_Q],
        r"q\.csv .* line 62 has label 'NaN', a missing value written out as text: label the "
        r"example or remove it \(or list 'NaN' in data\.tasks\.classification\.label_names",
    ),
    "nan_label_in_jsonl": (
        {
            "q.csv": GOOD_CSV,
            "bad.jsonl": jsonl_bytes(reviews() + [{"text": "Ok.", "label": "nan"}]),
        },
        [TRAIN_Q, "data.tasks.sentiment.train=bad.jsonl"],
        r"bad\.jsonl .* line 41 has label 'nan', a missing value",
    ),
    "unterminated_quote": (
        {"q.csv": GOOD_CSV + b'Who?,"HUM\nWhere?,LOC\nWhen?,NUM\n'},
        [TRAIN_Q],
        r"q\.csv line 62 is malformed \(unexpected end of data\): close every quoted field",
    ),
    "stray_tab": (
        {"q.tsv": csv_bytes(questions(), delimiter="\t") + b"Who\twrote it?\tHUM\n"},
        ["data.tasks.classification.train=q.tsv"],
        r"q\.tsv line 62 has 3 tab-separated fields, but the header has 2: remove the stray tab",
    ),
    "semicolon_csv": (
        {"q.csv": csv_bytes(questions(), delimiter=";")},
        [TRAIN_Q],
        r"q\.csv looks semicolon-separated \(header 'text;label'\), but a \.csv file must be "
        r"comma-separated: re-export it with commas\.",
    ),
    "tab_separated_csv": (
        {"q.csv": csv_bytes(questions(), delimiter="\t")},
        [TRAIN_Q],
        r"q\.csv looks tab-separated .* re-export it with commas or name it \.tsv\.",
    ),
    "folder_as_file": (
        {},
        ["data.tasks.classification.train=."],
        r"^data\.tasks\.classification\.train=\.: .* is a folder; give a file in it",
    ),
    "not_utf8": (
        {"q.csv": "text,label\nWhat is a café?,HUM\n".encode("latin-1")},
        [TRAIN_Q],
        r"q\.csv is not valid UTF-8 \(byte 24\): re-encode it as UTF-8",
    ),
    "invalid_jsonl": (
        {"q.csv": GOOD_CSV, "bad.jsonl": b'{"text": "Fine.", "label": 1}\n{"text": oops}\n'},
        [TRAIN_Q, "data.tasks.sentiment.train=bad.jsonl"],
        r"bad\.jsonl line 2 is not valid JSON",
    ),
    "single_class": (
        {"q.csv": csv_bytes([(f"Who is {i}?", "HUM") for i in range(20)])},
        [TRAIN_Q],
        r"^data\.tasks\.classification has a single class \['HUM'\]",
    ),
    "too_few_to_carve_val": (
        {"q.csv": csv_bytes(questions(3))},
        [TRAIN_Q],
        r"^data\.tasks\.classification has no val examples: .* \(data\.val_fraction",
    ),
    "undeclared_label": (
        {"q.csv": GOOD_CSV},
        [TRAIN_Q, "data.tasks.classification.label_names=[ABBR,HUM]"],
        r"labels \['LOC'\] outside its label_names .* data\.tasks\.classification\.label_names",
    ),
    "max_length_above_encoder": (
        {"q.csv": GOOD_CSV},
        [TRAIN_Q, "data.max_length=1024"],
        r"^data\.max_length=1024 is above the 512 tokens",
    ),
    "parquet_without_pyarrow": (
        {"q.parquet": b"PAR1"},
        ["data.tasks.classification.train=q.parquet"],
        r"q\.parquet is a Parquet file, which needs pyarrow: `pip install pyarrow`",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_clear_error_before_training(case, make_cfg, tmp_path, monkeypatch):
    if case == "parquet_without_pyarrow" and importlib.util.find_spec("pyarrow") is not None:
        pytest.skip("pyarrow is installed")
    files, overrides, message = BAD_INPUTS[case]
    write(tmp_path, {"r.jsonl": jsonl_bytes(reviews()), **files})
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg("data=files", "data.tasks.sentiment.train=r.jsonl", *overrides)
    # Through train(): the error comes from data setup, before a model or trainer exists.
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_declared_nan_label_is_a_class(tmp_path):
    from mtl_lightning.data.sources.files import FileSource

    (tmp_path / "q.csv").write_bytes(csv_bytes([("Who?", "HUM"), ("What?", "nan")]))
    source = FileSource("classification", train=str(tmp_path / "q.csv"), label_names=["HUM", "nan"])
    assert source.load(tmp_path)["train"] == (["Who?", "What?"], ["HUM", "nan"])


def test_shipped_tsv_rows_must_have_two_fields():
    from mtl_lightning.data.sources.base import read_label_tsv

    assert read_label_tsv("label\ttext\nHUM\tWho?\n", "t.tsv") == (["Who?"], ["HUM"])
    with pytest.raises(ConfigError, match=r"^t\.tsv line 3 has 3 field\(s\), not 2"):
        read_label_tsv("label\ttext\nHUM\tWho?\nLOC\tWhere\tis it?\n", "t.tsv")
    with pytest.raises(ConfigError, match=r"^t\.tsv line 2 has 1 field\(s\), not 2"):
        read_label_tsv("label\ttext\nHUM\n", "t.tsv")


def read_train(tmp_path: Path, name: str, content: bytes, **options) -> tuple | object:
    """The train split `FileSource` reads from `content`, written to `tmp_path / name`."""
    from mtl_lightning.data.sources.files import FileSource

    (tmp_path / name).write_bytes(content)
    task = options.pop("task", "classification")
    source = FileSource(task, train=str(tmp_path / name), **options)
    return source.load(tmp_path)["train"]


def test_labels_are_normalised_unicode_without_surrounding_space(tmp_path):
    composed, decomposed = "n\u00e9gatif", "ne\u0301gatif"
    rows = [("Bad.", composed), ("Awful.", decomposed), ("Good.", " positif "), ("Ok.", "positif")]
    _, labels = read_train(tmp_path, "q.csv", csv_bytes(rows))
    assert labels == [composed, composed, "positif", "positif"]
    # label_names are read the same way, so a declared decomposed name is the same class.
    _, labels = read_train(tmp_path, "q.csv", csv_bytes(rows), label_names=[decomposed, "positif"])
    assert set(labels) == {composed, "positif"}


@pytest.mark.parametrize(
    ("spellings", "shown"),
    [(("1", "01"), r"'1' \(line 2\), '01' \(line 4\)"), (("Positif", "positif"), r"'Positif'")],
)
def test_labels_differing_by_case_or_leading_zeros_are_refused(tmp_path, spellings, shown):
    first, second = spellings
    rows = [("A.", first), ("B.", "other"), ("C.", second), ("D.", first)]
    with pytest.raises(
        ConfigError,
        match=rf"q\.csv \(data\.tasks\.classification\.train\) has labels that differ only by "
        rf"case or leading zeros, {shown}.*list every spelling in "
        r"data\.tasks\.classification\.label_names",
    ):
        read_train(tmp_path, "q.csv", csv_bytes(rows))
    # Declared as distinct classes, they are.
    _, labels = read_train(tmp_path, "q.csv", csv_bytes(rows), label_names=[*spellings, "other"])
    assert labels == [first, "other", second, first]


def test_a_repeated_header_row_is_refused(tmp_path):
    joined = csv_bytes(questions(2)) + csv_bytes(questions(2))  # two files joined with `cat`
    with pytest.raises(ConfigError, match=r"q\.csv line 8 repeats the header row"):
        read_train(tmp_path, "q.csv", joined)


@pytest.mark.parametrize("score", ["34", "-1"])
def test_similarity_scores_outside_score_range_are_refused(tmp_path, score):
    rows = [("a", "b", "1.5"), ("c", "d", score), ("e", "f", "4")]
    content = csv_bytes(rows, header=("text", "text_pair", "label"))
    options = {"task": "sts", "type": "similarity", "type_options": {"score_range": [0, 5]}}
    with pytest.raises(
        ConfigError,
        match=rf"s\.csv \(data\.tasks\.sts\.train\) line 3 has score '{score}', outside "
        r"data\.tasks\.sts\.type_options\.score_range \[0, 5\]: fix or remove",
    ):
        read_train(tmp_path, "s.csv", content, **options)
    # Any source's training scores are checked as they are scaled, too.
    from mtl_lightning.tasks.similarity import Similarity

    kind = Similarity.from_data("sts", ["1", "4"], None, {"score_range": [0, 5]})
    with pytest.raises(ConfigError, match=rf"score '{score}', outside .*score_range \[0, 5\]"):
        kind.encode_labels(["1", score], "train")


def test_utf16_files_are_called_utf16(tmp_path):
    content = "text,label\nWho?,HUM\n".encode("utf-16")  # with a byte-order mark
    message = r"q\.csv is UTF-16, not UTF-8: .*iconv -f utf-16 -t utf-8"
    with pytest.raises(ConfigError, match=message):
        read_train(tmp_path, "q.csv", content)
    with pytest.raises(ConfigError, match=r"q\.csv holds zero bytes, as UTF-16 .*iconv -f utf-16"):
        read_train(tmp_path, "q.csv", "text,label\nWho?,HUM\n".encode("utf-16-le"))


def test_a_long_field_is_read(tmp_path):
    long_text = "word " * 42_000  # 210,000 characters, over the csv module's default limit
    texts, _ = read_train(tmp_path, "q.csv", csv_bytes([(long_text, "HUM"), ("Where?", "LOC")]))
    assert texts[0] == long_text


def test_an_empty_second_column_names_that_column(tmp_path):
    content = csv_bytes([("A cat.", "", "yes"), ("A car.", " ", "no")], ("a", "b", "label"))
    options = {"type": "pair_classification", "text_column": "a", "text_pair_column": "b"}
    with pytest.raises(
        ConfigError,
        match=r"has no example with non-empty text in column 'b': check "
        r"data\.tasks\.classification\.text_pair_column or the data",
    ):
        read_train(tmp_path, "p.csv", content, **options)


def test_tsv_is_plain_tab_separated_text(tmp_path):
    rows = [('"Hamlet" was written by whom?', "HUM"), ('Where is "the" Louvre?', "LOC")]
    content = "text\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows)
    texts, labels = read_train(tmp_path, "q.tsv", content.encode())
    assert texts == [text for text, _ in rows]
    assert labels == ["HUM", "LOC"]


def test_test_examples_that_are_training_examples_and_conflicting_labels_are_reported(
    make_cfg, tmp_path, caplog
):
    conflicting = ("HUM question number 0?", "LOC")  # HUM in train too
    test = questions(2)  # every one a training example
    write(
        tmp_path,
        {
            "train.csv": csv_bytes(questions() + [conflicting]),
            "val.csv": csv_bytes([("Who wrote Hamlet?", "HUM"), ("Where is Peru?", "LOC")]),
            "test.csv": csv_bytes(test),
            "r.jsonl": jsonl_bytes(reviews()),
        },
    )
    task = "data.tasks.classification"
    files = (
        "data=files",
        f"{task}.train={tmp_path / 'train.csv'}",
        f"{task}.val={tmp_path / 'val.csv'}",
        f"{task}.test={tmp_path / 'test.csv'}",
        f"data.tasks.sentiment.train={tmp_path / 'r.jsonl'}",
    )
    found = (
        "6 of 6 test examples are also in train; 1 text has conflicting labels "
        "(e.g. 'HUM question number 0?': HUM, LOC)"
    )
    with caplog.at_level(logging.WARNING, logger="mtl_lightning.data.overlap"):
        datamodule = setup_data(make_cfg(*files))
    assert f"Task classification: {found}; training on them as they are" in caplog.text
    assert "Task sentiment" not in caplog.text  # carved splits of distinct texts share none
    assert datamodule.datasets["classification"]["test"].texts == [t for t, _ in test]

    with pytest.raises(ConfigError, match=rf"^data\.tasks\.classification: {re.escape(found)}: "):
        setup_data(make_cfg(*files, "data.overlap=refuse"))

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mtl_lightning.data.overlap"):
        dropped = setup_data(make_cfg(*files, "data.overlap=drop")).datasets["classification"]
    assert "dropped 7 train, 1 test examples (data.overlap=drop)" in caplog.text
    kept_test = [t for t, _ in test if t != conflicting[0]]
    assert dropped["test"].texts == kept_test  # the evaluation set stays, less the conflict
    assert not set(dropped["train"].texts) & {t for t, _ in test}
    assert len(dropped["train"]) == len(questions()) - len(test)

    with pytest.raises(ConfigError, match=r"^data\.overlap=forbid must be one of warn, drop"):
        check_train_config(make_cfg(*files, "data.overlap=forbid"))


def test_pairs_overlap_as_pairs_and_scores_never_conflict():
    from mtl_lightning.data.overlap import resolve_overlap
    from mtl_lightning.data.sources.base import Rows

    splits = {
        "train": Rows(["a", "a", "b"], ["0", "1", "1"], ["x", "y", "z"]),
        "val": Rows(["a"], ["1"], ["y"]),  # the pair (a, y): in train
        "test": Rows(["a", "b"], ["0", "1"], ["z", "z"]),  # (b, z) in train; (a, z) is new
    }
    with pytest.raises(
        ConfigError,
        match=r"^data\.tasks\.para: 1 of 1 val pairs are also in train; 1 of 2 test pairs are "
        r"also in train: remove",
    ):
        resolve_overlap("para", splits, pair=True, categorical=True, mode="refuse")
    kept = resolve_overlap("para", splits, pair=True, categorical=True, mode="drop")
    assert list(zip(kept["train"].texts, kept["train"].text_pairs, strict=True)) == [("a", "x")]
    # A score is no class: two scores of one pair are no conflict; the shared pair still counts.
    scored = {
        "train": Rows(["a", "a"], ["1.0", "4.5"], ["x", "x"]),
        "val": Rows(["c"], ["2.0"], ["x"]),
        "test": Rows(["d"], ["2.0"], ["x"]),
    }
    assert resolve_overlap("sim", scored, pair=True, categorical=False, mode="refuse") == scored
