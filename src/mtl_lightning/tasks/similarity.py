"""`similarity`: two sentences and a real-valued score (STS-B style, e.g. 0 to 5).

The model's similarity is the cosine of the two sentence embeddings, each passed through the
task's head: a linear map that starts as the identity, so an untrained head scores the
encoder's own cosine (and a frozen encoder still has something to train). Scores are scaled to
[0, 1] by `score_range` (default: the training split's lowest and highest score).

Losses (`type_options.loss`): `cosent` (default; Su 2022, as sentence-transformers' CoSENTLoss
divided by its scale: a ranking loss over the batch's pairs, which uses only the scores' order,
so their scale does not matter) or `cosine_mse` (the squared error between the cosine and the
scaled score, as sentence-transformers' CosineSimilarityLoss). Metrics: Spearman (primary) and
Pearson.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.tasks.base import ReportMetric, TaskType
from mtl_lightning.tasks.resampling import correlation_metrics

LOSSES = ("cosent", "cosine_mse")

COSENT_CITATION = """@article{10531646,
    author={Huang, Xiang and Peng, Hao and Zou, Dongcheng and Liu, Zhiwei and Li, Jianxin and Liu, Kay and Wu, Jia and Su, Jianlin and Yu, Philip S.},
    journal={IEEE/ACM Transactions on Audio, Speech, and Language Processing},
    title={CoSENT: Consistent Sentence Embedding via Similarity Ranking},
    year={2024},
    doi={10.1109/TASLP.2024.3402087}
}"""  # noqa: E501 (sentence-transformers' CoSENTLoss.citation)


def parse_score(value: str) -> float | None:
    try:
        score = float(value)
    except ValueError:
        return None
    return score if math.isfinite(score) else None


def given_range(task: str, options: Mapping[str, Any]) -> tuple[float, float] | None:
    """`type_options.score_range` as (lowest, highest), checked; None when not given."""
    score_range = options.get("score_range")
    if score_range is None:
        return None
    try:
        low, high = (float(x) for x in score_range)
    except (TypeError, ValueError):
        low = high = math.nan
    if not low < high:
        raise ConfigError(
            f"data.tasks.{task}.type_options.score_range={list(score_range)} must be "
            "[lowest, highest] with lowest < highest."
        )
    return low, high


class SimilarityHead(nn.Module):
    """A linear map of the sentence embedding, initialised to the identity."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.projection = nn.Linear(in_features, in_features)
        with torch.no_grad():
            self.projection.weight.copy_(torch.eye(in_features))
            self.projection.bias.zero_()

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return nn.functional.cosine_similarity(self.projection(u), self.projection(v), dim=-1)


def cosent_loss(cosines: torch.Tensor, scores: torch.Tensor, scale: float) -> torch.Tensor:
    """log(1 + sum over pairs (i, j) with score_i < score_j of exp(scale * (cos_i - cos_j))),
    divided by `scale`.

    Undivided (as sentence-transformers' CoSENTLoss), the loss and its gradient grow with the
    temperature: each pair's gradient on the cosines is `scale` times a softmax weight, so at
    scale 20 a similarity task's gradient of the shared encoder was ~200 times a classification
    task's, and the sum that AdamW follows was the similarity task's alone (docs/task-types.md,
    "Mixing task types"). Divided, the cosines' gradients are the softmax weights (their absolute
    sum at most 2), whatever the scale: the same ranking, the same optimum, the same Adam steps
    for a task alone; a fair share beside other tasks.
    """
    differences = scale * (cosines[:, None] - cosines[None, :])
    wrong_order = scores[:, None] < scores[None, :]
    differences = differences.masked_fill(~wrong_order, float("-inf"))
    logits = torch.cat([differences.new_zeros(1), differences.reshape(-1)])
    return torch.logsumexp(logits, dim=0) / scale


