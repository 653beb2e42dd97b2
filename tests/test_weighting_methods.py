"""The weighting methods of the room (RLW, DWA, GradNorm, PCGrad, CAGrad, Aligned-MTL): each on a
hand-worked case, the sampling modes each refuses, and exact resume for DWA and GradNorm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import MetricGraphs, Recorder

from mtl_lightning.core.checkpoint import read_checkpoint
from mtl_lightning.core.errors import ConfigError
from mtl_lightning.train import train
from mtl_lightning.weighting import (
    AlignedMTL,
    CAGrad,
    DynamicWeightAverage,
    GradNorm,
    PCGrad,
    RandomLossWeighting,
)
from mtl_lightning.weighting.cagrad import project_to_simplex

TASKS = ["a", "b"]
RECORD = "+callbacks.recorder._target_=helpers.Recorder"


def gradients(*rows: tuple[float, ...]) -> dict[str, torch.Tensor]:
    return {task: torch.tensor(row) for task, row in zip(TASKS, rows, strict=True)}


def losses(*values: float) -> dict[str, torch.Tensor]:
    return {task: torch.tensor(value) for task, value in zip(TASKS, values, strict=True)}


def test_pcgrad_projects_two_conflicting_gradients():
    # g_a.g_b = -1: g_a' = g_a + 1/2 g_b = (0.5, 0.5), g_b' = g_b + 1/1 g_a = (0, 1).
    combined = PCGrad(TASKS).combine_gradients(gradients((1.0, 0.0), (-1.0, 1.0)))
    torch.testing.assert_close(combined, torch.tensor([0.5, 1.5]))
    # No conflict (g_a.g_b = 1 > 0): the plain sum.
    combined = PCGrad(TASKS).combine_gradients(gradients((1.0, 0.0), (1.0, 1.0)))
    torch.testing.assert_close(combined, torch.tensor([2.0, 1.0]))


def test_cagrad_on_two_orthogonal_gradients():
    # G = I: g_0 = (0.5, 0.5), |g_0| = sqrt(0.5), c = 0.5 |g_0|; w = (0.5, 0.5) minimises
    # |G^T w| on the simplex, g_w = g_0, so the update is g_0 (1 + 0.5) / (1 + 0.5^2) = (0.6, 0.6).
    combined = CAGrad(TASKS, calpha=0.5).combine_gradients(gradients((1.0, 0.0), (0.0, 1.0)))
    torch.testing.assert_close(combined, torch.tensor([0.6, 0.6]))
    plain = CAGrad(TASKS, calpha=0.0).combine_gradients(gradients((3.0, 1.0), (-1.0, 2.0)))
    torch.testing.assert_close(plain, torch.tensor([1.0, 1.5]))  # calpha = 0: the mean


def test_cagrad_weights_minimise_its_objective_on_a_grid():
    grads = torch.tensor([[3.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
    gram = grads @ grads.T  # [[10, -1], [-1, 5]]; mean 13/4, so |g_0| = sqrt(3.25)
    c = 0.5 * math.sqrt(3.25)
    p = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    w = torch.stack([p, 1 - p], dim=1)
    objective = w @ gram.mean(dim=1) + c * torch.sqrt(((w @ gram) * w).sum(dim=1) + 1e-8)
    best = w[objective.argmin()]
    g_w = best @ grads
    expected = (grads.mean(dim=0) + c / g_w.norm() * g_w) / 1.25
    combined = CAGrad(TASKS, calpha=0.5).combine_gradients(gradients((3.0, 1.0), (-1.0, 2.0)))
    torch.testing.assert_close(combined, expected.float(), rtol=1e-4, atol=1e-4)


def test_simplex_projection():
    torch.testing.assert_close(
        project_to_simplex(torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)),
        torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
    )
    # Sorted (1, .5, .5): every coordinate stays, each less (2 - 1) / 3.
    torch.testing.assert_close(
        project_to_simplex(torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64)),
        torch.tensor([1 / 6, 1 / 6, 2 / 3], dtype=torch.float64),
    )
    torch.testing.assert_close(
        project_to_simplex(torch.tensor([1.0, 0.0], dtype=torch.float64)),
        torch.tensor([1.0, 0.0], dtype=torch.float64),
    )
    torch.testing.assert_close(
        project_to_simplex(torch.tensor([0.3, 0.1], dtype=torch.float64)),
        torch.tensor([0.6, 0.4], dtype=torch.float64),
    )


def test_aligned_mtl_equalises_orthogonal_gradients():
    # M = diag(36, 4): alpha = sqrt(4) * diag(1/6, 1/2) 1 = (1/3, 1), so the update is (2, 2):
    # each gradient scaled to the smallest singular value, 2.
    combined = AlignedMTL(TASKS).combine_gradients(gradients((6.0, 0.0), (0.0, 2.0)))
    torch.testing.assert_close(combined, torch.tensor([2.0, 2.0]))


def test_dwa_weights_from_the_last_two_epochs_loss_ratios():
    dwa = DynamicWeightAverage(TASKS, temperature=2.0)
    steps = {0: [(1.2, 1.0), (0.8, 1.0)], 1: [(0.5, 1.0)]}  # means (1, 1), then (0.5, 1)
    for epoch, epoch_losses in steps.items():
        dwa.on_train_epoch_start(epoch)
        for values in epoch_losses:
            _, weights = dwa.combine(losses(*values))
            assert weights == {"a": 1.0, "b": 1.0}  # no ratio before the third epoch
    dwa.on_train_epoch_start(2)
    total, weights = dwa.combine(losses(2.0, 3.0))
    # ratios (0.5, 1): 2 softmax((0.25, 0.5)) = 2 (e^0.25, e^0.5) / (e^0.25 + e^0.5)
    expected = [2 * math.exp(x) / (math.exp(0.25) + math.exp(0.5)) for x in (0.25, 0.5)]
    assert [weights["a"], weights["b"]] == pytest.approx(expected)
    assert expected == pytest.approx([0.875647, 1.124353], abs=1e-6)
    assert float(total) == pytest.approx(2.0 * expected[0] + 3.0 * expected[1])
    dwa.on_train_epoch_start(2)  # a mid-epoch resume starts the same epoch again: no change
    assert dwa.combine(losses(2.0, 3.0))[1] == weights


def seed_sequence(seed: int, step: int) -> int:
    return np.random.SeedSequence([seed, step]).generate_state(1)[0]


def test_rlw_weights_are_a_seeded_softmax_of_normal_draws_summing_to_the_task_count():
    rlw, again = RandomLossWeighting(TASKS, seed=7), RandomLossWeighting(TASKS, seed=7)
    drawn = [rlw.combine(losses(1.0, 1.0))[1] for _ in range(5)]
    assert drawn == [again.combine(losses(1.0, 1.0))[1] for _ in range(5)]  # every rank alike
    for step, weights in enumerate(drawn):
        generator = torch.Generator().manual_seed(int(seed_sequence(7, step)))
        normal = torch.randn(2, generator=generator, dtype=torch.float64)
        expected = (2 * torch.softmax(normal, dim=0)).tolist()
        assert [weights["a"], weights["b"]] == pytest.approx(expected)
        assert sum(weights.values()) == pytest.approx(2.0)
    assert len({weights["a"] for weights in drawn}) == 5  # a new draw every step
    other = RandomLossWeighting(TASKS, seed=8).combine(losses(1.0, 1.0))[1]
    assert other != drawn[0]


def test_gradnorm_weight_update_on_given_norms():
    gradnorm = GradNorm(TASKS, alpha=1.0)
    gradnorm.weight_loss(losses(2.0, 4.0), torch.tensor([1.0, 1.0]))  # records L(0) = (2, 4)
    # L/L(0) = (1, 0.5), r = (4/3, 2/3); w = (1, 1), norms (1, 3): G = (1, 3), mean 2, targets
    # (8/3, 4/3): L_grad = 5/3 + 5/3; dL/dw = (-1, 3); through w = 2 softmax(s) at s = 0,
    # dw/ds = [[.5, -.5], [-.5, .5]]: dL/ds = (-2, 2). The first task, slower, gains weight.
    loss = gradnorm.weight_loss(losses(2.0, 2.0), torch.tensor([1.0, 3.0]))
    assert loss.item() == pytest.approx(10 / 3)
    loss.backward()
    torch.testing.assert_close(gradnorm.logits.grad, torch.tensor([-2.0, 2.0]))
    torch.testing.assert_close(gradnorm.initial_losses, torch.tensor([2.0, 4.0]))


@pytest.mark.parametrize("method", [RandomLossWeighting, GradNorm, PCGrad, CAGrad, AlignedMTL])
def test_methods_that_weigh_tasks_together_refuse_one_task_steps(method):
    weighting = method(TASKS)
    weighting.check_sampling("joint")
    for sampling in ("alternating", "proportional", "temperature"):
        with pytest.raises(ConfigError, match=f"not data.sampling={sampling}: set data.sampling"):
            weighting.check_sampling(sampling)


def test_dwa_weighs_every_sampling_mode():
    for sampling in ("joint", "alternating", "proportional", "temperature"):
        DynamicWeightAverage(TASKS).check_sampling(sampling)


def weighting_state(path) -> dict[str, torch.Tensor]:
    state = read_checkpoint(path, "ckpt_path")["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("weighting.")}


def test_metrics_keep_no_graph_under_a_gradient_method(make_cfg):
    """A gradient method backpropagates the encoder by `autograd.grad` and the heads alone by
    `backward`, so no backward frees the encoder's saved activations: a metric state holding a
    step's outputs with their graph kept them all alive (aligned on MiniLM, TREC beside STS-B:
    24 GB after 100 steps, killed). Outputs reach the metrics detached."""
    train(
        make_cfg(
            "data=tiny_types",
            "weighting=aligned",
            "trainer.max_epochs=1",
            "+callbacks.graphs._target_=helpers.MetricGraphs",
        )
    )
    graphs = MetricGraphs.last
    assert graphs.held > 0 and graphs.with_graph == 0


@pytest.mark.slow
@pytest.mark.parametrize(("name", "epochs", "stop"), [("dwa", 3, 1), ("gradnorm", 2, 0)])
def test_resume_is_exact(make_cfg, tmp_path, name, epochs, stop):
    """Straight through, and stopped after epoch `stop` then resumed from last.ckpt: the same
    weights, the weighting's state (DWA's loss history, GradNorm's L(0) and learned weights)
    included. DWA runs 3 epochs: its weights leave 1 only in the third."""
    common = (f"weighting={name}", f"trainer.max_epochs={epochs}", RECORD)
    train(make_cfg(*common, output="straight"))
    straight = Recorder.last
    stopping = ("+callbacks.stop._target_=helpers.StopAfterEpoch", f"+callbacks.stop.epoch={stop}")
    train(make_cfg(*common, *stopping, output="stopped"))
    ckpt = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    train(make_cfg(*common, f"ckpt_path={ckpt}", output="resumed"))
    resumed = Recorder.last
    assert set(resumed.trainable) == set(range(stop + 1, epochs))  # it went on from there
    for param, value in straight.after.items():
        torch.testing.assert_close(resumed.after[param], value, rtol=1e-5, atol=1e-6, msg=param)
    mine = weighting_state(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    theirs = weighting_state(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    assert sorted(mine) == sorted(theirs) and theirs
    for key, value in theirs.items():
        torch.testing.assert_close(mine[key], value, rtol=1e-5, atol=1e-6, msg=key, equal_nan=True)
    if name == "dwa":  # the compared epoch was weighted by a ratio, not 1:1
        assert torch.isfinite(theirs["weighting.history"]).all()
    else:  # the learned weights moved
        assert not torch.equal(straight.after["weighting.logits"], torch.zeros(2))
