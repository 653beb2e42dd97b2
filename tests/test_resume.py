"""Resume is exact: a run stopped after an unfreeze and resumed ends with the same weights."""

from __future__ import annotations

import torch
from helpers import Recorder

from mtl_lightning.train import train

RECORD = "+callbacks.recorder._target_=helpers.Recorder"


def test_gradual_unfreeze_resumes_exactly_across_an_unfreeze_boundary(make_cfg, tmp_path):
    common = ("experiment=gradual_unfreeze", "trainer.max_epochs=4", RECORD)
    train(make_cfg(*common, output="straight"))
    straight = Recorder.last

    # Stopped at the end of epoch 1 (top layer just unfrozen), then resumed from last.ckpt.
    stop = ("+callbacks.stop._target_=helpers.StopAfterEpoch", "+callbacks.stop.epoch=1")
    train(make_cfg(*common, *stop, output="stopped"))
    ckpt = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    train(make_cfg(*common, f"ckpt_path={ckpt}", output="resumed"))
    resumed = Recorder.last

    assert resumed.trainable.keys() == {2, 3}  # it went on from epoch 2
    for epoch in (2, 3):
        assert resumed.trainable[epoch] == straight.trainable[epoch]
        assert resumed.training[epoch] == straight.training[epoch]
    for name, value in straight.after.items():
        torch.testing.assert_close(resumed.after[name], value, rtol=1e-5, atol=1e-6, msg=name)
    epoch_orders = [straight.batches[i]["classification"]["idx"].tolist() for i in (0, 7, 14)]
    assert len({str(order) for order in epoch_orders}) == 3  # a new order every epoch
    changed = [n for n in straight.after if not torch.equal(straight.before[n], straight.after[n])]
    assert any(".layer.1." in n for n in changed)  # the comparison covers unfrozen layers
