"""Gradient diagnostics: the cosine, norms and ratio of the tasks' gradients, on known gradients,
and the callback in a run (joint sampling) and refused where a step holds one task."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from mtl_lightning.callbacks.gradient_diagnostics import GradientDiagnostics, gradient_stats
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.train import train

DIAGNOSTICS = "+callbacks/gradient_diagnostics=default"


def test_opposed_gradients_have_cosine_minus_one_and_their_norm_ratio():
    """loss_a = w . d and loss_b = -3 (w . d) have gradients d and -3d: cosine -1, ratio 1/3.
    A second group where b's gradient is orthogonal to a's: cosine 0, norms as set."""
    w = torch.nn.Parameter(torch.randn(5))
    x = torch.nn.Parameter(torch.randn(2))
    d = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0])
    loss_a = w @ d + x @ torch.tensor([3.0, 0.0])
    loss_b = -3 * (w @ d) + x @ torch.tensor([0.0, 4.0])
    stats = gradient_stats({"a": loss_a, "b": loss_b}, {"layer_0": [w], "layer_1": [x]})
    assert stats["grad/layer_0/cos/a_vs_b"] == pytest.approx(-1.0, abs=1e-6)
    assert stats["grad/layer_0/norm/a"] == pytest.approx(d.norm().item(), rel=1e-6)
    assert stats["grad/layer_0/norm/b"] == pytest.approx(3 * d.norm().item(), rel=1e-6)
    assert stats["grad/layer_0/ratio/a_vs_b"] == pytest.approx(1 / 3, rel=1e-6)
    assert stats["grad/layer_1/cos/a_vs_b"] == pytest.approx(0.0, abs=1e-6)
    assert stats["grad/layer_1/ratio/a_vs_b"] == pytest.approx(3 / 4, rel=1e-6)


def test_a_group_of_two_parameters_is_one_vector():
    """Over [w, x] the gradients are (d, e) and (-d, e): cosine (|e|^2 - |d|^2)/(|d|^2 + |e|^2)."""
    w, x = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    d, e = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 1.0])
    stats = gradient_stats({"a": w @ d + x @ e, "b": -(w @ d) + x @ e}, {"encoder": [w, x]})
    assert stats["grad/encoder/cos/a_vs_b"] == pytest.approx((1 - 9) / (9 + 1), rel=1e-6)
    assert stats["grad/encoder/norm/a"] == pytest.approx(math.sqrt(10), rel=1e-6)


@pytest.mark.slow
def test_the_callback_logs_every_group_on_the_steps_asked(make_cfg):
    cfg = make_cfg(
        DIAGNOSTICS, "callbacks.gradient_diagnostics.every_n_steps=2", "trainer.max_epochs=1"
    )
    train(cfg)
    with open(f"{cfg.paths.output_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    key = "grad/layer_2/cos/classification_vs_sentiment"
    logged = [row for row in rows if row.get(key)]
    assert logged, "no gradient diagnostics in metrics.csv"
    steps = {int(row["step"]) for row in rows if row.get("train/loss_step")}
    assert len(steps) > 2
    assert [int(row["step"]) for row in logged] == list(range(0, len(steps), 2))
    for row in logged:
        assert -1.0 <= float(row[key]) <= 1.0
        ratio = float(row["grad/encoder/ratio/classification_vs_sentiment"])
        norms = [float(row[f"grad/encoder/norm/{t}"]) for t in ("classification", "sentiment")]
        assert ratio == pytest.approx(norms[0] / norms[1], rel=1e-4)
    groups = {k.split("/")[1] for k in rows[0] if k.startswith("grad/")}
    assert groups == {"embeddings", "layer_0", "layer_1", "layer_2", "encoder"}
    # The run's summary names the chosen epoch and each task's own best one (item 5).
    summary = json.loads(Path(cfg.paths.output_dir, "summary.json").read_text())
    assert summary["best_epochs"]["chosen"] == 0
    assert summary["best_epochs"]["per_task"] == {"classification": 0, "sentiment": 0}


@pytest.mark.slow
def test_the_callback_refuses_steps_of_one_task(make_cfg):
    with pytest.raises(ConfigError, match=r"needs steps holding every task's loss"):
        train(make_cfg(DIAGNOSTICS, "data.sampling=alternating"))


def test_every_n_steps_must_be_positive():
    with pytest.raises(ConfigError, match="every_n_steps=0"):
        GradientDiagnostics(every_n_steps=0)
