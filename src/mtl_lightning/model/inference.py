"""Prediction and sentence encoding from a checkpoint (or a plain encoder), shared by the CLIs.

    p = Predictor.from_checkpoint("logs/runs/full_finetune/<time>/checkpoints/last.ckpt")
    p.predict(["What is the capital of France?"])  # [{"text": ..., "<task>": {...}, ...}]
    p.predict([{"text": "A man sings.", "text_pair": "A man is singing."}])  # pair tasks too
    p.encode(["a sentence", "another"])            # np.ndarray (2, hidden)
    p.encode(["a sentence"], adapter="sentiment")  # one adapter per task: that task's

Texts are tokenized once, sorted by length, batched and padded to each batch's longest sentence;
results come back in input order. The readers and writers of the CLIs' files live here too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.core.writing import cannot_write, check_writable
from mtl_lightning.data.sources.files import READERS, decode_utf8
from mtl_lightning.model.adapters import activate
from mtl_lightning.model.encoder import PACKAGED_MINILM, Encoder, load_tokenizer
from mtl_lightning.model.module import MultiTaskModule, load_module
from mtl_lightning.tasks import TaskType, build_task_type
from mtl_lightning.tasks.collate import pad

DEVICES = ("auto", "cpu", "cuda")
INPUT_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".parquet")
# A .txt's line ends, as editors write them (Unix, Windows, old Mac); not splitlines()'s form
# feeds, U+2028 and other separators, which may stand inside a sentence.
LINE_END = re.compile(r"\r\n|\r|\n")


def resolve_device(device: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; `cuda` without a GPU is an error."""
    if device not in DEVICES:
        raise ConfigError(f"device={device} is unknown: use one of {DEVICES}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible: use device=auto or device=cpu.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


# Tokens per sentence where neither the command nor the checkpoint says (a plain encoder, a
# checkpoint written before training's length was recorded); the encoder's positions cap it.
DEFAULT_MAX_LENGTH = 256


def trained_length(module: MultiTaskModule) -> int:
    """The length a checkpoint's sentences were cut to in training, else `DEFAULT_MAX_LENGTH`."""
    return module.trained_max_length or DEFAULT_MAX_LENGTH


class Predictor:
    """An encoder, its tokenizer and (from a checkpoint) one head per task, ready for inference."""

    def __init__(
        self,
        encoder: Encoder,
        tokenizer: PreTrainedTokenizerBase,
        heads: nn.ModuleDict | None = None,
        tasks: dict[str, list[str]] | None = None,
        device: str = "auto",
        batch_size: int = 64,
        max_length: int = DEFAULT_MAX_LENGTH,
        task_types: Mapping[str, TaskType] | None = None,
        adapters: Sequence[str] | None = None,
    ) -> None:
        """`task_types`: each task's type (default: classification with the labels of
        `tasks`), which turns its head's outputs into predictions. `adapters`: the encoder's
        per-task adapters (`lora_per_task`), named by task: each task's predictions come from
        its own; `encode` chooses one (`adapter=`), or none (the frozen base encoder)."""
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1.")
        self.device = resolve_device(device)
        self.encoder = encoder.to(self.device).eval()
        self.heads = heads.to(self.device).eval() if heads is not None else None
        self.tasks = dict(tasks or {})
        self.task_types = {
            task: (task_types or {}).get(task) or build_task_type(task, labels, None)
            for task, labels in self.tasks.items()
        }
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # Longer inputs than the position embeddings would index past them.
        positions = getattr(encoder.model.config, "max_position_embeddings", max_length)
        self.max_length = min(max_length, positions, tokenizer.model_max_length)
        self.pad_id = tokenizer.pad_token_id or 0
        self.adapters = list(adapters or [])
        self._active: str | None = None
        if self.adapters:  # which one runs is set per call; start from the base
            self._use(None)

    def _use(self, adapter: str | None) -> None:
        """Run the encoder with the per-task adapter `adapter` (None: the base alone)."""
        if self.adapters and (adapter != self._active or adapter is None):
            activate(self.encoder.model, adapter)
            self._active = adapter

    def check_adapter(self, adapter: str | None) -> None:
        """Refuse `adapter=` where this encoder has no such per-task adapter."""
        if adapter is None:
            return
        if not self.adapters:
            raise ConfigError(
                f"adapter={adapter}: this encoder has no per-task adapters (only a checkpoint "
                "of experiment=lora_per_task has them): drop adapter=."
            )
        if adapter not in self.adapters:
            raise ConfigError(
                f"adapter={adapter} is not one of this checkpoint's per-task adapters: use one "
                f"of {self.adapters}, or drop it for the base encoder."
            )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        batch_size: int = 64,
        max_length: int | None = None,
    ) -> Predictor:
        """Load a training checkpoint; it carries the encoder config, heads, labels, tokenizer.
        `max_length` None: the `data.max_length` it was trained with (checkpoints that do not
        record it: 256)."""
        path = Path(path).expanduser()
        module = load_module(path, "ckpt_path")  # weights-only; a bad file is one sentence
        tokenizer = module.tokenizer()  # from the checkpoint just loaded, not read again
        return cls(
            module.encoder,
            tokenizer,
            module.heads,
            module.tasks,
            device,
            batch_size,
            trained_length(module) if max_length is None else max_length,
            module.task_types,
            module.hparams.adapters["names"] if module.per_task_adapters else None,
        )

    @classmethod
    def from_encoder(
        cls,
        name_or_path: str = PACKAGED_MINILM,
        pooling: str | None = None,
        normalize: bool | None = None,
        device: str = "auto",
        batch_size: int = 64,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> Predictor:
        """A plain pretrained encoder without heads: `encode` only. Pooling and normalisation
        left None are a sentence-transformers folder's, else mean and none (see `Encoder`)."""
        encoder = Encoder(name_or_path, pooling=pooling, normalize=normalize)
        tokenizer = load_tokenizer(name_or_path)
        return cls(encoder, tokenizer, device=device, batch_size=batch_size, max_length=max_length)

    def _batches(self, texts: Sequence[str]) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
        """`(input positions, padded batch)`, longest first: running out of memory shows at once."""
        if not texts:  # the tokenizer fails on an empty list
            return
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            input_ids, attention_mask = pad([ids[index] for index in rows], self.pad_id)
            yield (
                rows,
                {
                    "input_ids": input_ids.to(self.device),
                    "attention_mask": attention_mask.to(self.device),
                },
            )

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], adapter: str | None = None) -> np.ndarray:
        """Sentence embeddings, `(len(texts), hidden)` float32, in input order; with per-task
        adapters, those of the task `adapter` (None: of the frozen base encoder)."""
        self.check_adapter(adapter)
        self._use(adapter)
        embeddings = torch.empty(len(texts), self.encoder.hidden_size)
        for rows, batch in self._batches(texts):
            embeddings[rows] = self.encoder(**batch).float().cpu()
        return embeddings.numpy()

    @torch.inference_mode()
    def _embed(self, texts: Sequence[str], adapter: str | None = None) -> torch.Tensor:
        """Sentence embeddings on the model's device, in input order (through the per-task
        adapter `adapter`, where there are some)."""
        self._use(adapter)
        embeddings = torch.empty(len(texts), self.encoder.hidden_size, device=self.device)
        for rows, batch in self._batches(texts):
            embeddings[rows] = self.encoder(**batch).to(embeddings.dtype)
        return embeddings

    @torch.inference_mode()
    def predict(self, rows: Sequence[str | Mapping[str, str]]) -> list[dict]:
        """One prediction per row, in input order: the row (`{"text"}`, and `"text_pair"` for
        pair tasks; a plain string is a text), then per task its type's output:
        `{"label", "probs": {label: p}}` for classes, `{"score"}` for a similarity. A task whose
        input a row lacks (a pair task's `text_pair`) is left out of that row's output."""
        if self.heads is None:
            raise ConfigError(
                "This Predictor is a plain encoder without task heads: load a trained one with "
                "Predictor.from_checkpoint to predict."
            )
        results: list[dict] = [{"text": row} if isinstance(row, str) else dict(row) for row in rows]
        # Each task reads the embeddings of its own adapter where it has one, else the shared ones.
        adapter_of = {task: task if task in self.adapters else None for task in self.task_types}
        needed = {
            (adapter_of[task], column)
            for task, kind in self.task_types.items()
            for column in kind.columns
        }
        embeddings = {}  # (adapter, column) -> (rows that have it, their embeddings)
        for adapter, column in sorted(needed, key=lambda key: (key[0] or "", key[1])):
            present = [i for i, row in enumerate(results) if row.get(column) is not None]
            texts = [str(results[i][column]) for i in present]
            embeddings[adapter, column] = (present, self._embed(texts, adapter))
        for task, kind in self.task_types.items():
            keys = [(adapter_of[task], column) for column in kind.columns]
            present = sorted(set.intersection(*(set(embeddings[key][0]) for key in keys)))
            if not present:
                continue
            selected = []
            for key in keys:
                position = {row: i for i, row in enumerate(embeddings[key][0])}
                selected.append(embeddings[key][1][[position[row] for row in present]])
            outputs = []
            for start in range(0, len(present), self.batch_size):  # heads in batches too
                chunk = [emb[start : start + self.batch_size] for emb in selected]
                outputs += kind.predictions(kind.outputs(self.heads[task], chunk))
            for row, output in zip(present, outputs, strict=True):
                results[row][task] = output
        return results


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """Rows to predict: a `.txt` has one sentence per non-blank line (`{"text"}`); a table
    file's rows have its `text` column, and its `text_pair` column where a row has one (pair
    tasks)."""
    path = Path(path).expanduser()
    texts = read_texts(path)
    if path.suffix.lower() == ".txt":
        return [{"text": text} for text in texts]
    records = READERS[path.suffix.lower()](path).rows
    rows = []
    for text, record in zip(texts, records, strict=True):
        pair = record.get("text_pair")
        has_pair = pair is not None and str(pair).strip()
        rows.append({"text": text, "text_pair": str(pair)} if has_pair else {"text": text})
    return rows


