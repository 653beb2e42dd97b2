"""Classification head: one per task, on top of the shared sentence embedding."""

from __future__ import annotations

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """Dropout, then a linear map from the sentence embedding to the task's class logits."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(embedding))
