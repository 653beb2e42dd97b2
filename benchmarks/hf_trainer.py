"""Baseline: what a user would pick instead, the Hugging Face `Trainer` on one task (TREC-6).

Fine-tunes the default encoder (all-MiniLM-L6-v2) with `AutoModelForSequenceClassification` on
exactly the project's TREC-6 training split (the datamodule's token ids, max length 64), with the
settings a user would take: lr 5e-5, batch 32, length-grouped batches, dynamic padding and the
Trainer's defaults otherwise (its fused AdamW; gradient clipping at 1.0, under 1% of a step
here). Times each epoch from its start to the end of its last step, as `run.py` times this
project, and, untimed, the validation accuracy and the padded fraction of one epoch's batches:

    nice -n 19 .venv/bin/python benchmarks/hf_trainer.py [--epochs 3] [--max-train-examples N]

Prints one JSON line. Needs the `bench` extra (accelerate).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from mtl_lightning.data.datamodule import TaskDataset
from mtl_lightning.model.encoder import (
    PACKAGED_MINILM,
    load_tokenizer,
    resolve_encoder_path,
)
from mtl_lightning.train import build_data

ROOT = Path(__file__).resolve().parents[1]
TASK = "classification"  # TREC-6 in the default data config


class TokenizedDataset(Dataset):
    """A `TaskDataset` as the Trainer wants it: one dict of unpadded ids per example."""

    def __init__(self, split: TaskDataset) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, list[int] | int]:
        ids = self.split.input_ids[index]
        return {
            "input_ids": ids,
            "attention_mask": [1] * len(ids),
            "labels": self.split.labels[index],
        }


def trec_splits(max_train_examples: int | None, seed: int) -> tuple[TaskDataset, TaskDataset, int]:
    """The project's TREC-6 train and validation splits (same examples, same token ids)."""
    overrides = [f"paths.root_dir={ROOT}", "~data.tasks.sentiment", f"seed={seed}"]
    if max_train_examples:
        overrides.append(f"data.max_train_examples={max_train_examples}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = build_data(cfg.data)
    splits = datamodule.datasets[TASK]
    return splits["train"], splits["val"], len(datamodule.label_names[TASK])


class EpochTimer(TrainerCallback):
    """Seconds of each epoch from its start to the end of its last step, as `run.EpochTimes`
    measures this project's runs (the Trainer's set-up before the first epoch not counted)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_epoch_begin(self, args, state, control, **kwargs) -> None:
        self.start = self.end = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.end = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs) -> None:
        self.seconds.append(self.end - self.start)


def run_hf_trainer(epochs: int = 3, max_train_examples: int | None = None, seed: int = 42) -> dict:
    """Train on TREC-6 with the HF Trainer; timings, accuracy and settings as a JSON-able dict."""
    train, val, num_labels = trec_splits(max_train_examples, seed)
    set_seed(seed)  # the new classifier head is initialised here, before the Trainer seeds
    path, local_only = resolve_encoder_path(PACKAGED_MINILM)
    tokenizer = load_tokenizer(PACKAGED_MINILM)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, local_files_only=local_only
    )
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=epochs,
            learning_rate=5e-5,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=128,
            train_sampling_strategy="group_by_length",
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            seed=seed,
            dataloader_num_workers=0,
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
        )
        timer = EpochTimer()
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=TokenizedDataset(train),
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
            callbacks=[timer],
        )
        # The Trainer prints its own summary: keep stdout for our one JSON line.
        with contextlib.redirect_stdout(sys.stderr):
            start = time.perf_counter()
            trainer.train()
            wall = time.perf_counter() - start
        seconds = sum(timer.seconds)
        # The eval sampler is length-grouped (shuffled) too: compare with the returned label_ids.
        output = trainer.predict(TokenizedDataset(val))
        val_acc = float((output.predictions.argmax(-1) == output.label_ids).mean())
        # One more epoch of the Trainer's own training batches, only collated: their padding.
        real = total = 0
        for batch in trainer.get_train_dataloader():
            real += int(batch["attention_mask"].sum())
            total += batch["attention_mask"].numel()
        optim = str(getattr(args.optim, "value", args.optim))
    examples = epochs * len(train)
    return {
        "runner": "hf_trainer",
        "device": str(args.device),
        "epochs": epochs,
        "train_size": len(train),
        "val_size": len(val),
        "examples": examples,
        "train_seconds": round(seconds, 3),
        "epoch_seconds": timer.seconds,
        "epoch_examples": [len(train)] * epochs,
        "wall_seconds_of_train": round(wall, 3),
        "max_grad_norm": args.max_grad_norm,
        "examples_per_s": round(examples / seconds, 2),
        "val_acc": round(val_acc, 4),
        "padded_fraction": round(1 - real / total, 4),
        "optim": optim,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-train-examples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    options = parser.parse_args()
    print(json.dumps(run_hf_trainer(options.epochs, options.max_train_examples, options.seed)))


if __name__ == "__main__":
    main()
