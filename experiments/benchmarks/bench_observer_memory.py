"""Peak memory of each observer while it streams large tensors (goal: < 2x one tensor).

Each observer runs in a fresh subprocess: the tensor is allocated once, the resident set size (RSS)
is recorded as the baseline, then the observer sees it ``--batches`` times (scaled in place by 1.01
between batches, outside the timed region, so batches differ and histogram ranges keep growing).
A thread samples RSS from /proc every few milliseconds; the peak extra memory is the largest sample
(or the kernel's ``ru_maxrss`` high-water mark, when observing raised it) minus the baseline.

Usage:
  python experiments/benchmarks/bench_observer_memory.py                    # every observer, N=100
  python experiments/benchmarks/bench_observer_memory.py --batches 3 --observers mse,kl
  python experiments/benchmarks/bench_observer_memory.py --shape 2,512,512 --granularity channel
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time

import torch

from quantizers.registry import OBSERVERS, build_observer
from quantizers.spec import Granularity, QuantSpec

PAGE_BYTES = resource.getpagesize()


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


class PeakSampler(threading.Thread):
    """Samples RSS until stopped; ``peak`` is the largest value seen."""

    def __init__(self, interval_s: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak = resident_bytes()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, resident_bytes())
            time.sleep(self.interval_s)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, resident_bytes())


def measure(kind: str, shape: tuple[int, ...], batches: int, granularity: str, bits: int) -> dict:
    """Run one observer over ``batches`` copies of a tensor of ``shape``; return the figures."""
    spec = QuantSpec(bits=bits, observer=kind, granularity=Granularity(granularity))
    observer = build_observer(spec)
    x = torch.empty(shape).normal_(generator=torch.Generator().manual_seed(0))
    baseline = resident_bytes()
    high_water_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sampler = PeakSampler()
    sampler.start()
    observe_s = 0.0
    for _ in range(batches):
        start = time.perf_counter()
        observer(x)
        observe_s += time.perf_counter() - start
        x.mul_(1.01)
    start = time.perf_counter()
    scale, _ = observer.calculate_qparams()
    qparams_s = time.perf_counter() - start
    peak = sampler.stop()
    high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if high_water > high_water_before:  # observing set a new high-water mark the sampler may have missed
        peak = max(peak, high_water)
    state = sum(t.numel() * t.element_size() for t in observer.state_dict().values())
    tensor_bytes = x.numel() * x.element_size()
    return {
        "observer": kind,
        "batches": batches,
        "tensor_bytes": tensor_bytes,
        "peak_extra_bytes": peak - baseline,
        "ratio": (peak - baseline) / tensor_bytes,
        "state_bytes": state,
        "s_per_batch": observe_s / batches,
        "qparams_s": qparams_s,
        "groups": int(scale.numel()),
    }


def run_isolated(args: argparse.Namespace, kind: str) -> dict:
    command = [
        sys.executable, __file__, "--worker", kind, "--batches", str(args.batches),
        "--shape", ",".join(map(str, args.shape)), "--granularity", args.granularity, "--bits", str(args.bits),
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    print(f"{'observer':<12}{'batches':>8}{'peak extra MiB':>16}{'x tensor':>10}{'state KiB':>11}"
          f"{'s/batch':>9}{'qparams s':>11}")
    for r in rows:
        print(f"{r['observer']:<12}{r['batches']:>8}{r['peak_extra_bytes'] / 2**20:>16.1f}{r['ratio']:>10.3f}"
              f"{r['state_bytes'] / 2**10:>11.1f}{r['s_per_batch']:>9.2f}{r['qparams_s']:>11.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observers", default=",".join(OBSERVERS), help="comma-separated observer names")
    parser.add_argument("--batches", type=int, default=100, help="tensors fed to each observer (N)")
    parser.add_argument("--shape", default="12,4096,4096", help="tensor shape (default: a SAM-B global attention map)")
    parser.add_argument("--granularity", default="tensor", choices=["tensor", "channel"], help="channel axis is 0")
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.shape = tuple(int(s) for s in args.shape.split(","))
    if args.worker:
        print(json.dumps(measure(args.worker, args.shape, args.batches, args.granularity, args.bits)))
        return
    kinds = [k.strip() for k in args.observers.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(OBSERVERS))
    if unknown:
        parser.error(f"unknown observers {unknown}; choose from {sorted(OBSERVERS)}")
    numel = 1
    for s in args.shape:
        numel *= s
    print(f"shape {args.shape} float32 = {numel * 4 / 2**20:.0f} MiB, granularity {args.granularity}, "
          f"{args.bits} bits, torch threads {torch.get_num_threads()}")
    rows = []
    for kind in kinds:
        rows.append(run_isolated(args, kind))
        print(json.dumps(rows[-1]), flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
