"""``python -m ptqsam`` and ``torchrun -m ptqsam``: one process and two give the same files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from distributed_workers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, processes: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m ptqsam ARGS``, or under ``torchrun`` with ``processes`` processes (one thread each)."""
    launcher = [sys.executable, "-m", "ptqsam"] if processes is None else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
        f"--master_port={free_port()}", "-m", "ptqsam"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PTQSAM_DIST_TIMEOUT": "120"}
    return subprocess.run(launcher + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_python_dash_m_runs_the_cli(tmp_path):
    done = _run(["--version"], tmp_path)
    assert done.returncode == 0 and "ptqsam" in done.stdout


def _sweep_config(tmp_path: Path, out: Path, device: str = "cpu") -> Path:
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(f"recipes: [minmax]\nbits: [W4A4]\nsynthetic_images: 5\ncalib_images: 3\n"
                    f"device: {device}\nout: {out}\n")
    return path


def _same_cells(one: Path, two: Path) -> list[str]:
    """The names of the cell files of two sweeps, after checking that they hold the same records
    (apart from times and paths under each results folder)."""
    cells = sorted(p.name for p in (one / "cells").iterdir())
    assert cells == sorted(p.name for p in (two / "cells").iterdir())
    for name in cells:
        a, b = (json.loads((root / "cells" / name).read_text()) for root in (one, two))
        for record in (a, b):
            record.pop("seconds")
            for run in record.get("runs", []):
                run["calibration"].pop("seconds")
                run["calibration"].pop("state"), run["calibration"].pop("images_dir")
        assert a == b  # metrics, per-instance IoUs, masks, fingerprints
    return cells


def test_torchrun_sweep_writes_the_one_process_cells(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    first = _run(["sweep", str(_sweep_config(tmp_path, one))], tmp_path)
    assert first.returncode == 0, first.stderr
    second = _run(["sweep", str(_sweep_config(tmp_path, two))], tmp_path, processes=2)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("| minmax") == 1  # printed once, by rank 0
    cells = _same_cells(one, two)
    assert len(cells) == 2
    written = {name: (two / "cells" / name).stat().st_mtime_ns for name in cells}
    again = _run(["sweep", str(_sweep_config(tmp_path, two))], tmp_path, processes=2)  # a re-run resumes: nothing recomputed
    assert again.returncode == 0, again.stderr
    assert {name: (two / "cells" / name).stat().st_mtime_ns for name in cells} == written


@pytest.mark.cuda
def test_torchrun_on_cuda_uses_nccl_and_writes_the_one_process_cells(tmp_path):
    """One GPU: ``torchrun`` with one process joins the group a CUDA machine gets (gloo for CPU
    tensors, NCCL for CUDA ones) and writes the cells that a plain process writes on the device."""
    one, two = tmp_path / "one", tmp_path / "two"
    for out, processes in ((one, None), (two, 1)):
        launched = _run(["sweep", str(_sweep_config(tmp_path, out, "cuda"))], tmp_path, processes)
        assert launched.returncode == 0, launched.stderr
    assert len(_same_cells(one, two)) == 2
