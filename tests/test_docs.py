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
    assert f"`model.layerwise_lr_decay` {shipped.model.layerwise_lr_decay:.3g}" in speed
    assert "heads-only epoch" not in speed and "moves the boundary every epoch" not in speed


def test_the_readme_is_a_front_page_with_its_license():
    """Issue 23, item 26: the two commands, the scenarios (start with full_finetune), your own
    data, the latest verdict, the layout; logs and history live in docs/; the LICENSE it names."""
    readme = (ROOT / "README.md").read_text()
    sections = re.findall(r"^## (.+)$", readme, flags=re.M)
    for wanted in ("Two commands", "The scenarios", "Your own data", "Latest verdict"):
        assert wanted in sections
    assert "Layout" in sections and "License" in sections
    assert "full_finetune" in readme.split("## The scenarios")[1].split("## ")[0]
    assert len(readme.splitlines()) < 160  # a front page, not the manual
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()


def test_every_measured_number_in_the_readme_says_when_where_and_how():
    """Issue 23, item 27: a paragraph of the README with a measured score (0.xyz) or time
    (1h30m33s) gives the date, the commit and the command that measured it."""
    readme = (ROOT / "README.md").read_text()
    measured = re.compile(r"\b0\.\d{3}\b|\b\d+h\d+m\d+s\b|\b\d+m\d+s\b")
    for paragraph in readme.split("\n\n"):
        if measured.search(paragraph) and not paragraph.lstrip().startswith("```"):
            assert re.search(r"\b20\d\d-\d\d-\d\d\b", paragraph), paragraph[:120]
            assert re.search(r"\bcommit [0-9a-f]{7,40}\b", paragraph), paragraph[:120]
            assert re.search(r"`(make|python) [^`]+`", paragraph), paragraph[:120]
