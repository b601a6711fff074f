"""docs/notebooks/ runs: each jupytext percent script, read into a notebook, executed cell by
cell in a real Jupyter kernel (nbclient, ipykernel), on a small BUSI subset; and no notebook
keeps outputs in git."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import PROJECT_ROOT

NOTEBOOKS = PROJECT_ROOT / "docs" / "notebooks"
BUSI_COMPARE = NOTEBOOKS / "busi_compare.py"
# What the run in the suite overrides, papermill-style, in a cell after the one tagged
# "parameters": two test images per class, fewer resamples, outputs in the test's folder.
SMALL_RUN = "IMAGES_PER_CLASS = 2\nN_BOOT = 200\nWORK = {work!r}"


def test_notebooks_keep_no_outputs() -> None:
    """Notebooks are percent scripts (outputs have no place in them); an .ipynb that slips in
    must be stripped."""
    import nbformat

    assert BUSI_COMPARE.is_file()
    for path in NOTEBOOKS.glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        kept = [i for i, cell in enumerate(notebook.cells)
                if cell.cell_type == "code" and (cell.outputs or cell.execution_count)]
        assert not kept, f"{path.name}: cells {kept} keep outputs; strip them"


@pytest.mark.slow
@pytest.mark.busi
def test_busi_compare_notebook_runs(busi_root: Path, tmp_path: Path) -> None:
    import jupytext
    import nbformat
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME
    from nbclient import NotebookClient

    notebook = jupytext.read(BUSI_COMPARE)
    [parameters] = [i for i, cell in enumerate(notebook.cells)
                    if "parameters" in cell.metadata.get("tags", [])]
    notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(
        SMALL_RUN.format(work=str(tmp_path)), metadata={"tags": ["injected-parameters"]}))
    # "python3", ipykernel's own spec: jupyter_client starts it with this interpreter (the
    # project's environment), where the notebook imports sonocad.
    client = NotebookClient(notebook, timeout=300, kernel_name=NATIVE_KERNEL_NAME,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # a failing cell raises CellExecutionError with its traceback

    printed = "\n".join(output.get("text", "") for cell in notebook.cells
                        if cell.cell_type == "code" for output in cell.outputs)
    assert "6 of BUSI's 117 test images" in printed
    assert "joined on image_id: 6 images matched" in printed
    assert "lesion Dice, first member - ensemble:" in printed
    assert (tmp_path / "ensemble" / "predictions.csv").is_file()
    assert (tmp_path / "first_member" / "predictions.csv").is_file()
