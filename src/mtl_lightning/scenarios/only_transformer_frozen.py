"""`only_transformer_frozen`: the encoder is frozen, the heads train (a linear probe)."""

from __future__ import annotations

from mtl_lightning.scenarios.base import Plan, Scenario


class OnlyTransformerFrozen(Scenario):
    """The heads train on the pretrained encoder's features, which stay intact (and, being
    frozen, are cached after the first epoch: `model.frozen_cache`)."""

    name = "only_transformer_frozen"

    def trainable(
        self, epoch: int, heads: frozenset[str], num_groups: int, step: int | None
    ) -> Plan:
        return Plan(heads, 0)
