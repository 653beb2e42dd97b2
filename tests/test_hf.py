"""data=hf: `datasets.load_dataset` per split, offline on local files (no hub here)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.data.sources import hf
from mtl_lightning.data.sources.base import TinySource
from mtl_lightning.data.sources.hf import HFSource
from mtl_lightning.train import train


def _write_csv(path: Path, texts: list[str], labels: list[str]) -> str:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "kind"])
        writer.writerows(zip(texts, labels, strict=True))
    return str(path)


def _write_parquet(path: Path, texts: list[str], labels: list[int], names: list[str]) -> str:
    """A Parquet file whose label column is a `ClassLabel`, as `datasets` stores one."""
    datasets = pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    table = pa.table({"sentence": texts, "label": labels})
    metadata = {"huggingface": json.dumps({"info": {"features": features.to_dict()}})}
    parquet.write_table(table.replace_schema_metadata(metadata), path)
    return str(path)


def test_csv_splits_and_columns(tmp_path):
    pytest.importorskip("datasets")
    train_csv = _write_csv(tmp_path / "train.csv", ["Who?", "  ", "Where?"], ["HUM", "HUM", "LOC"])
    test_csv = _write_csv(tmp_path / "test.csv", ["When?"], ["NUM"])
    source = HFSource(
        "questions",
        "csv",
        splits={"train": "train", "test": "test"},
        text_column="question",
        label_column="kind",
        data_files={"train": train_csv, "test": test_csv},
        cache_dir=str(tmp_path / "cache"),
    )
    examples = source.load(tmp_path)
    assert examples == {"train": (["Who?", "Where?"], ["HUM", "LOC"]), "test": (["When?"], ["NUM"])}
    assert source.label_names is None  # plain strings: the datamodule infers the label set

    source.text_column = "text"
    with pytest.raises(ConfigError, match="has no column 'text'.*questions.text_column"):
        source.load(tmp_path)


def test_class_label_names_and_hidden_labels(tmp_path):
    names = ["negative", "positive"]
    train_file = _write_parquet(tmp_path / "train.parquet", ["good", "bad"], [1, 0], names)
    hidden = _write_parquet(tmp_path / "test.parquet", ["meh"], [-1], names)
    files = {"train": train_file, "test": hidden}
    common = {"text_column": "sentence", "data_files": files, "cache_dir": str(tmp_path / "cache")}
    source = HFSource("sentiment", "parquet", **common)  # default splits: train only
    assert source.load(tmp_path) == {"train": (["good", "bad"], ["positive", "negative"])}
    assert source.label_names == names

    source = HFSource("sentiment", "parquet", splits={"train": "train", "test": "test"}, **common)
    with pytest.raises(ConfigError, match="sentiment.splits.test=null"):
        source.load(tmp_path)
    source.splits["test"] = "validation"
    with pytest.raises(ConfigError, match="could not be loaded.*Unknown split"):
        source.load(tmp_path)


def test_unreachable_hub_fails_fast(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(hf, "hub_reachable", lambda: False)
    monkeypatch.setattr("datasets.load_dataset", pytest.fail)  # never reached
    with pytest.raises(
        ConfigError,
        match=r"^data\.tasks\.a\.path=someone/data: the Hugging Face hub is unreachable .*: set "
        r"HF_HUB_OFFLINE=1 \(and HF_DATASETS_OFFLINE=1\) on a machine without the hub, .* "
        r"export the dataset to files where there is a network and use data=files with them\.$",
    ):
        HFSource("a", "someone/data").load(Path("unused"))


def test_offline_without_a_cached_copy_says_so(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    # As with HF_HUB_OFFLINE=1 at start-up (conftest sets it after huggingface_hub is imported).
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    source = HFSource("a", "someone/data", cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="not in the local datasets cache"):
        source.load(tmp_path)


def test_missing_datasets_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ConfigError, match="data=hf needs the datasets package: pip install"):
        HFSource("a", "csv").load(Path("unused"))


def test_bad_splits_name_the_key():
    with pytest.raises(ConfigError, match="data.tasks.a.splits"):
        HFSource("a", "csv", splits={"training": "train"})


@pytest.mark.slow
def test_train_with_data_hf_on_local_files(tiny_encoders, tmp_path):
    pytest.importorskip("datasets")
    files = {}
    for task in ("classification", "sentiment"):
        texts, labels = TinySource(task).load(tmp_path)["train"]
        files[task] = _write_csv(tmp_path / f"{task}.csv", texts, labels)
    overrides = [
        "data=hf",
        "logger=csv",
        f"model.encoder.name_or_path={tiny_encoders['bert']}",
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path / 'run'}",
        "data.batch_size=16",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
    ]
    for task, path in files.items():
        node = f"data.tasks.{task}"
        overrides += [
            f"{node}.path=csv",
            f"{node}.data_files={{train:{path}}}",
            f"{node}.splits.val=null",  # both carved out of train
            f"{node}.splits.test=null",
            f"{node}.text_column=question",
            f"{node}.label_column=kind",
            f"{node}.cache_dir={tmp_path / 'hf_cache'}",
        ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    metrics = train(cfg)
    assert 0.0 <= metrics["val/acc_mean"] <= 1.0
    assert {"test/classification/acc", "test/sentiment/acc"} <= set(metrics)


def test_labels_are_normalised_as_data_files_reads_them(tmp_path):
    """`positive ` with a trailing space, and a decomposed `é`: the labels `data=files` reads."""
    pytest.importorskip("datasets")
    from mtl_lightning.data.sources.files import FileSource

    labels = ["positive ", "positive", "ne\u0301gatif", "n\u00e9gatif"]
    path = _write_csv(tmp_path / "train.csv", ["A.", "B.", "C.", "D."], labels)
    common = {"text_column": "question", "label_column": "kind"}
    source = HFSource("s", "csv", data_files=path, cache_dir=str(tmp_path / "cache"), **common)
    read = source.load(tmp_path)["train"][1]
    assert read == FileSource("s", train=path, **common).load(tmp_path)["train"][1]
    assert read == ["positive", "positive", "n\u00e9gatif", "n\u00e9gatif"]


def test_labels_differing_by_case_are_refused_naming_rows(tmp_path):
    pytest.importorskip("datasets")
    path = _write_csv(tmp_path / "train.csv", ["A.", "B.", "C."], ["Positif", "x", "positif"])
    source = HFSource(
        "s",
        "csv",
        data_files=path,
        cache_dir=str(tmp_path / "c"),
        text_column="question",
        label_column="kind",
    )
    with pytest.raises(
        ConfigError, match=r"differ only by case .*'Positif' \(row 1\), 'positif' \(row 3\)"
    ):
        source.load(tmp_path)