def read_texts(path: str | Path) -> list[str]:
    """Sentences of a `.txt` (one per line, blank lines skipped, as a CSV's are; a line ends at
    a newline, a carriage return, or both), or the `text` column or field of a table file
    (`.csv`, `.tsv`, `.jsonl`, `.parquet`, read as `data=files` reads them)."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        raise ConfigError(f"input={path} is a folder: give a file in it, e.g. input={path}/a.txt.")
    if suffix not in INPUT_SUFFIXES:
        raise ConfigError(
            f"input={path} has an unknown extension: give a {', '.join(INPUT_SUFFIXES)} file."
        )
    if not path.is_file():
        raise ConfigError(f"input={path} does not exist: give an existing file.")
    if suffix == ".txt":
        return [line for line in LINE_END.split(decode_utf8(path)) if line.strip()]
    columns, rows, _ = READERS[suffix](path)
    if "text" not in columns:
        raise ConfigError(
            f"input={path} has no `text` column (columns: {columns}): name the column "
            "holding the sentences `text`."
        )
    lacking = next((n for n, row in enumerate(rows, 1) if row.get("text") is None), None)
    if lacking is not None:
        raise ConfigError(
            f"input={path} record {lacking} has no `text` field: give every record a text."
        )
    return [str(row["text"]) for row in rows]


def check_output(path: str | Path, suffixes: tuple[str, ...], input_path: str | Path) -> Path:
    """Fail before any work if the output cannot be written, or would overwrite the input."""
    path = Path(path).expanduser()
    if path.suffix not in suffixes:
        raise ConfigError(
            f"output={path} has an unknown extension: give a {' or '.join(suffixes)} file."
        )
    if path.is_dir():
        raise ConfigError(
            f"output={path} is a folder: give a file name, e.g. output={path}/out{suffixes[0]}."
        )
    source = Path(input_path).expanduser()
    # resolve() sees through symlinks and `..`; samefile also through hard links.
    if path.resolve() == source.resolve() or (path.exists() and path.samefile(source)):
        raise ConfigError(
            f"output={path} is the input file, which writing would destroy: give another output."
        )
    if path.suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ConfigError(
            f"output={path} needs pyarrow, which is not installed: write "
            f"output={path.with_suffix('.npy')} instead, or `pip install pyarrow`."
        )
    check_writable(path, "output")  # a read-only folder fails now, not after the model ran
    return path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A new file beside `path`, moved onto it once written: a write that fails leaves any old
    file whole and no half-written one under the name; an `OSError` (a full disk) is one
    sentence naming `output`."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield partial
        os.replace(partial, path)
    except OSError as error:
        raise cannot_write("output", path, error) from None
    finally:
        partial.unlink(missing_ok=True)


def write_jsonl(path: Path, records: list[dict]) -> None:
    with replacing(path) as partial, partial.open("w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_embeddings(path: Path, texts: list[str], embeddings: np.ndarray) -> None:
    """`.npy`: the array alone; `.parquet`: columns `text` and `embedding` (one list per row)."""
    if path.suffix == ".npy":
        # A file object: given a name not ending in .npy, np.save would append one.
        with replacing(path) as partial, partial.open("wb") as file:
            np.save(file, embeddings)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(embeddings.reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1])
    with replacing(path) as partial:
        pq.write_table(pa.table({"text": texts, "embedding": column}), partial)
