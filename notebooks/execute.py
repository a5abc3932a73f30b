"""Regenerate the executed copies of the notebooks, for reading without running them.

    python notebooks/execute.py            # every notebook -> notebooks/executed/<name>.ipynb

Each notebook runs top to bottom in a fresh kernel of this interpreter, in a temporary working
folder (as ``tests/test_notebooks.py`` runs them); the copy keeps the outputs, without timings,
with its figures scaled to at most 1000 pixels wide and re-encoded as palette PNGs (tens of kB each, so GitHub renders the copy and
the repository stays small). ``tests/test_notebooks.py`` checks that every copy holds the cells of
its source notebook: change a notebook, run this script, commit both.
"""

from __future__ import annotations

import base64
import io
import sys
import tempfile
from pathlib import Path

import nbformat
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from PIL import Image

FOLDER = Path(__file__).resolve().parent
EXECUTED = FOLDER / "executed"
#: colours of a re-encoded figure (line plots and histograms need far fewer than 256)
PALETTE_COLOURS = 64
#: widest figure kept (wider ones are scaled down: GitHub shows a notebook about this wide)
MAX_WIDTH = 1000


def notebooks() -> list[Path]:
    """The source notebooks, by name."""
    return sorted(FOLDER.glob("*.ipynb"))


def executed_path(path: Path) -> Path:
    """Where the executed copy of notebook ``path`` goes."""
    return EXECUTED / path.name


def native_kernel() -> KernelManager:
    """A manager for the ``python3`` kernel of the running interpreter.

    With no kernel folders to search, jupyter_client falls back to ipykernel's native spec, whose
    command is ``sys.executable -m ipykernel_launcher``: the notebooks import the ptqsam installed
    here, whatever kernel specs the machine (or the user's home) has installed.
    """
    return KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))


def execute(path: Path, workdir: Path) -> nbformat.NotebookNode:
    """Notebook ``path`` run top to bottom in a fresh kernel with ``workdir`` as its working folder
    (raises CellExecutionError naming the cell on any error)."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, km=native_kernel(), timeout=300, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(cleanup_kc=True)
    return notebook


def small_png(data: str) -> str:
    """A base64 PNG at most :data:`MAX_WIDTH` wide, re-encoded with :data:`PALETTE_COLOURS` colours."""
    image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    if image.width > MAX_WIDTH:
        image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.quantize(PALETTE_COLOURS, method=Image.Quantize.FASTOCTREE).save(out, format="PNG", optimize=True)
    return base64.b64encode(out.getvalue()).decode("ascii")


def readable_copy(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``notebook`` (executed) with its figures made small, in place."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                output.data["image/png"] = small_png(output.data["image/png"])
    return notebook


def main() -> None:
    EXECUTED.mkdir(exist_ok=True)
    for path in notebooks():
        with tempfile.TemporaryDirectory() as workdir:
            notebook = readable_copy(execute(path, Path(workdir)))
        target = executed_path(path)
        nbformat.write(notebook, target)
        print(f"{target.relative_to(FOLDER.parent)}: {target.stat().st_size // 1024} kB", file=sys.stderr)


if __name__ == "__main__":
    main()
