"""A callback that records what the freezing schedule did, for tests to assert on.

Added to runs the way a user adds any callback: `+callbacks.recorder._target_=helpers.Recorder`.
"""

from __future__ import annotations

import torch
from lightning import Callback

# full_finetune's rates (the model's), as overrides. only_head_frozen's experiment ships its
# search's own, so a test that forks it from full_finetune sets these (and a 1-epoch warm-up).
FULL_FINETUNE_RATES = (
    "model.lr=5e-5",
    "model.head_lr=1e-3",
    "model.weight_decay=0.01",
    "model.warmup_ratio=0.1",
)


class Recorder(Callback):
    last: Recorder | None = None  # the latest instance, for the test that configured it

    def __init__(self) -> None:
        self.trainable: dict[int, set[str]] = {}  # epoch -> names of parameters that require grad
        self.training: dict[int, dict[str, bool]] = {}  # epoch -> module name -> train mode
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.batches: list[dict] = []
        self.rng: dict[int, torch.Tensor] = {}  # epoch -> torch RNG state at its first batch
        self.head_calls: list[str] = []
        self.epoch_start: dict[int, dict[str, torch.Tensor]] = {}  # epoch -> params at its start
        self.epoch_steps: dict[int, int] = {}  # epoch -> training steps
        self.schedulers: list = []  # the LR schedulers, at the end of fit
        Recorder.last = self

    def on_fit_start(self, trainer, pl_module) -> None:
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        for task, head in pl_module.heads.items():
            head.register_forward_hook(lambda *_, task=task: self.head_calls.append(task))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch)
        epoch = trainer.current_epoch
        self.epoch_steps[epoch] = self.epoch_steps.get(epoch, 0) + 1
        if epoch not in self.trainable:
            self.epoch_start[epoch] = {
                n: p.detach().clone() for n, p in pl_module.named_parameters()
            }
            self.rng[epoch] = torch.get_rng_state()
            self.trainable[epoch] = {n for n, p in pl_module.named_parameters() if p.requires_grad}
            self.training[epoch] = {n: m.training for n, m in pl_module.named_modules()}

    def on_fit_end(self, trainer, pl_module) -> None:
        self.after = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        self.schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]


class StopAfterEpoch(Callback):
    """Stops a run at the end of `epoch`, as a killed job would after its last checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def checksum(tensor: torch.Tensor) -> float:
    flat = tensor.double().flatten().cpu()
    return torch.dot(flat, torch.linspace(1, 2, len(flat), dtype=torch.float64)).item()


class ParamChecksum(Callback):
    """Writes, per rank and epoch, a float64 checksum of every parameter to `<out>/rank<r>.json`:
    its entries' sum weighted from 1 to 2 by position, so that a change keeping the plain sum
    (GradNorm's logits under a softmax, which sum to 0) still shows; 0 for a parameter of 0s."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.sums: dict[int, dict[str, float]] = {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import json
        from pathlib import Path

        self.sums[trainer.current_epoch] = {
            name: checksum(param.detach()) for name, param in pl_module.named_parameters()
        }
        path = Path(self.out) / f"rank{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.sums))


class ReducerState(Callback):
    """Writes, per rank, whether DDP's own gradient all-reduce was armed
    (`require_backward_grad_sync`) at each training step's end to `<out>/reducer<r>.json`."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.armed: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import json
        from pathlib import Path

        self.armed.append(bool(trainer.strategy.model.require_backward_grad_sync))
        path = Path(self.out) / f"reducer{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.armed))


class SigtermAtStep(Callback):
    """Sends this process SIGTERM after training step `step`, as a scheduler stopping a job;
    `times` signals in a row."""

    signal_name = "SIGTERM"

    def __init__(self, step: int, times: int = 1) -> None:
        self.step = step
        self.times = times

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import os
        import signal

        if trainer.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), getattr(signal, self.signal_name))


class SigintAtStep(SigtermAtStep):
    """Ctrl-C after training step `step` (`times=2`: pressed twice)."""

    signal_name = "SIGINT"


class RankProbe(Callback):
    """Logs `val/probe`, unsynced, at every validation: flat on rank 0 (a plateau at every
    other validation), rising on the others (never one), so ranks read different values."""

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            value = 0.0 if trainer.global_rank == 0 else float(trainer.global_step)
            pl_module.log("val/probe", value, sync_dist=False)


def train_cached_and_fresh(make_cfg, *overrides: str) -> tuple[dict, dict, Recorder]:
    """Train `overrides` (which add the Recorder) with the frozen caches on, then off; assert
    that every weight agrees (rtol 1e-5); return both runs' metrics and the cached run's
    Recorder."""
    from mtl_lightning.train import train

    with_cache = train(make_cfg(*overrides, "model.frozen_cache=true", output="cached"))
    cached = Recorder.last
    without = train(make_cfg(*overrides, "model.frozen_cache=false", output="fresh"))
    for name, value in Recorder.last.after.items():
        torch.testing.assert_close(cached.after[name], value, rtol=1e-5, atol=1e-6, msg=name)
    return with_cache, without, cached


class MetricGraphs(Callback):
    """After each training step, counts the tensors held in the module's metric states that
    still carry an autograd graph (a metric that kept one would keep every step's activations
    alive where the step's backward did not free them)."""

    last: MetricGraphs | None = None

    def __init__(self) -> None:
        self.with_graph = 0
        self.held = 0
        MetricGraphs.last = self

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for metric in pl_module.modules():
            for state in getattr(metric, "_defaults", {}):
                value = getattr(metric, state)
                for tensor in value if isinstance(value, list) else [value]:
                    self.held += 1
                    self.with_graph += int(tensor.requires_grad or tensor.grad_fn is not None)
