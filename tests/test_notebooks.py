"""The notebooks run top to bottom on the testbed and are committed without outputs.

Each notebook runs in a fresh kernel of this interpreter (tens of seconds each on a shared 2-core CPU).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
EXPECTED = {"activation_distributions.ipynb", "compare_quantizers.ipynb"}


def native_kernel() -> KernelManager:
    """A manager for the ``python3`` kernel of the running interpreter.

    With no kernel folders to search, jupyter_client falls back to ipykernel's native spec, whose
    command is ``sys.executable -m ipykernel_launcher``: the notebooks import the ptqsam installed
    here, whatever kernel specs the machine (or the user's home) has installed.
    """
    return KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_the_notebooks_are_there():
    assert {path.name for path in NOTEBOOKS} == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    cells = code_cells(notebook)
    assert cells
    assert all(cell.outputs == [] and cell.execution_count is None for cell in cells), (
        f"{path.name} holds outputs or execution counts: clear them before committing")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom(path: Path, tmp_path: Path):
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, km=native_kernel(), timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(cleanup_kc=True)  # raises CellExecutionError naming the cell on any error

    cells = code_cells(notebook)
    assert all(cell.execution_count is not None for cell in cells)
    outputs = [output for cell in cells for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]
    assert images, f"{path.name} drew no figure"
