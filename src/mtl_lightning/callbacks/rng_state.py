"""Random states in the checkpoint, so that a resumed run draws the same dropout masks.

Lightning restores weights, optimizer, scheduler and loop position, but not the global RNGs; the
freezing schedule and the samplers are seeded per epoch on their own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lightning import Callback

from mtl_lightning.core.compat import collect_rng_states, set_rng_states


class RNGStateCheckpoint(Callback):
    """Keeps the torch, CUDA, NumPy and Python RNG states in checkpoints; restores them."""

    def state_dict(self) -> dict[str, Any]:
        states = collect_rng_states()
        # Plain lists instead of a NumPy array, so that checkpoints load with weights_only=True.
        name, keys, position, has_gauss, gauss = states["numpy"]
        states["numpy"] = (name, keys.tolist(), position, has_gauss, gauss)
        return {"rng_states": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = dict(state_dict["rng_states"])
        name, keys, position, has_gauss, gauss = states["numpy"]
        states["numpy"] = (name, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss)
        set_rng_states(states)
