"""What sharing a frozen encoder's embeddings across a study's runs saves (`model.frozen_cache_dir`,
which `make compare` sets), side by side in one run.

Three runs of a frozen-encoder scenario on the default data (both tasks, all examples unless
`--examples`), each in a fresh process, one after the other:

1. seed 1 with an empty store: it encodes every sentence it meets and stores them;
2. seed 2 with that store: another split and other batches, served from it;
3. seed 2 without a store: computing its own embeddings, as every run did before.

It prints each run's wall time (process start to end: data, model, fitting, test), the ratio
of run 3 to run 2, and whether runs 2 and 3 have the same test metrics (they must):

    MTL_DATA_DIR=... .venv/bin/python benchmarks/shared_embeddings.py \\
        [--experiment only_transformer_frozen] [--examples N] [-- <Hydra overrides>]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(experiment: str, seed: int, out: Path, store: Path | None, extra: list[str]) -> dict:
    command = [
        sys.executable, "-m", "mtl_lightning.train", f"experiment={experiment}", f"seed={seed}",
        "logger=csv", "++trainer.enable_progress_bar=false", f"hydra.run.dir={out}",
        f"model.frozen_cache_dir={store if store else 'null'}", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    return {"seconds": seconds, "test": {k: v for k, v in metrics.items() if k.startswith("test/")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="only_transformer_frozen")
    parser.add_argument("--examples", type=int, default=None, help="training examples per task")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    options, extra = parser.parse_args(argv[:split]), argv[split + 1 :]
    if options.examples:
        extra.append(f"data.max_train_examples={options.examples}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        store = root / "store"
        fill = run(options.experiment, 1, root / "fill", store, extra)
        served = run(options.experiment, 2, root / "served", store, extra)
        fresh = run(options.experiment, 2, root / "fresh", None, extra)
        stored = sum(p.stat().st_size for p in store.iterdir()) / 2**20
    same = all(abs(served["test"][k] - v) <= 1e-6 for k, v in fresh["test"].items())
    print(f"{options.experiment}, {' '.join(extra) or 'defaults'}; store {stored:.1f} MB")
    print("| run | wall time (s) |")
    print("| --- | --- |")
    print(f"| seed 1, fills the store | {fill['seconds']:.1f} |")
    print(f"| seed 2, served by the store | {served['seconds']:.1f} |")
    print(f"| seed 2, computes its own | {fresh['seconds']:.1f} |")
    print(f"own / served: {fresh['seconds'] / served['seconds']:.2f}x; "
          f"same test metrics: {same}")  # fmt: skip
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
