"""The notebooks run top to bottom on the testbed and are committed without outputs; their executed
copies (``notebooks/executed/``, written by ``notebooks/execute.py``) hold the same cells.

Each notebook runs in a fresh kernel of this interpreter (tens of seconds each on a shared 2-core CPU).
"""

from __future__ import annotations

import base64
import importlib.util
import io
from pathlib import Path

import pytest

pytest.importorskip("nbclient", reason="the notebook tests need the test extras (pip install -e '.[test]')")
import nbformat  # noqa: E402  (the test extras: nbclient and nbformat come together)
from matplotlib import pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "notebooks" / "execute.py"
_spec = importlib.util.spec_from_file_location("execute_notebooks", SCRIPT)
execute_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute_notebooks)

NOTEBOOKS = execute_notebooks.notebooks()
EXPECTED = {"activation_distributions.ipynb", "compare_quantizers.ipynb"}
#: the largest executed copy committed (its figures are scaled down and palette-encoded)
MAX_COPY_BYTES = 400_000


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


def assert_ran(notebook: nbformat.NotebookNode, name: str) -> None:
    """Every code cell of ``notebook`` executed, none failed, and it drew a figure."""
    cells = code_cells(notebook)
    assert all(cell.execution_count is not None for cell in cells), name
    outputs = [output for cell in cells for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"], name
    images = [o for o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]
    assert images, f"{name} drew no figure"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom(path: Path, tmp_path: Path):
    assert_ran(execute_notebooks.execute(path, tmp_path), path.name)  # raises CellExecutionError on any error


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_executed_copy_holds_the_same_cells(path: Path):
    copy = execute_notebooks.executed_path(path)
    assert copy.is_file(), f"no executed copy of {path.name}: run `python notebooks/execute.py`"
    executed, source = nbformat.read(copy, as_version=4), nbformat.read(path, as_version=4)
    nbformat.validate(executed)
    assert [(c.cell_type, c.source) for c in executed.cells] == [(c.cell_type, c.source) for c in source.cells], (
        f"{copy} is stale: run `python notebooks/execute.py` and commit the copies")
    assert_ran(executed, copy.name)
    assert copy.stat().st_size <= MAX_COPY_BYTES, f"{copy} is {copy.stat().st_size} bytes"


def test_every_executed_copy_has_a_source():
    copies = {path.name for path in execute_notebooks.EXECUTED.glob("*.ipynb")}
    assert copies == {path.name for path in NOTEBOOKS}


def test_a_figure_is_made_small(tmp_path: Path):
    fig, ax = plt.subplots(figsize=(12, 5), dpi=150)
    ax.plot(range(100), [i * i for i in range(100)])
    fig.savefig(tmp_path / "figure.png")
    plt.close(fig)
    data = base64.b64encode((tmp_path / "figure.png").read_bytes()).decode("ascii")
    small = execute_notebooks.small_png(data)
    image = Image.open(io.BytesIO(base64.b64decode(small)))
    assert image.width == execute_notebooks.MAX_WIDTH and image.mode == "P" and len(small) < len(data)
