"""The cost per training step of each loss weighting against static, side by side in one run.

A tiny random BERT (3 layers, hidden 32, as the tests' encoders) with two classification heads,
random token batches; each method trains its own copy of the same model for `--steps` steps,
taken in `--rounds` interleaved rounds (10 steps each by default) so that a slower spell of the
machine falls on every method alike. Only the step is timed (forward, the weighting's backward,
AdamW):

    nice -n 19 .venv/bin/python benchmarks/weighting_cost.py [--steps 300] [--rounds 30]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch
from transformers import AutoModel, AutoTokenizer, BertConfig

from mtl_lightning.model.encoder import packaged_minilm_path
from mtl_lightning.model.module import MultiTaskModule
from mtl_lightning.weighting import (
    AlignedMTL,
    CAGrad,
    DynamicWeightAverage,
    GradNorm,
    LossWeighting,
    PCGrad,
    RandomLossWeighting,
    StaticWeighting,
    UncertaintyWeighting,
)

TASKS = {"topic": ["a", "b", "c"], "sentiment": ["negative", "positive"]}
METHODS = {
    "static": StaticWeighting,
    "uncertainty": UncertaintyWeighting,
    "rlw": RandomLossWeighting,
    "dwa": DynamicWeightAverage,
    "gradnorm": GradNorm,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "aligned": AlignedMTL,
}
BATCH, LENGTH = 16, 32


def tiny_encoder(folder: str) -> str:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    AutoModel.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(packaged_minilm_path())).save_pretrained(folder)
    return folder


def batches(steps: int) -> list[dict[str, dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    return [
        {
            task: {
                "input_ids": torch.randint(1000, 2000, (BATCH, LENGTH), generator=generator),
                "attention_mask": torch.ones(BATCH, LENGTH, dtype=torch.long),
                "labels": torch.randint(0, len(labels), (BATCH,), generator=generator),
            }
            for task, labels in TASKS.items()
        }
        for _ in range(steps)
    ]


class Trainee:
    """One method's model, optimizer and the parameter lists `MultiTaskModule.backward` uses."""

    def __init__(self, base: MultiTaskModule, weighting: LossWeighting) -> None:
        self.module = copy.deepcopy(base)
        self.module.weighting = weighting
        self.optimizer = torch.optim.AdamW(self.module.param_groups())
        self.shared = [p for p in self.module.encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in self.shared}
        self.others = [p for p in self.module.parameters() if p.requires_grad and id(p) not in ids]
        self.last_shared = self.module.encoder_groups()[-1].params

    def step(self, batch: dict) -> None:
        module = self.module
        losses = {}
        for task, task_batch in batch.items():
            embedding = module.encoder(task_batch["input_ids"], task_batch["attention_mask"])
            outputs = module.task_types[task].outputs(module.heads[task], [embedding])
            losses[task] = module.task_types[task].loss(outputs, task_batch["labels"])
        if module.weighting.needs_task_gradients:
            module.weighting.backward(losses, self.shared, self.others, self.last_shared)
        else:
            module.weighting.combine(losses)[0].backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def main(steps: int, rounds: int) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as folder:
        base = MultiTaskModule(
            TASKS, encoder={"name_or_path": tiny_encoder(folder)}, frozen_cache=False
        )
    base.train()
    trainees = {name: Trainee(base, method(list(TASKS))) for name, method in METHODS.items()}
    data = batches(steps // rounds)
    for trainee in trainees.values():  # warm-up, untimed
        for batch in data[:5]:
            trainee.step(batch)
    seconds = dict.fromkeys(trainees, 0.0)
    for _ in range(rounds):
        for name, trainee in trainees.items():
            start = time.perf_counter()
            for batch in data:
                trainee.step(batch)
            seconds[name] += time.perf_counter() - start
    timed = len(data) * rounds
    print(f"{timed} steps per method, batch {BATCH} x {LENGTH} tokens per task, 2 tasks")
    print("| method | ms/step | x static |")
    print("| --- | --- | --- |")
    for name, total in seconds.items():
        print(f"| {name} | {1000 * total / timed:.1f} | {total / seconds['static']:.2f}x |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    main(args.steps, args.rounds)
