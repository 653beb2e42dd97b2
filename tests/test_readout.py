"""entire_network_frozen reads frozen features out with nearest-centroid or kNN readouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning import Callback

from mtl_lightning.scenarios.readout import CentroidReadout, KNNReadout, fit_readout
from mtl_lightning.train import train


def _clusters(n: int, num_classes: int, generator: torch.Generator, spread: float = 0.3):
    """Points around one random direction per class (cosine-separable when `spread` is small)."""
    centres = torch.randn(num_classes, 16, generator=generator) * 3
    labels = torch.arange(n) % num_classes
    points = centres[labels] + spread * torch.randn(n, 16, generator=generator)
    return points, labels


def _accuracy(readout: torch.nn.Module, points: torch.Tensor, labels: torch.Tensor) -> float:
    return (readout(points).argmax(-1) == labels).float().mean().item()


@pytest.mark.parametrize("kind", ["centroid", "knn"])
def test_readout_separates_separable_embeddings(kind):
    generator = torch.Generator().manual_seed(0)
    points, labels = _clusters(600, 4, generator)
    readout = fit_readout(points[:400], labels[:400], 4, kind, k=5)
    assert isinstance(readout, CentroidReadout if kind == "centroid" else KNNReadout)
    assert _accuracy(readout, points[400:], labels[400:]) == 1.0
    # Scores are log-probabilities: the logged loss is the readout's NLL.
    assert torch.allclose(readout(points[:3]).exp().sum(-1), torch.ones(3))


@pytest.mark.parametrize("kind", ["centroid", "knn"])
def test_readout_is_at_chance_with_shuffled_labels(kind):
    generator = torch.Generator().manual_seed(1)
    points, labels = _clusters(3000, 3, generator)
    shuffled = labels[:2000][torch.randperm(2000, generator=generator)]
    accuracy = _accuracy(
        fit_readout(points[:2000], shuffled, 3, kind, k=25), points[2000:], labels[2000:]
    )
    assert abs(accuracy - 1 / 3) < 0.1


def test_knn_votes_of_the_nearest_neighbours():
    train_points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    readout = KNNReadout(train_points, torch.tensor([0, 0, 1, 1, 1]), 2, k=2)
    assert readout(torch.tensor([[1.0, 0.05], [0.05, 1.0]])).argmax(-1).tolist() == [0, 1]
    # k=5: every point votes, class 1 has the majority wherever the query lies.
    everyone = KNNReadout(train_points, torch.tensor([0, 0, 1, 1, 1]), 2, k=5)
    assert everyone(torch.tensor([[1.0, 0.0]])).argmax(-1).tolist() == [1]


class EncoderRows(Callback):
    """Counts the examples the encoder runs on (from `setup`, before any evaluation hook)."""

    last: EncoderRows | None = None

    def __init__(self) -> None:
        self.rows = 0
        EncoderRows.last = self

    def setup(self, trainer, pl_module, stage) -> None:
        if not getattr(pl_module.encoder, "_counted", False):
            pl_module.encoder._counted = True
            pl_module.encoder.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.rows += len(output)


def _readout_accuracy(run, task: str, kind: str, k: int = 25) -> float:
    """The readout re-fitted from the exported train embeddings, scored on the exported test."""
    with np.load(run / "embeddings" / f"{task}_train.npz") as train_split:
        fitted = fit_readout(
            torch.from_numpy(train_split["embeddings"]),
            torch.from_numpy(train_split["labels"]),
            len(train_split["label_names"]),
            kind,
            k,
        )
    with np.load(run / "embeddings" / f"{task}_test.npz") as test_split:
        embeddings, labels = (torch.from_numpy(test_split[n]) for n in ("embeddings", "labels"))
    return _accuracy(fitted, embeddings, labels)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["centroid", "knn"])
def test_entire_network_frozen_scores_the_readout_computing_embeddings_once(
    make_cfg, tmp_path, kind
):
    counter = "+callbacks.rows._target_=test_readout.EncoderRows"
    metrics = train(
        make_cfg(
            "experiment=entire_network_frozen", f"callbacks.frozen_readout.kind={kind}", counter
        )
    )
    run = tmp_path / "run"
    examples = 0
    for task in ("classification", "sentiment"):
        assert metrics[f"test/{task}/acc"] == pytest.approx(_readout_accuracy(run, task, kind))
        assert f"test/{task}/readout_acc" not in metrics  # without init_from it is the metric
        for split in ("train", "val", "test"):
            with np.load(run / "embeddings" / f"{task}_{split}.npz") as saved:
                examples += len(saved["labels"])
    assert EncoderRows.last.rows == examples  # every example through the encoder once


@pytest.mark.slow
def test_entire_network_frozen_with_init_from_logs_the_readout_beside_the_heads(make_cfg, tmp_path):
    train(make_cfg("experiment=full_finetune", "trainer.max_epochs=1", output="first"))
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    heads = train(
        make_cfg(
            "experiment=entire_network_frozen",
            "model.frozen_cache=false",
            f"model.init_from={ckpt}",
        )
    )
    run = tmp_path / "run"
    for task in ("classification", "sentiment"):
        assert heads[f"test/{task}/readout_acc"] == pytest.approx(
            _readout_accuracy(run, task, "centroid")
        )
        assert f"val/{task}/readout_f1" in heads
