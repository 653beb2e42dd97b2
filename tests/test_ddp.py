"""DDP on CPU (2 processes, gloo): replicas stay identical through gradual unfreezing, also under
the weightings that take each task's gradient; those gradients are averaged over the ranks before
the method combines them, so one DDP step equals one step of a single process on both batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mtl_lightning.weighting import AlignedMTL, CAGrad, GradNorm, LossWeighting, PCGrad
from mtl_lightning.weighting.base import backpropagate

TESTS = Path(__file__).resolve().parent


def _run_ddp(tiny_encoders, tmp_path, *overrides: str) -> tuple[dict, dict]:
    """Train gradual_unfreeze under DDP; each rank's parameter checksums, epoch by epoch."""
    sums = tmp_path / "sums"
    command = [
        sys.executable, "-m", "mtl_lightning.train",
        "trainer=ddp", "data=tiny", "logger=csv", "experiment=gradual_unfreeze",
        "trainer.max_epochs=3", "+trainer.enable_progress_bar=false",
        f"model.encoder.name_or_path={tiny_encoders['bert']}",
        f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}",
        "+callbacks.checksum._target_=helpers.ParamChecksum", f"+callbacks.checksum.out={sums}",
        *overrides,
    ]  # fmt: skip
    # This checkout's package, not whichever copy is installed.
    path = os.pathsep.join([str(TESTS), str(TESTS.parent / "src")])
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr + result.stdout
    rank0 = json.loads((sums / "rank0.json").read_text())
    rank1 = json.loads((sums / "rank1.json").read_text())
    return rank0, rank1


@pytest.mark.ddp
@pytest.mark.subprocess
def test_ddp_replicas_stay_identical_across_unfreezing(tiny_encoders, tmp_path):
    rank0, rank1 = _run_ddp(tiny_encoders, tmp_path)
    assert rank0.keys() == rank1.keys() == {"0", "1", "2"}
    for epoch in rank0:
        for name, value in rank0[epoch].items():
            assert value == rank1[epoch][name], (epoch, name)
    # Training did move them: the layer unfrozen in epoch 1 changed between epochs 0 and 2.
    top = [n for n in rank0["0"] if ".layer.2." in n]
    assert any(rank0["0"][n] != rank0["2"][n] for n in top)


@pytest.mark.ddp
@pytest.mark.subprocess
def test_ddp_ranks_unfreeze_together_on_rank_zeros_plateau(tiny_encoders, tmp_path):
    # The pace (100 steps) is never reached: only plateaus unfreeze. The monitor plateaus on
    # rank 0 and never on rank 1; both ranks act on rank 0's reading.
    rank0, rank1 = _run_ddp(
        tiny_encoders, tmp_path,
        "freezing.unfreeze_every_steps=100", "freezing.plateau_patience=1",
        "freezing.plateau_monitor=val/probe", "+callbacks.probe._target_=helpers.RankProbe",
        "+trainer.val_check_interval=1",
    )  # fmt: skip
    assert rank0 == rank1
    # Layer 0, third from the top, trained: three plateaus came.
    lower = [n for n in rank0["0"] if ".layer.0." in n]
    assert any(rank0["0"][n] != rank0["2"][n] for n in lower)


@pytest.mark.ddp
@pytest.mark.subprocess
@pytest.mark.parametrize("weighting", ["pcgrad", "gradnorm"])
def test_ddp_replicas_stay_identical_under_a_gradient_method(tiny_encoders, tmp_path, weighting):
    # gradual_unfreeze: epoch 0 trains the heads alone (the frozen encoder's path, the total
    # backpropagated), epochs 1 and 2 the top layers too, through the method's task gradients.
    reducer = tmp_path / "reducer"
    rank0, rank1 = _run_ddp(
        tiny_encoders, tmp_path, f"weighting={weighting}",
        "+callbacks.reducer._target_=helpers.ReducerState", f"+callbacks.reducer.out={reducer}",
    )  # fmt: skip
    # The method averaged every gradient itself: DDP's own all-reduce stayed off, not doubled.
    for rank in (0, 1):
        armed = json.loads((reducer / f"reducer{rank}.json").read_text())
        assert armed and not any(armed)
    assert rank0.keys() == rank1.keys() == {"0", "1", "2"}
    assert rank0 == rank1
    top = [n for n in rank0["0"] if ".layer.2." in n]
    assert any(rank0["0"][n] != rank0["2"][n] for n in top)
    if weighting == "gradnorm":  # its learned weights (0 at the start) moved, alike on both ranks
        assert abs(rank0["2"]["weighting.logits"]) > 1e-6


