"""Peak memory and time per training step of the retrieval loss at batch 256: plain MNRL
against GradCache (`type_options.mini_batch_size`), side by side.

The packaged all-MiniLM-L6-v2 (or `--encoder`), one retrieval task, random token batches of
`--batch` anchor-positive pairs of `--length` tokens; AdamW. Each variant runs in a fresh
process, so that its peak is its own: on the CPU the process's peak resident memory above what
it held before the first step (the model, optimizer and data), on a GPU
`torch.cuda.max_memory_allocated` above the same point. One untimed step, then `--steps` timed:

    nice -n 19 .venv/bin/python benchmarks/gradcache.py [--batch 256] [--mini-batch 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def step_stats(args: argparse.Namespace) -> dict:
    from mtl_lightning.model.encoder import PACKAGED_MINILM
    from mtl_lightning.model.module import MultiTaskModule

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    options = {"type": "retrieval"}
    if args.variant == "cached":
        options["mini_batch_size"] = args.mini_batch
    torch.manual_seed(0)
    module = MultiTaskModule(
        {"qa": []},
        encoder={"name_or_path": args.encoder or PACKAGED_MINILM},
        task_types={"qa": options},
        frozen_cache=False,
    ).to(device)
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(1)
    batch = {"task": "qa", "idx": torch.arange(args.batch)}
    for ids_key, mask_key in (
        ("input_ids", "attention_mask"),
        ("pair_input_ids", "pair_attention_mask"),
    ):
        batch[ids_key] = torch.randint(1000, 20000, (args.batch, args.length), generator=generator)
        batch[mask_key] = torch.ones(args.batch, args.length, dtype=torch.long)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    batch["labels"] = torch.zeros(args.batch, 2, dtype=torch.long, device=device)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        outputs = module.task_outputs(batch, "train")
        loss = module.task_types["qa"].loss(outputs, batch["labels"])
        loss.backward()
        optimizer.step()
        return float(loss)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    loss = step()  # untimed: allocations settle
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "variant": args.variant,
        "device": device.type,
        "first_loss": loss,
        "peak_mb": peak / 2**20,
        "seconds_per_step": sum(times) / len(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--mini-batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=32, help="tokens per text")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--encoder", default=None, help="default: the packaged MiniLM")
    parser.add_argument("--cpu", action="store_true", help="even where a GPU is visible")
    parser.add_argument("--variant", choices=["plain", "cached"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # a child: one variant, one JSON line
        print(json.dumps(step_stats(args)))
        return
    results = []
    for variant in ("plain", "cached"):
        command = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    plain, cached = results
    print(
        f"batch {args.batch}, {args.length} tokens per text, mini-batch {args.mini_batch}, "
        f"{plain['device']}, mean of {args.steps} steps after one untimed"
    )
    print("| loss | peak memory above the model (MB) | seconds per step | first loss |")
    print("| --- | --- | --- | --- |")
    for name, r in (("plain MNRL", plain), (f"GradCache ({args.mini_batch})", cached)):
        seconds, loss = r["seconds_per_step"], r["first_loss"]
        print(f"| {name} | {r['peak_mb']:.0f} | {seconds:.2f} | {loss:.6f} |")
    print(
        f"GradCache / plain: memory {cached['peak_mb'] / plain['peak_mb']:.2f}x, "
        f"time {cached['seconds_per_step'] / plain['seconds_per_step']:.2f}x"
    )


if __name__ == "__main__":
    main()
