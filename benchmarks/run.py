"""`make bench`: the project's speed claims, measured side by side in one run, as one table.

Every run below trains for real, in a fresh child process of its own (`run.py --one NAME`), one
after the other: each has the machine to itself, and its peak memory is its own. The parent
prints the machine, one row per run and the ratios docs/speed.md quotes:

1. Lightning full fine-tuning vs a plain PyTorch loop doing the same work (`plain_loop.py`).
2. `only_transformer_frozen` with the frozen-encoder cache vs without it.
3. The top 1 of 6 layers trainable vs full fine-tuning, with and without the frozen-prefix cache.
4. Length-bucketed vs random batches (`data.bucket_pool=1`): padding and epoch time.
5. The Hugging Face Trainer with length grouping on TREC-6 alone (`hf_trainer.py`) vs this
   project on the same single-task job.
6. Each run's peak memory and examples per second; and `Predictor.encode` vs
   sentence-transformers' `encode` in sentences per second (`encode_speed.py`).

Runs 1-4 use both default tasks, a fixed stratified subsample of `--examples` training examples
per task, and report the mean training time of the epochs after the first (which fills the
caches): from an epoch's start to the end of its last batch, so the validation and checkpoint
writing after it are not counted. Run 5 is the whole 3-epoch job on all of TREC-6's training
split, timed the same way.

    .venv/bin/python benchmarks/run.py [--examples 2000] [--epochs 3] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from lightning import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


class EpochTimes(Callback):
    """Training seconds and examples of each epoch: from its start to the end of its last batch,
    so the validation and checkpoint writing that follow it are not counted."""

    last: EpochTimes | None = None

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.examples: list[int] = []
        EpochTimes.last = self

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.seen = 0
        self.start = self.end = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += sum(len(task_batch["labels"]) for task_batch in batch.values())
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the batch's work done, not only queued
        self.end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(self.end - self.start)
        self.examples.append(self.seen)


@dataclass
class Run:
    """One measured run: what it is, and how: `project` (train.py), `plain` or `hf`."""

    label: str
    kind: str
    overrides: list[str] = field(default_factory=list)
    subsample: bool = True  # False: all training examples (run 5)
    repeats: int = 1  # > 1: done again after the first pass, interleaved; the fastest is kept


TOP1 = ["freezing.keep_frozen_layers=5"]  # embeddings + layers 0-4 frozen: the top 1 of 6 trains
RUNS = {
    # Runs 1 and 5 are the closest calls: best of two each, in turn.
    "full_finetune": Run("Lightning, full fine-tuning", "project", repeats=2),
    "plain_loop": Run("plain PyTorch loop, full fine-tuning", "plain", repeats=2),
    "top1_cached": Run("top 1 of 6 layers, prefix cache", "project", TOP1),
    "top1_uncached": Run(
        "top 1 of 6 layers, no cache", "project", [*TOP1, "model.frozen_cache=false"]
    ),
    "frozen_cached": Run(
        "only_transformer_frozen, cache", "project", ["experiment=only_transformer_frozen"]
    ),
    "frozen_uncached": Run(
        "only_transformer_frozen, no cache",
        "project",
        ["experiment=only_transformer_frozen", "model.frozen_cache=false"],
    ),
    "random_batches": Run("full fine-tuning, random batches", "project", ["data.bucket_pool=1"]),
    "single_task": Run(
        "this project, TREC-6 only, 3 epochs",
        "project",
        ["~data.tasks.sentiment", "trainer.max_epochs=3"],
        subsample=False,
        repeats=2,
    ),
    "hf_trainer": Run(
        "HF Trainer group_by_length, TREC-6, 3 epochs", "hf", subsample=False, repeats=2
    ),
    "encode": Run("Predictor.encode vs sentence-transformers", "encode", subsample=False),
}


def peak_memory_mb() -> float:
    """This process's peak: GPU memory allocated on CUDA, else the resident set (RSS)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def config(run: Run, examples: int, epochs: int, output: Path):
    overrides = [
        f"paths.root_dir={ROOT}",
        f"paths.output_dir={output}",
        "logger=csv",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
        f"trainer.max_epochs={epochs}",
        "+callbacks.epoch_times._target_=__main__.EpochTimes",
        *([f"data.max_train_examples={examples}"] if run.subsample else []),
        *run.overrides,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def measure(name: str, examples: int, epochs: int) -> dict:
    """Do run `name` in this process; what it measured, as a JSON-able dict."""
    run = RUNS[name]
    if run.kind == "encode":
        from encode_speed import measure as measure_encode

        return measure_encode()
    if run.kind == "hf":
        from hf_trainer import run_hf_trainer

        return run_hf_trainer(epochs=3) | {"peak_mb": peak_memory_mb()}
    with tempfile.TemporaryDirectory() as output:
        cfg = config(run, examples, epochs, Path(output))
        if run.kind == "plain":
            from plain_loop import run_plain_loop

            return run_plain_loop(cfg) | {"peak_mb": peak_memory_mb()}
        from mtl_lightning.train import train

        metrics = train(cfg)
    times = EpochTimes.last
    return {
        "epoch_seconds": times.seconds,
        "epoch_examples": times.examples,
        "val_acc": metrics.get("val/acc_mean"),
        "padded_fraction": metrics.get("train/pad_fraction"),
        "peak_mb": peak_memory_mb(),
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, on {device}"
    )


def total_seconds(result: dict) -> float:
    return sum(result["epoch_seconds"])


WHOLE_RUNS = ("single_task", "hf_trainer")  # compared on their whole training time (run 5)


def reported_seconds(name: str, result: dict) -> float:
    """What the comparisons use: the whole training for run 5, else s/epoch after the first."""
    return total_seconds(result) if name in WHOLE_RUNS else after_first(result)[0]


def after_first(result: dict) -> tuple[float, float]:
    """Mean seconds per epoch after the first, and examples per second over those epochs."""
    seconds = result["epoch_seconds"][1:] or result["epoch_seconds"]
    examples = result["epoch_examples"][1:] or result["epoch_examples"]
    return sum(seconds) / len(seconds), sum(examples) / sum(seconds)


def table(results: dict[str, dict]) -> list[str]:
    lines = [
        "| run | s/epoch | examples/s | peak memory MB | padded tokens | val acc |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, result in results.items():
        if RUNS[name].kind == "encode":
            continue
        if name in WHOLE_RUNS:
            seconds = sum(result["epoch_seconds"])
            rate = sum(result["epoch_examples"]) / seconds
            per_epoch = f"{seconds / len(result['epoch_seconds']):.1f}"
        else:
            seconds, rate = after_first(result)
            per_epoch = f"{seconds:.1f}"
        padded = result.get("padded_fraction")
        acc = result.get("val_acc")
        lines.append(
            f"| {RUNS[name].label} | {per_epoch} | {rate:.0f} | {result['peak_mb']:.0f} | "
            f"{'' if padded is None else f'{padded:.1%}'} | {'' if acc is None else f'{acc:.3f}'} |"
        )
    return lines


# (comparison, run A, run B, target, whether A/B meets it); A/B of `reported_seconds`.
CHECKS = [
    (
        "1. Lightning / plain PyTorch loop, full fine-tuning, s/epoch",
        "full_finetune",
        "plain_loop",
        "<= 1.05x",
        lambda r: r <= 1.05,
    ),
    (
        "2. only_transformer_frozen, epochs after the first: no cache / cache",
        "frozen_uncached",
        "frozen_cached",
        ">= 20x faster",
        lambda r: r >= 20,
    ),
    (
        "3. top 1 of 6 layers / full fine-tuning, s/epoch, prefix cache",
        "top1_cached",
        "full_finetune",
        "<= 0.35x",
        lambda r: r <= 0.35,
    ),
    (
        "3. top 1 of 6 layers / full fine-tuning, s/epoch, no cache",
        "top1_uncached",
        "full_finetune",
        "(0.5-0.6x expected)",
        None,
    ),
    ("4. random / length-bucketed batches, s/epoch", "random_batches", "full_finetune", "", None),
    (
        "5. this project / HF Trainer, TREC-6, 3 epochs of training",
        "single_task",
        "hf_trainer",
        "<= 1.0x",
        lambda r: r <= 1.0,
    ),
]
ENCODE_TARGET = 1.3  # Predictor.encode / sentence-transformers, sentences per second


def ratios(results: dict[str, dict]) -> list[str]:
    rows = [
        (text, reported_seconds(a, results[a]) / reported_seconds(b, results[b]), target, met)
        for text, a, b, target, met in CHECKS
        if a in results and b in results
    ]
    if "encode" in results:
        rates = results["encode"]["rates"]
        rows.append(
            (
                "6. Predictor.encode / sentence-transformers encode, sentences/s",
                rates["ours"] / rates["sentence-transformers"],
                f">= {ENCODE_TARGET}x",
                lambda r: r >= ENCODE_TARGET,
            )
        )
    lines = ["| comparison | measured | target | |", "| --- | ---: | --- | --- |"]
    for text, ratio, target, met in rows:
        verdict = "" if met is None else ("met" if met(ratio) else "missed")
        lines.append(f"| {text} | {ratio:.2f}x | {target} | {verdict} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="training examples per task")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=sorted(RUNS), help="these runs only")
    parser.add_argument("--one", choices=sorted(RUNS), help=argparse.SUPPRESS)  # a child's run
    options = parser.parse_args()
    if options.one:
        result = measure(options.one, options.examples, options.epochs)
        print("RESULT " + json.dumps(result), flush=True)
        return
    started = datetime.datetime.now(datetime.UTC)
    results = {}
    selected = options.only or list(RUNS)
    repeats = max(RUNS[name].repeats for name in selected)
    schedule = selected + [n for _ in range(repeats - 1) for n in selected if RUNS[n].repeats > 1]
    for name in schedule:
        print(f"[{time.strftime('%H:%M:%S')}] {RUNS[name].label} ...", file=sys.stderr, flush=True)
        child = subprocess.run(
            [sys.executable, __file__, "--one", name]
            + ["--examples", str(options.examples), "--epochs", str(options.epochs)],
            capture_output=True,
            text=True,
        )
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode or not lines:
            sys.exit(f"Error: benchmark run {name} failed:\n{child.stderr[-3000:]}")
        result = json.loads(lines[-1].removeprefix("RESULT "))
        if name not in results or reported_seconds(name, result) < reported_seconds(
            name, results[name]
        ):
            results[name] = result
    print(f"mtl-lightning benchmarks, {started:%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}")
    print(
        f"runs 1-4: TREC-6 + Rotten Tomatoes, {options.examples} training examples per task, "
        f"batch 32, max length 64, {options.epochs} epochs; s/epoch: training only (validation "
        "and checkpoints excluded), mean of the epochs after the first. Run 5: all TREC-6 "
        "training questions, all 3 epochs. Runs 1 and 5: best of two runs each, in turn. "
        "Peak memory: each run's process (RSS on CPU)."
    )
    print()
    print("\n".join(table(results)))
    comparisons = ratios(results)
    if len(comparisons) > 2:  # more than the header: some comparison had both its runs
        print()
        print("\n".join(comparisons))


if __name__ == "__main__":
    main()
