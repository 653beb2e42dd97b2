"""Cost of `callbacks.gradient_diagnostics` per training step: off vs on, side by side.

The packaged all-MiniLM-L6-v2, fully trainable, a joint step of two tasks (a classification
batch and a similarity batch of sentence pairs, `BATCH` examples each, `LENGTH` tokens of random
ids): forward, each task's loss, backward, AdamW step. "on" adds what the callback does on a step
it logs (`gradient_stats`: one extra backward pass per task, kept graph, per-group norms and
cosines). Steps alternate off and on, `STEPS` of each, each side's median kept; the on/off
ratio is printed, and the amortised overhead at `every_n_steps` 50 (the default):
off, the callback is not built and the module only keeps a reference to the step's losses.

    nice -n 0 .venv/bin/python benchmarks/gradient_diagnostics.py
"""

from __future__ import annotations

import platform
import statistics
import time

import torch

from mtl_lightning.callbacks.gradient_diagnostics import gradient_stats
from mtl_lightning.model.module import MultiTaskModule

BATCH = 8
LENGTH = 16
STEPS = 8
EVERY = 50


def make_module() -> MultiTaskModule:
    torch.manual_seed(0)
    return MultiTaskModule(
        tasks={"classification": ["a", "b", "c"], "similarity": []},
        task_types={
            "classification": {"type": "classification"},
            "similarity": {"type": "similarity", "score_range": [0, 5]},
        },
        frozen_cache=False,
    )


def batches() -> dict[str, dict]:
    def ids() -> torch.Tensor:
        return torch.randint(1000, 2000, (BATCH, LENGTH))

    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    common = {"attention_mask": mask, "pair_attention_mask": mask, "idx": torch.arange(BATCH)}
    return {
        "classification": {
            "task": "classification",
            "input_ids": ids(),
            "labels": torch.randint(0, 3, (BATCH,)),
            **common,
        },
        "similarity": {
            "task": "similarity",
            "input_ids": ids(),
            "pair_input_ids": ids(),
            "labels": torch.rand(BATCH),
            **common,
        },
    }


def step(module, optimizer, data, groups, diagnostics: bool) -> None:
    losses = {
        task: module.task_types[task].loss(module.task_outputs(batch, "train"), batch["labels"])
        for task, batch in data.items()
    }
    if diagnostics:
        gradient_stats(losses, groups)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()


def main() -> None:
    module = make_module().train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
    data = batches()
    groups = {g.name: g.params for g in module.encoder_groups()}
    groups["encoder"] = [p for params in groups.values() for p in params]
    step(module, optimizer, data, groups, True)  # warm-up
    seconds = {"off": [], "on": []}
    for _ in range(STEPS):  # alternating step by step, so drifts in machine load hit both alike
        for name in seconds:
            start = time.perf_counter()
            step(module, optimizer, data, groups, name == "on")
            seconds[name].append(time.perf_counter() - start)
    off, on = statistics.median(seconds["off"]), statistics.median(seconds["on"])
    print(
        f"machine: {platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}; MiniLM-L6, 2 tasks, batch {BATCH} x {LENGTH} tokens"
    )
    print(f"{'off':>28}: {off:.3f} s/step (median of {STEPS}, alternating with on)")
    print(f"{'on, a logged step':>28}: {on:.3f} s/step")
    print(f"{'ratio on/off':>28}: {on / off:.2f}x")
    print(f"{f'amortised, every {EVERY} steps':>28}: {1 + (on / off - 1) / EVERY:.3f}x")


if __name__ == "__main__":
    main()
