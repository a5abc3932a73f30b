"""experiments/benchmarks/gpu_check.py: one table of every step, a step past the budget killed with
its subprocesses, and a clear stop where there is no CUDA device."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "benchmarks" / "gpu_check.py"


@pytest.fixture
def gpu_check(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "MIN_STEP_SECONDS", 1)
    return module


def test_steps_run_on_the_chosen_device_and_a_late_step_is_killed(gpu_check, monkeypatch, capsys, tmp_path):
    child = tmp_path / "child.pid"
    monkeypatch.setattr(gpu_check, "STEPS", [
        ("quick", ["-c", "import sys; print('ran on', sys.argv[1])", "{device}"], 1),
        ("slow", ["-c", "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
                        f"'import time; time.sleep(60)']); open({str(child)!r}, 'w').write(str(p.pid)); "
                        "time.sleep(60)"], 1),
        ("skipped one", ["-c", "pass"], 1),
    ])
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--device", "cpu", "--budget", "6", "--skip", "skipped"])
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 1  # a step timed out
    assert "ran on cpu" in out
    rows = {line.split()[0]: line.split()[-2:] for line in out.splitlines()[-3:]}
    assert rows["quick"][0] == "0" and rows["slow"][0] == "timeout" and rows["skipped"][0] == "skipped"
    assert _dies(int(child.read_text()))


def _dies(pid: int, seconds: float = 10.0) -> bool:
    """Whether process ``pid`` is gone (or a zombie) within ``seconds``: a SIGKILL takes effect when
    the process is next scheduled, which on a loaded machine is not at once."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_without_cuda_it_stops_at_once_with_one_line(gpu_check, monkeypatch):
    monkeypatch.setattr(gpu_check, "_cuda_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    with pytest.raises(SystemExit, match="no CUDA device here"):
        gpu_check.main()
