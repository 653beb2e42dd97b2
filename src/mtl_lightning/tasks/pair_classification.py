"""`pair_classification`: two sentences, one class (paraphrase, entailment, ...).

A bi-encoder, as Sentence-BERT (Reimers & Gurevych 2019) trains it on NLI: each sentence is
encoded alone by the shared encoder, into u and v, and a linear head classifies
(u, v, |u - v|, u * v) with cross-entropy: SBERT's features plus the element-wise product, as
SentEval and InferSent use. Without u * v a linear head cannot form the two sentences' cosine
(their dot product, for normalised embeddings), the feature that says most about a paraphrase:
on STS-B's MSR-paraphrase pairs it ended below a logistic regression on the frozen features
(docs/task-types.md). Both sentences go through the same frozen caches as any sentence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtl_lightning.tasks.classification import Classification


def pair_features(u: torch.Tensor, v: torch.Tensor, width: int = 4) -> torch.Tensor:
    """[u, v, |u - v|, u * v] (`width` 4), or SBERT's [u, v, |u - v|] (`width` 3: heads saved
    before u * v was added)."""
    parts = [u, v, (u - v).abs(), u * v]
    return torch.cat(parts[:width], dim=-1)


class PairHead(nn.Module):
    """Dropout, then a linear map from (u, v, |u - v|, u * v) to the task's class logits."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_features = in_features
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(4 * in_features, num_classes)

    @property
    def width(self) -> int:
        """How many embedding-sized parts the classifier reads (3 for an older saved head)."""
        return self.classifier.in_features // self.in_features

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pair_features(u, v, self.width)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A head saved before u * v was added reads (u, v, |u - v|): keep its shape.
        weight = state_dict.get(prefix + "classifier.weight")
        if weight is not None and weight.shape[1] != self.classifier.in_features:
            old = self.classifier
            self.classifier = nn.Linear(weight.shape[1], old.out_features).to(old.weight)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class PairClassification(Classification):
    name = "pair_classification"
    columns = ("text", "text_pair")
    architecture = (
        "u, v: the two sentences' embeddings; dropout, then linear on their concatenation "
        "[u, v, |u - v|, u * v] (u * v element-wise): logits = [u, v, |u - v|, u * v] @ "
        "weight.T + bias (a head saved with a weight 3 embeddings wide reads [u, v, |u - v|])"
    )

    def build_head(self, hidden_size: int, dropout: float) -> nn.Module:
        return PairHead(hidden_size, len(self.labels), dropout)

    def loss_in_words(self) -> str:
        return "cross-entropy on the head's logits of (u, v, |u - v|, u * v)"

    def usage_lines(self, head: nn.Module) -> list[str]:
        parts = ["u", "v", "np.abs(u - v)", "u * v"][: head.width]
        features = f"np.concatenate([{', '.join(parts)}], axis=-1)"
        return self._logits_lines(features)

    def outputs(self, head: nn.Module, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        return head(*embeddings)
