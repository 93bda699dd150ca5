"""The notebooks execute top to bottom on the tiny model (nbclient, kernel python3), from a temporary copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.test_report import tiny_multirun  # noqa: F401  (session fixture shared with the report tests)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_rollout_geometry", "02_contrastive_losses", "03_ablation_report"]


def execute(name: str, workdir: Path) -> nbformat.NotebookNode:
    """Run a copy of notebooks/<name>.ipynb in `workdir`; any cell error fails (CellExecutionError)."""
    copy = workdir / f"{name}.ipynb"
    shutil.copy(NOTEBOOKS / f"{name}.ipynb", copy)
    notebook = nbformat.read(copy, as_version=4)
    client = NotebookClient(notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    finally:
        nbformat.write(notebook, workdir / f"{name}.executed.ipynb")  # kept in tmp for debugging
    return notebook


def images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in notebook.cells for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_saved_clean_and_explains_itself(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    assert notebook.cells[0].cell_type == "markdown" and len(notebook.cells[0].source) > 200
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "save notebooks without outputs"


def test_rollout_geometry_notebook_runs(tmp_path):
    notebook = execute("01_rollout_geometry", tmp_path)
    assert images(notebook) >= 5  # loss curve, PCA, per-prompt PCA, t-SNE, similarity heat maps


def test_contrastive_losses_notebook_runs(tmp_path):
    assert images(execute("02_contrastive_losses", tmp_path)) >= 2


def test_ablation_report_notebook_runs(tmp_path, monkeypatch, tiny_multirun):  # noqa: F811
    monkeypatch.setenv("CLIPO_REPORT_DIR", str(tiny_multirun))  # the kernel inherits the environment
    notebook = execute("03_ablation_report", tmp_path)
    text = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
    assert f"2 runs in {tiny_multirun}" in text
    assert images(notebook) >= 4  # own curves + the report's three PNGs


@pytest.mark.slow
def test_ablation_report_notebook_trains_its_own_multirun_without_a_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("CLIPO_REPORT_DIR", raising=False)
    notebook = execute("03_ablation_report", tmp_path)
    text = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
    assert "2 runs in " in text and "swept: ['loss']" in text
