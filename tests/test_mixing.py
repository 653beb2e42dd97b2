"""Mixing task types: the similarity loss reaches the optimiser on a scale-free footing, and the
pair head reads the features that carry a pair's similarity."""

from __future__ import annotations

import math

import pytest
import torch

from mtl_lightning.tasks.pair_classification import PairHead, pair_features
from mtl_lightning.tasks.similarity import Similarity


def cosine_gradient(scale: float) -> tuple[float, torch.Tensor]:
    """CoSENT at `scale` on a batch ranked exactly wrong: the loss and its gradient on the
    cosines."""
    task = Similarity("sts", score_range=[0, 1], scale=scale)
    cosines = torch.tensor([0.9, 0.5, 0.1], requires_grad=True)  # scores in the opposite order
    loss = task.loss(cosines, torch.tensor([0.0, 0.5, 1.0]))
    loss.backward()
    return loss.item(), cosines.grad


@pytest.mark.parametrize("scale", [5.0, 20.0, 50.0])
def test_the_cosent_gradient_on_the_cosines_does_not_grow_with_its_scale(scale):
    """Each wrongly ordered pair's gradient is its softmax weight (the weights sum to at most 1),
    so the gradient's absolute sum is at most 2 at any scale. Undivided, it was about 2 * scale:
    ~40 at the default 20, which swamped a cross-entropy beside it."""
    _, grad = cosine_gradient(scale)
    assert grad.abs().sum().item() <= 2 + 1e-6
    assert grad.abs().sum().item() > 1.5  # a wrong ranking: the weights are nearly all on pairs


def test_cosent_is_sentence_transformers_loss_divided_by_its_scale():
    """log(1 + sum exp(scale * (cos_i - cos_j))) over pairs with score_i < score_j, / scale."""
    loss, _ = cosine_gradient(20.0)
    pairs = [(0.9, 0.5), (0.9, 0.1), (0.5, 0.1)]  # (cos_i, cos_j) with score_i < score_j
    expected = math.log(1 + sum(math.exp(20 * (a - b)) for a, b in pairs)) / 20
    assert loss == pytest.approx(expected, rel=1e-5)


def test_the_pair_head_reads_u_v_their_distance_and_product():
    u, v = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(pair_features(u, v), torch.cat([u, v, (u - v).abs(), u * v], -1))
    head = PairHead(6, 2, dropout=0.0)
    assert head.classifier.in_features == 4 * 6


def test_a_linear_pair_head_can_score_the_cosine():
    """With weights of 1 on the u * v block, the head's logit is u . v: the cosine of normalised
    embeddings, which no linear map of (u, v, |u - v|) can give."""
    u = torch.nn.functional.normalize(torch.randn(8, 6), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(8, 6), dim=-1)
    head = PairHead(6, 1, dropout=0.0)
    with torch.no_grad():
        head.classifier.weight.zero_()
        head.classifier.weight[0, 18:] = 1.0
        head.classifier.bias.zero_()
    torch.testing.assert_close(head(u, v)[:, 0], torch.cosine_similarity(u, v, dim=-1))


def test_a_pair_head_saved_before_the_product_loads_and_reads_u_v_distance():
    old = torch.nn.Linear(3 * 6, 2)
    state = {"classifier.weight": old.weight.detach(), "classifier.bias": old.bias.detach()}
    head = PairHead(6, 2, dropout=0.0)
    head.load_state_dict(state)
    u, v = torch.randn(3, 6), torch.randn(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(head(u, v), old(torch.cat([u, v, (u - v).abs()], -1)))


def test_each_tasks_best_epoch_is_reported_beside_the_chosen_one():
    """The mean peaks at epoch 2; sts peaks at 0 (two epochs away: named), trec at 3 (one away)."""
    from mtl_lightning.core.summary import best_epochs

    history = {
        0: {"primary_mean": 0.70, "trec": 0.60, "sts": 0.80},
        1: {"primary_mean": 0.72, "trec": 0.66, "sts": 0.78},
        2: {"primary_mean": 0.75, "trec": 0.74, "sts": 0.76},
        3: {"primary_mean": 0.75, "trec": 0.76, "sts": 0.74},  # a tie: the first epoch is kept
    }
    epochs = best_epochs(history)
    assert epochs["chosen"] == 2
    assert epochs["per_task"] == {"sts": 0, "trec": 3}
    assert "sts at epoch 0" in epochs["note"] and "trec" not in epochs["note"]
    history[0]["sts"] = 0.7
    assert best_epochs(history)["note"] is None
    # Among the epochs the scenario scores (only_head_frozen: from its freeze on) only.
    assert best_epochs(history, lambda epoch: epoch != 2)["chosen"] == 3
    assert best_epochs(history, lambda epoch: epoch > 3)["chosen"] is None
