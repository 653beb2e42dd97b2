"""The weighting room: a method defined outside the package, chosen by `_target_`, that changes the
shared parameters' gradient (as PCGrad and CAGrad do) through `LossWeighting`'s gradient hook."""

from __future__ import annotations

import pytest
import torch
from helpers import Recorder
from omegaconf import OmegaConf, open_dict

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.train import train
from mtl_lightning.weighting import LossWeighting

RECORDER = "+callbacks.recorder._target_=helpers.Recorder"


class FirstTaskGradientOnly(LossWeighting):
    """Test-only: the shared encoder follows the first task's gradient alone; every head still
    gets its own task's gradient."""

    needs_task_gradients = True
    sampling_modes = ("joint",)

    def combine_gradients(self, gradients):
        return gradients[self.tasks[0]]


def with_weighting(cfg, target: str):
    with open_dict(cfg):
        cfg.weighting = OmegaConf.create({"_target_": target})
    return cfg


def trained(make_cfg, *overrides, target=None, output="run"):
    cfg = make_cfg(RECORDER, "trainer.max_epochs=1", *overrides, output=output)
    train(with_weighting(cfg, target) if target else cfg)
    return Recorder.last


@pytest.mark.slow
def test_a_gradient_method_from_a_test_file_changes_the_shared_gradient(make_cfg):
    """The encoder trained under `FirstTaskGradientOnly` equals the encoder trained with the
    second task's loss weighted 0; the second task's head trains under the first, not the
    second. So the hook wrote exactly the shared gradient it was given."""
    plugin = trained(make_cfg, target="test_weighting.FirstTaskGradientOnly", output="plugin")
    zeroed = trained(make_cfg, "+model.loss_weights.sentiment=0", output="zeroed")
    plain = trained(make_cfg, output="plain")
    encoder = [n for n in plugin.after if n.startswith("encoder.")]
    assert encoder
    for name in encoder + [n for n in plugin.after if n.startswith("heads.classification.")]:
        torch.testing.assert_close(plugin.after[name], zeroed.after[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(plugin.after[n], plain.after[n]) for n in encoder)
    sentiment = [n for n in plugin.after if n.startswith("heads.sentiment.")]
    assert any(not torch.equal(plugin.after[n], zeroed.after[n]) for n in sentiment)


def test_a_gradient_method_refuses_a_sampling_mode_it_cannot_weigh(make_cfg):
    cfg = make_cfg("data.sampling=alternating")
    with pytest.raises(ConfigError, match=r"^weighting=FirstTaskGradientOnly needs steps holding"):
        train(with_weighting(cfg, "test_weighting.FirstTaskGradientOnly"))


def test_both_spellings_of_a_weighting_at_once_are_refused(make_cfg):
    with pytest.raises(ConfigError, match="both choose how the losses combine"):
        train(make_cfg("weighting=uncertainty", "model.loss_weighting=uncertainty"))
    with pytest.raises(ConfigError, match="set model.loss_weights=null or weighting=static"):
        train(make_cfg("weighting=uncertainty", "+model.loss_weights.sentiment=2"))
