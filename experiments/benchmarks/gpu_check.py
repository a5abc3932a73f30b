"""GPU check: the CUDA-marked tests and every benchmark on CUDA, within a time budget, one table.

Run from the repository root on a machine with a CUDA device (the first run compiles the fused
Triton kernels; later runs load them from Inductor's cache)::

    python experiments/benchmarks/gpu_check.py                 # 10-minute budget
    python experiments/benchmarks/gpu_check.py --budget 300 --skip vit_b

Each step runs in its own process with what is left of the budget as its timeout (a step that
would start with under 20 s left is skipped). The output is the summary table of every step
(its last lines), then one status table: step, exit status, seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = "experiments/benchmarks"
MIN_STEP_SECONDS = 20

#: (name, command, lines of its output's tail to show)
STEPS = [
    ("cuda tests", ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests"], 3),
    ("kernels", [f"{BENCH}/bench_fake_quant_speed.py", "--device", "cuda", "--repeats", "5"], 16),
    ("overhead vit_b", [f"{BENCH}/bench_instrument_overhead.py", "--device", "cuda", "--repeats", "5"], 12),
    ("calibration testbed", [f"{BENCH}/bench_calibration.py", "--device", "cuda", "--model", "testbed",
                             "--recipes", "minmax,ptq4vit,ptq4sam", "--images", "2"], 7),
    ("calibration vit_b", [f"{BENCH}/bench_calibration.py", "--device", "cuda", "--model", "vit_b",
                           "--recipes", "ptq4sam", "--images", "1", "--agq-rows", "512"], 6),
    ("throughput", [f"{BENCH}/bench_eval_throughput.py", "--device", "cuda", "--models", "testbed,vit_b",
                    "--images", "2"], 7),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=600, help="seconds for everything (default 600)")
    parser.add_argument("--skip", default="", help="comma-separated words: steps whose name has one are skipped")
    args = parser.parse_args()
    skipped = [word for word in args.skip.split(",") if word]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    deadline = time.monotonic() + args.budget
    status = []
    for name, command, tail in STEPS:
        left = deadline - time.monotonic()
        if any(word in name for word in skipped) or left < MIN_STEP_SECONDS:
            status.append((name, "skipped", 0.0))
            continue
        start = time.monotonic()
        try:
            done = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=left)
            code, output = str(done.returncode), done.stdout + done.stderr
        except subprocess.TimeoutExpired as expired:
            code, output = "timeout", _text(expired.stdout) + _text(expired.stderr)
        seconds = time.monotonic() - start
        status.append((name, code, seconds))
        lines = [line for line in output.splitlines() if line.strip() and "Warning" not in line]
        print(f"=== {name} ({code}, {seconds:.0f} s): {' '.join(command)}")
        print("\n".join(lines[-tail:]), flush=True)
    print(f"\n{'step':<22} {'status':>8} {'seconds':>8}")
    for name, code, seconds in status:
        print(f"{name:<22} {code:>8} {seconds:>8.0f}")
    sys.exit(0 if all(code in ("0", "skipped") for _, code, _ in status) else 1)


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


if __name__ == "__main__":
    main()
