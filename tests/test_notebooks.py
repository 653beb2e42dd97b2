"""The notebooks run end to end on tiny settings (nbclient), and are stored without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from fake_sweep import make_fake_sweep
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _execute(name: str) -> nbformat.NotebookNode:
    """Run a notebook as Jupyter would: a python3 kernel started in notebooks/."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    resources = {"metadata": {"path": str(NOTEBOOKS)}}
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources).execute()
    return notebook


def _shown(notebook: nbformat.NotebookNode, mime: str) -> list:
    """What the code cells displayed as `mime`, in order."""
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    return [o["data"][mime] for o in outputs if mime in o.get("data", {})]


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_stored_notebooks_have_no_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.subprocess
def test_embeddings_notebook_trains_and_plots(tiny_encoders, tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("MTL_NOTEBOOK_ENCODER", tiny_encoders["bert"])
    monkeypatch.setenv("MTL_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.delenv("MTL_NOTEBOOK_CKPT", raising=False)
    notebook = _execute("01_embeddings.ipynb")
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()  # trained in the notebook
    assert len(_shown(notebook, "image/png")) == 1  # the two heatmaps, one figure


@pytest.mark.subprocess
def test_compare_notebook_reads_a_sweep_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_NOTEBOOK_SWEEP", str(make_fake_sweep(tmp_path / "sweep")))
    notebook = _execute("02_compare.ipynb")
    # Two tasks' validation curves, time against accuracy, trainable parameters per epoch.
    assert len(_shown(notebook, "image/png")) == 4
    (tables,) = _shown(notebook, "text/markdown")
    assert "| 1_only_head_frozen | only_head_frozen |" in tables