# --- one DDP step of a gradient method equals one step of one process on both batches ------

METHODS = {"pcgrad": PCGrad, "cagrad": CAGrad, "aligned": AlignedMTL, "gradnorm": GradNorm}


def _toy_step(method: str, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
    """One `backward` of `method` ("sum": the base class's plain sum) on a shared layer and two
    heads (each task's loss a mean over the examples): every gradient, and the method's state."""
    torch.manual_seed(0)
    shared = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5))
    heads = nn.ModuleList([nn.Linear(5, 1), nn.Linear(5, 1)])
    weighting = METHODS.get(method, LossWeighting)(["a", "b"])
    features = shared(inputs)
    losses = {
        task: nn.functional.mse_loss(head(features).squeeze(-1), targets[:, i])
        for i, (task, head) in enumerate(zip(["a", "b"], heads, strict=True))
    }
    others = [*heads.parameters(), *weighting.parameters()]
    weighting.backward(
        losses, list(shared.parameters()), others, last_shared=list(shared[2].parameters())
    )
    params = {f"shared.{n}": p for n, p in shared.named_parameters()}
    params |= {f"heads.{n}": p for n, p in heads.named_parameters()}
    params |= {f"weighting.{n}": p for n, p in weighting.named_parameters()}
    grads = {name: p.grad.clone() for name, p in params.items()}
    return {"grads": grads, "state": {k: v.clone() for k, v in weighting.state_dict().items()}}


def _gradient_step_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    inputs, targets = torch.load(Path(out) / "inputs.pt")
    half = len(inputs) // world
    rows = slice(rank * half, (rank + 1) * half)  # equal shards, as DDP's samplers give
    results = {method: _toy_step(method, inputs[rows], targets[rows]) for method in METHODS}
    # backpropagate: a parameter one rank used gets the mean, one no rank used keeps None.
    used, partly, unused = (nn.Parameter(torch.ones(2)) for _ in range(3))
    total = (used * (rank + 1)).sum()
    if rank == 0:
        total = total + (partly * 4).sum()
    backpropagate(total, [used, partly, unused])
    results["backpropagate"] = [used.grad, partly.grad, unused.grad]
    torch.save(results, Path(out) / f"{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.ddp
def test_a_ddp_step_of_a_gradient_method_equals_one_process_on_both_batches(tmp_path):
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    inputs, targets = torch.randn(8, 4), torch.randn(8, 2)
    targets[:, 1] = -3 * targets[:, 0]  # opposed targets: the tasks' gradients conflict
    torch.save([inputs, targets], tmp_path / "inputs.pt")
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_gradient_step_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    for method in METHODS:
        one_process = _toy_step(method, inputs, targets)
        for part in ("grads", "state"):  # GradNorm's state: L(0), the losses of both batches
            for name, value in one_process[part].items():
                # Both ranks took the same decision on the same gradients: bit for bit alike.
                assert torch.equal(rank0[method][part][name], rank1[method][part][name])
                torch.testing.assert_close(
                    rank0[method][part][name], value, rtol=1e-5, atol=1e-6, msg=(method, name)
                )
        # What a rank alone would have written (no all-reduce) is another gradient.
        alone = _toy_step(method, inputs[:4], targets[:4])["grads"]["shared.0.weight"]
        assert not torch.allclose(alone, one_process["grads"]["shared.0.weight"], atol=1e-4)
    # PCGrad's decision was not a no-op: the tasks conflicted, and it projected that away.
    plain = _toy_step("sum", inputs, targets)["grads"]["shared.0.weight"]
    assert not torch.allclose(rank0["pcgrad"]["grads"]["shared.0.weight"], plain, atol=1e-4)
    used, partly, unused = rank0["backpropagate"]
    assert torch.equal(used, torch.full((2,), 1.5)) and torch.equal(partly, torch.full((2,), 2.0))
    assert unused is None and rank1["backpropagate"][2] is None
    assert torch.equal(rank1["backpropagate"][1], partly)
