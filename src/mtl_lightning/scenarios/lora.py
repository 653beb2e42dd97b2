"""`lora` and `lora_per_task`: LoRA adapters (PEFT) on the frozen shared encoder; the heads train.

LoRA (Hu et al. 2021) adds a trainable low-rank update `B A` (rank `r`, scaled by `alpha / r`)
beside each adapted linear layer of the encoder, whose own weights stay frozen, in eval mode:
well under 2% of the encoder's parameters train. The adapted layers are the `nn.Linear` modules
inside the transformer layers (attention and feed-forward projections, found for any
architecture), or those `target_modules` names, in the layers `layers` (null: all).

`lora` puts one adapter on the encoder, shared by every task. `lora_per_task`
(`freezing.per_task=true`) puts one per task: each task's batches run through its own adapter
over the shared frozen base, so no task's gradient reaches another's encoder path. With
`model.init_from` that adds tasks (continual learning), the tasks the checkpoint was trained on
keep their adapter and head frozen, and each new task gets a fresh adapter: the earlier tasks'
predictions stay bit-identical, and their `val/<task>/forgetting` is exactly 0.

The frozen-prefix cache (model.frozen_cache) serves the frozen layers below the lowest adapted
one (none when every layer is adapted). The exported folder merges a shared adapter into the
encoder, and writes per-task adapters as PEFT adapter folders (`mtl_lightning.hub.export`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtl_lightning.core.rules import Rule, int_at_least, is_int
from mtl_lightning.model.adapters import SHARED
from mtl_lightning.scenarios.base import Plan, Scenario


def _names(value: list) -> bool:
    return len(value) > 0 and all(isinstance(v, str) and v for v in value)


def _indices(value: list) -> bool:
    return len(value) > 0 and all(is_int(v) and v >= 0 for v in value)


class Lora(Scenario):
    """Adapters and heads train; everything else of the encoder is frozen, in eval mode."""

    name = "lora"  # "lora_per_task" with per_task (the study report's label)
    # A fork compares plans and configs without the `freezing` node: two LoRA runs with other
    # ranks or targets would look alike, and no other scenario's epochs train adapters.
    forks = False
    RULES = {
        **Scenario.RULES,
        "r": int_at_least(8),
        "alpha": Rule(float, "above 0", lambda v: v > 0, 16),
        "dropout": Rule(float, "at least 0 and below 1", lambda v: 0 <= v < 1, 0.1),
        "target_modules": Rule(
            list, "of linear layers' names (or ends of names)", _names, "[query,value]", True
        ),
        "layers": Rule(list, "of layer indices (0: the bottom layer)", _indices, "[4,5]", True),
        "per_task": Rule(bool, example="true"),
    }

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.1,
        target_modules: list[str] | None = None,
        layers: list[int] | None = None,
        per_task: bool = False,
        keep_frozen_layers: int = 0,
    ) -> None:
        """`keep_frozen_layers=N`: no adapter on the bottom N layers (as every scenario reads
        it: those stay as they are)."""
        super().__init__(keep_frozen_layers)
        self.check_values(
            r=r,
            alpha=alpha,
            dropout=dropout,
            target_modules=target_modules,
            layers=layers,
            per_task=per_task,
        )
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.target_modules = None if target_modules is None else list(target_modules)
        self.layers = None if layers is None else sorted(set(layers))
        self.per_task = per_task
        if per_task:
            self.name = "lora_per_task"
        self.kept: frozenset[str] = frozenset()  # tasks whose adapter and head stay as loaded

    def adapters(self, tasks: list[str]) -> dict[str, Any]:
        return {
            "peft_type": "LORA",
            "config": {
                "r": self.r,
                "lora_alpha": self.alpha,
                "lora_dropout": self.dropout,
                "target_modules": self.target_modules,
            },
            "layers": self.layers,
            "frozen_below": self.keep_frozen_layers,
            "names": list(tasks) if self.per_task else [SHARED],
            "per_task": self.per_task,
        }

    def loaded(self, trained: list[str], new: list[str]) -> None:
        # One adapter per task, and tasks added: those trained before keep their adapter and head
        # as they are. (Without a new task, all of them train on.)
        if self.per_task and new:
            self.kept = frozenset(trained)

    def trainable(
        self, epoch: int, heads: frozenset[str], num_groups: int, step: int | None
    ) -> Plan:
        training = heads - self.kept
        return Plan(training, 0, training if self.per_task else frozenset({SHARED}))

    def group_starts(self, names: list[str], never: int) -> Mapping[str, int]:
        # The adapters sit in every group's layers and train from the first step (a frozen base
        # weight has no gradient, so its group's rate never acts on it).
        return dict.fromkeys(names, 0)

    def frozen_head(self, epoch: int) -> str | None:
        # The forgetting measured (and logged) is that of the first task kept as loaded.
        return min(self.kept) if self.kept else None

    def state_dict(self) -> dict[str, Any]:
        return {"kept": sorted(self.kept)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kept") is not None:
            self.kept = frozenset(state["kept"])
