"""Pair features on frozen embeddings: logistic regressions and the module's kind of pair head.

STS-B pairs cut at score 4 (`mtl_lightning.data.sources.stsb.StsbSource`, kind pair_classification),
the packaged all-MiniLM-L6-v2's normalised embeddings, frozen. Prints the test majority, a
logistic regression (C chosen on the dev split) on the cosine alone, (u, v, |u - v|),
(u, v, |u - v|, cosine) and (u, v, |u - v|, u * v), and a linear head trained as the module trains
one (dropout 0.1, AdamW, best dev epoch of 30; seeds 1-3) on the two head inputs. Needs
scikit-learn and sentence-transformers (the `bench` extra). docs/task-types.md quotes its output.

    MTL_DATA_DIR=data .venv/bin/python benchmarks/pair_probe.py            # all genres
    MTL_DATA_DIR=data .venv/bin/python benchmarks/pair_probe.py MSRpar     # one genre
    MTL_DATA_DIR=data .venv/bin/python benchmarks/pair_probe.py --curve    # how fast a head learns

`--curve`: instead, the (u, v, |u - v|, u * v) head's dev and test accuracy after each of its first
6 epochs at the rates 1e-3 (`model.head_lr`) and 1e-2, seed 1: how many epochs a head needs on
unit-norm features before it reads what the probe reads.
"""

import os
import sys
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sklearn.linear_model import LogisticRegression

from mtl_lightning.data.sources.stsb import StsbSource
from mtl_lightning.model.encoder import packaged_minilm_path

curve = "--curve" in sys.argv[1:]
files = [arg for arg in sys.argv[1:] if arg != "--curve"] or None
data_dir = Path(os.environ.get("MTL_DATA_DIR", Path(__file__).resolve().parents[1] / "data"))
data = StsbSource("pair_classification", threshold=4.0, files=files).load(data_dir)
model = SentenceTransformer(str(packaged_minilm_path()), device="cpu")
emb = {}
for split, rows in data.items():
    u = model.encode(rows.texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True)
    v = model.encode(
        rows.text_pairs, batch_size=64, convert_to_tensor=True, normalize_embeddings=True
    )
    y = torch.tensor([r == "paraphrase" for r in rows.labels]).long()
    emb[split] = (u, v, y)


def feats(u, v, kind):
    parts = {
        "uv|u-v|": [u, v, (u - v).abs()],
        "uv|u-v|u*v": [u, v, (u - v).abs(), u * v],
        "uv|u-v|+dot": [u, v, (u - v).abs(), (u * v).sum(-1, keepdim=True)],
        "dot": [(u * v).sum(-1, keepdim=True)],
    }[kind]
    return torch.cat(parts, -1)


ytr, yva, yte = (emb[s][2] for s in ("train", "val", "test"))
maj = max(yte.float().mean().item(), 1 - yte.float().mean().item())
print(f"test majority {maj:.3f}; train {len(ytr)} val {len(yva)} test {len(yte)}")
for kind in () if curve else ("dot", "uv|u-v|", "uv|u-v|+dot", "uv|u-v|u*v"):
    X = {s: feats(*emb[s][:2], kind).numpy() for s in emb}
    best = max(
        (LogisticRegression(C=c, max_iter=3000).fit(X["train"], ytr).score(X["val"], yva), c)
        for c in (0.1, 1, 10, 100)
    )
    lr = LogisticRegression(C=best[1], max_iter=3000).fit(X["train"], ytr)
    print(f"logreg {kind:14s} C={best[1]:<5} val {best[0]:.3f} test {lr.score(X['test'], yte):.3f}")


def head(kind, seed, lr=1e-3, epochs=30, every=None):
    torch.manual_seed(seed)
    X = {s: feats(*emb[s][:2], kind) for s in emb}
    lin = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(X["train"].shape[1], 2))
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=0.01)
    best = (-1, 0, 0)
    for epoch in range(epochs):
        lin.train()
        for idx in torch.randperm(len(ytr)).split(32):
            loss = torch.nn.functional.cross_entropy(lin(X["train"][idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        lin.eval()
        with torch.no_grad():
            va = (lin(X["val"]).argmax(-1) == yva).float().mean().item()
            te = (lin(X["test"]).argmax(-1) == yte).float().mean().item()
        if every is not None:
            every.append((va, te))
        if va > best[0]:
            best = (va, te, epoch)
    return best


if curve:
    for lr in (1e-3, 1e-2):
        seen = []
        head("uv|u-v|u*v", 1, lr, epochs=6, every=seen)
        shown = " ".join(f"{e + 1}: {va:.3f}/{te:.3f}" for e, (va, te) in enumerate(seen))
        print(f"head uv|u-v|u*v lr={lr:g} seed 1, dev/test accuracy after epoch {shown}")
    sys.exit()


for kind in ("uv|u-v|", "uv|u-v|u*v"):
    for lr in (1e-3, 1e-2):
        res = [head(kind, s, lr) for s in (1, 2, 3)]
        print(
            f"head {kind:12s} lr={lr:g} 30 epochs, best val epoch: test "
            + " ".join(f"{t:.3f}(ep{e})" for _, t, e in res)
            + f" mean {np.mean([t for _, t, _ in res]):.3f}"
        )
