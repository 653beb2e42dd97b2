"""Sentence embeddings per second: `Predictor.encode` vs sentence-transformers' `encode`.

Same encoder (the packaged all-MiniLM-L6-v2, mean pooling, L2-normalised, as sentence-transformers
configures it), same texts (TREC's distinct training questions from data=trec_rt), batch 64,
torch's default threads. Each side is timed `REPEATS` times, interleaved, best run kept; prints
the ratio and checks that both give the same embeddings. Needs the `bench` extra:

    .venv/bin/pip install -e ".[bench]"
    nice -n 0 .venv/bin/python benchmarks/encode_speed.py
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mtl_lightning.data.sources.trec_rt import trec
from mtl_lightning.model.encoder import packaged_minilm_path
from mtl_lightning.model.inference import Predictor

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
REPEATS = 3


def timed(run) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def measure() -> dict:
    """Sentences per second of each side (best of `REPEATS`) and the largest embedding gap."""
    from sentence_transformers import SentenceTransformer

    data_dir = Path(os.environ.get("MTL_DATA_DIR", ROOT / "data"))
    source = trec()
    source.prepare(data_dir)
    texts = source.load(data_dir)["train"][0]
    model_dir = str(packaged_minilm_path())
    ours = Predictor.from_encoder(model_dir, normalize=True, device="cpu", batch_size=BATCH)
    theirs = SentenceTransformer(model_dir, device="cpu")
    ours.encode(texts[:256]), theirs.encode(texts[:256], batch_size=BATCH)  # warm-up
    timings = {"ours": [], "sentence-transformers": []}
    outputs = {}
    for _ in range(REPEATS):  # interleaved, so drifts in machine load hit both sides alike
        runs = {
            "ours": lambda: ours.encode(texts),
            "sentence-transformers": lambda: theirs.encode(texts, batch_size=BATCH),
        }
        for name, run in runs.items():
            seconds, outputs[name] = timed(run)
            timings[name].append(seconds)
    return {
        "sentences": len(texts),
        "rates": {name: len(texts) / min(values) for name, values in timings.items()},
        "max_gap": float(np.abs(outputs["ours"] - outputs["sentence-transformers"]).max()),
    }


def main() -> None:
    result = measure()
    rates = result["rates"]
    print(
        f"machine: {platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}, {result['sentences']} TREC questions, batch {BATCH}"
    )
    for name, rate in rates.items():
        print(f"{name:>22}: {rate:7.1f} sentences/s (best of {REPEATS})")
    print(
        f"{'ratio':>22}: {rates['ours'] / rates['sentence-transformers']:.2f}x "
        f"(target >= 1.3x); max |difference| of the embeddings {result['max_gap']:.1e}"
    )


if __name__ == "__main__":
    main()
