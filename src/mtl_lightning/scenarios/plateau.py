"""A plateau: a monitored metric that has not improved on its best for `patience` readings.

EarlyStopping's criterion (`mode`, `patience`, no `min_delta`), as a small object a scenario
keeps per stage and checkpoints: `update` is given each validation's value.
"""

from __future__ import annotations

from typing import Any


class Plateau:
    """The best value since `reset` and the readings since it improved."""

    def __init__(self, patience: int, mode: str = "max") -> None:
        self.patience, self.mode = patience, mode
        self.best: float | None = None
        self.wait = 0

    def reset(self, value: float) -> None:
        """Start afresh from `value` (a new stage begins at this reading)."""
        self.best, self.wait = value, 0

    def update(self, value: float) -> bool:
        """Read one value; True once it has not improved for `patience` readings."""
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.reset(value)
        else:
            self.wait += 1
        return self.wait >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state.get("best"), int(state.get("wait") or 0)