class Similarity(TaskType):
    name = "similarity"
    columns = ("text", "text_pair")
    categorical = False
    primary = "spearman"
    architecture = (
        "u, v: the two sentences' embeddings; p(x) = x @ projection.weight.T + projection.bias; "
        "cosine = cos(p(u), p(v)); score = low + cosine * (high - low), [low, high] = "
        "options.score_range"
    )
    hub_task = "sentence-similarity"
    report_metrics = {
        "spearman": ReportMetric("Spearman", "Spearman", hub="spearman", card="Spearman"),
        "pearson": ReportMetric("Pearson", "Pearson", hub="pearson", card="Pearson"),
    }

    def __init__(self, task: str, labels: Sequence[str] = (), **options: Any) -> None:
        super().__init__(task, (), **options)
        self.loss_name = self.options.setdefault("loss", "cosent")
        if self.loss_name not in LOSSES:
            raise ConfigError(
                f"data.tasks.{task}.type_options.loss={self.loss_name} is unknown: use one of "
                f"{LOSSES}."
            )
        self.scale = float(self.options.setdefault("scale", 20.0))  # CoSENT's temperature
        score_range = given_range(task, self.options)
        if score_range is not None:
            self.options["score_range"] = list(score_range)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ("loss", "scale", "score_range")

    @classmethod
    def label_problem(cls, task: str, label: str, options: Mapping[str, Any]) -> str | None:
        score = parse_score(label)
        if score is None:
            return f"score {label!r}, which is not a number"
        score_range = given_range(task, options)
        if score_range is not None:
            low, high = score_range
            if not low <= score <= high:
                return (
                    f"score {label!r}, outside data.tasks.{task}.type_options.score_range "
                    f"[{low:g}, {high:g}]"
                )
        return None

    @classmethod
    def from_data(
        cls,
        task: str,
        train_labels: Sequence[str],
        label_names: Sequence[str] | None,
        options: Mapping[str, Any],
    ) -> TaskType:
        options = dict(options)
        if options.get("score_range") is None:
            scores = [parse_score(label) for label in train_labels]
            scores = [s for s in scores if s is not None]
            if scores and min(scores) == max(scores):
                raise ConfigError(
                    f"data.tasks.{task} has a single score {scores[0]} in its training data: a "
                    "similarity task needs different scores; check which column holds them."
                )
            options["score_range"] = [min(scores), max(scores)] if scores else [0.0, 1.0]
        return cls(task, (), **options)

    def encode_labels(self, labels: Sequence[str], split: str) -> list[float]:
        """Scores scaled to [0, 1]. A training score outside the score range is refused (an
        inferred range holds every training score); a val or test score beyond a range inferred
        from train is kept, scaled past [0, 1]."""
        low, high = self.options["score_range"]
        scores = []
        for label in labels:
            problem = self.label_problem(self.task, label, {} if split != "train" else self.options)
            if problem is not None:
                raise ConfigError(
                    f"data.tasks.{self.task} has {problem} in its {split} split: give every "
                    "example a numeric score in its label column, within "
                    f"data.tasks.{self.task}.type_options.score_range."
                )
            scores.append((parse_score(label) - low) / (high - low))
        return scores

    def build_head(self, hidden_size: int, dropout: float) -> nn.Module:
        return SimilarityHead(hidden_size)

    def outputs(self, head: nn.Module, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        return head(*embeddings).float()  # the correlation metrics want float32

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "cosine_mse":
            return nn.functional.mse_loss(outputs, labels.to(outputs.dtype))
        return cosent_loss(outputs, labels, self.scale)

    def metrics(self) -> MetricCollection:
        return MetricCollection({"spearman": SpearmanCorrCoef(), "pearson": PearsonCorrCoef()})

    def resampled_metrics(
        self,
        labels: np.ndarray,
        preds_by_run: Mapping[str, np.ndarray],
        weights: np.ndarray,
    ) -> dict[str, dict[str, np.ndarray]]:
        return correlation_metrics(labels, preds_by_run, weights)

    def label_description(self) -> str:
        return "scores in [{}, {}]".format(*self.options["score_range"])

    def card_limits(self) -> list[str]:
        return [
            f"{self.task}: `model.similarity` (the cosine of the embeddings) is not the score the "
            "task trained; compute it with the head's projection as in Use. The embeddings' "
            "own cosine may rank pairs differently."
        ]

    def card_similarity_notes(self) -> list[str]:
        return [
            f"{self.task}'s trained score is not that: it is the cosine of the embeddings after "
            "that task's head, a linear projection (see Use)"
        ]

    def card_citations(self) -> list[tuple[str, str]]:
        return [("CoSENTLoss", COSENT_CITATION)] if self.loss_name == "cosent" else []

    def loss_in_words(self) -> str:
        if self.loss_name == "cosine_mse":
            return (
                "cosine_mse: the squared error between cos(p(u), p(v)) and the score scaled to "
                "[0, 1] (as sentence-transformers' CosineSimilarityLoss)"
            )
        return (
            f"cosent: CoSENT on cos(p(u), p(v)), scale {self.scale:g}, divided by the scale "
            "(sentence-transformers' CoSENTLoss / scale)"
        )

    def usage_lines(self, head: nn.Module) -> list[str]:
        task = self.task
        low, high = self.options["score_range"]
        return [
            f"# {task}: the trained score is the cosine of the PROJECTED embeddings, p(x) = "
            "x @ w.T + b, on [low, high];",
            "# model.similarity(u, v), the cosine of the embeddings themselves, is not it.",
            f'w, b = heads["{task}.projection.weight"], heads["{task}.projection.bias"]',
            "pu, pv = u @ w.T + b, v @ w.T + b",
            "cosine = (pu * pv).sum(-1) / (np.linalg.norm(pu, axis=-1) * np.linalg.norm(pv, "
            "axis=-1))",
            f'out["{task}"] = {low!r} + cosine * ({high!r} - {low!r})',
        ]

    def predictions(self, outputs: torch.Tensor) -> list[dict[str, Any]]:
        """The cosine mapped onto the score range (what `cosine_mse` trains it to match; for
        `cosent` a monotone map of the cosine, whose order is what it learned)."""
        low, high = self.options["score_range"]
        return [{"score": low + c * (high - low)} for c in outputs.float().cpu().tolist()]
