"""Every tutorial notebook runs top to bottom, offline, on CPU (so none can rot)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "tutorials").glob("*.ipynb"))


def test_there_are_at_least_five_tutorials():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_runs(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    # Runs in a scratch directory: tutorials may save files (masks, reports).
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if "pretrained" not in path.stem:  # the others draw plots
        assert any("image/png" in o.get("data", {}) for o in outputs)
