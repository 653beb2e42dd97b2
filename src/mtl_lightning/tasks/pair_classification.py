"""`pair_classification`: two sentences, one class (paraphrase, entailment, ...).

A bi-encoder, as Sentence-BERT (Reimers & Gurevych 2019) trains it on NLI: each sentence is
encoded alone by the shared encoder, into u and v, and a linear head classifies (u, v, |u - v|)
with cross-entropy. Both sentences go through the same frozen caches as any sentence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtl_lightning.tasks.classification import Classification


class PairHead(nn.Module):
    """Dropout, then a linear map from (u, v, |u - v|) to the task's class logits."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(3 * in_features, num_classes)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.cat([u, v, (u - v).abs()], dim=-1)))


class PairClassification(Classification):
    name = "pair_classification"
    columns = ("text", "text_pair")
    architecture = (
        "u, v: the two sentences' embeddings; dropout, then linear on their concatenation "
        "[u, v, |u - v|]: logits = [u, v, |u - v|] @ weight.T + bias"
    )

    def build_head(self, hidden_size: int, dropout: float) -> nn.Module:
        return PairHead(hidden_size, len(self.labels), dropout)

    def outputs(self, head: nn.Module, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        return head(*embeddings)
