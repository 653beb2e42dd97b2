"""What the docs say about the code agrees with the code: head tensors, summary keys, what is
reproducible, the shipped gradual_unfreeze recipe."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from mtl_lightning.core.summary import write_summary
from mtl_lightning.tasks import TASK_TYPES

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


@pytest.mark.parametrize("type_name", sorted(TASK_TYPES))
def test_export_md_gives_each_head_types_tensors_and_shapes(type_name):
    dim, labels = 8, 3
    kind = TASK_TYPES[type_name]
    head = kind("t", [f"c{i}" for i in range(labels)] if kind.categorical else []).build_head(
        dim, 0.1
    )
    words = {dim: "dim", 4 * dim: "4 * dim", labels: "labels"}
    row = next(
        line
        for line in (DOCS / "export.md").read_text().splitlines()
        if line.startswith("| `heads.safetensors` |")
    )
    described = row.split(f"`{type_name}`:", 1)[1]
    for other in TASK_TYPES:  # up to the next type's part of the row
        described = described.split(f"; `{other}`:", 1)[0]
    for name, tensor in head.state_dict().items():
        shape = ", ".join(words[size] for size in tensor.shape)
        assert f"`<task>.{name}` `({shape})`" in described


def test_sweeps_md_names_the_keys_summary_json_has(tmp_path):
    trainer = SimpleNamespace(is_global_zero=True, callbacks=[])
    keys = set(
        __import__("json").loads(
            write_summary(tmp_path, trainer, torch.nn.Linear(1, 1), {}, 1.0).read_text()
        )
    )
    text = (DOCS / "sweeps.md").read_text()
    paragraph = text[text.index("which `train()` writes at the end of every run") :]
    for key in keys:
        assert f"`{key}`" in paragraph
    assert "`train_examples`" not in text


def test_docs_claim_no_more_reproducibility_than_the_trainer_gives():
    trainer = OmegaConf.load(ROOT / "conf" / "trainer" / "default.yaml")
    readme = (ROOT / "README.md").read_text()
    results = (DOCS / "results.md").read_text()  # the study's reproducibility paragraph
    if not trainer.deterministic:
        assert "the runs are deterministic" not in readme + results
        assert "`trainer.deterministic` is `false`" in results


def test_speed_md_gives_the_shipped_gradual_unfreeze_pace():
    shipped = OmegaConf.load(ROOT / "conf" / "experiment" / "gradual_unfreeze.yaml")
    pace = Fraction(shipped.freezing.every_n_epochs).limit_denominator()
    ordinal = {Fraction(1, 8): "eighth", Fraction(1, 4): "quarter", Fraction(1, 2): "half"}
    speed = (DOCS / "speed.md").read_text()
    assert f"every {ordinal[pace]} of an epoch" in re.sub(r"\s+", " ", speed)
    assert f"`model.layerwise_lr_decay={shipped.model.layerwise_lr_decay}`" in speed
    assert "heads-only epoch" not in speed and "moves the boundary every epoch" not in speed
