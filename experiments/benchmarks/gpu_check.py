"""GPU check: the CUDA-marked tests and every benchmark on CUDA, within a time budget, one table.

Run from the repository root on a machine with a CUDA device (the first run compiles the fused
Triton kernels; later runs load them from Inductor's cache)::

    python experiments/benchmarks/gpu_check.py                 # 10-minute budget
    python experiments/benchmarks/gpu_check.py --budget 300 --skip vit_b
    python experiments/benchmarks/gpu_check.py --device cpu --budget 120 --skip vit_b,calibration  # the script itself

Each step runs in its own process with what is left of the budget as its timeout (a step that
would start with under 20 s left is skipped). The output is the summary table of every step
(its last lines), then one status table: step, exit status, seconds. Without a CUDA device,
``--device cuda`` (the default) stops at once with one line; ``--device cpu`` runs the same steps
on the CPU (slow: a check of the script, with a small budget).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = "experiments/benchmarks"
MIN_STEP_SECONDS = 20

#: (name, command, lines of its output's tail to show); {device} is replaced by ``--device``
STEPS = [
    ("cuda tests", ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests"], 3),
    ("kernels", [f"{BENCH}/bench_fake_quant_speed.py", "--device", "{device}", "--repeats", "5", "--profile", "6"], 80),
    ("agq", [f"{BENCH}/bench_agq.py", "--device", "{device}"], 4),
    ("overhead vit_b", [f"{BENCH}/bench_instrument_overhead.py", "--device", "{device}", "--repeats", "5"], 12),
    ("calibration testbed", [f"{BENCH}/bench_calibration.py", "--device", "{device}", "--model", "testbed",
                             "--recipes", "minmax,ptq4vit,ptq4sam", "--images", "1"], 7),
    ("calibration vit_b", [f"{BENCH}/bench_calibration.py", "--device", "{device}", "--model", "vit_b",
                           "--recipes", "ptq4sam", "--images", "1", "--agq-numel", "4194304"], 6),
    ("throughput", [f"{BENCH}/bench_eval_throughput.py", "--device", "{device}", "--models", "testbed,vit_b",
                    "--images", "2"], 7),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=600, help="seconds for everything (default 600)")
    parser.add_argument("--skip", default="", help="comma-separated words: steps whose name has one are skipped")
    parser.add_argument("--device", default="cuda", help="device of the benchmarks (default cuda)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not _cuda_available():
        sys.exit("gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
                 "--device cpu runs the steps on the CPU")
    skipped = [word for word in args.skip.split(",") if word]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    deadline = time.monotonic() + args.budget
    status = []
    for name, template, tail in STEPS:
        command = [part.replace("{device}", args.device) for part in template]
        left = deadline - time.monotonic()
        if any(word in name for word in skipped) or left < MIN_STEP_SECONDS:
            status.append((name, "skipped", 0.0))
            continue
        start = time.monotonic()
        code, output = _run_step(command, env, left)
        seconds = time.monotonic() - start
        status.append((name, code, seconds))
        lines = [line for line in output.splitlines() if line.strip() and "Warning" not in line]
        print(f"=== {name} ({code}, {seconds:.0f} s): {' '.join(command)}")
        print("\n".join(lines[-tail:]), flush=True)
    print(f"\n{'step':<22} {'status':>8} {'seconds':>8}")
    for name, code, seconds in status:
        print(f"{name:<22} {code:>8} {seconds:>8.0f}")
    sys.exit(0 if all(code in ("0", "skipped") for _, code, _ in status) else 1)


def _run_step(command: list[str], env: dict[str, str], timeout: float) -> tuple[str, str]:
    """Exit status (or "timeout") and output of one step; on timeout its whole process group is
    killed (the benchmarks run their measurements in subprocesses of their own)."""
    process = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        return str(process.returncode), output
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return "timeout", output or ""


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
