"""Fake-quantization speed on one large post-softmax tensor, side by side in one run.

Times ``torch.fake_quantize_per_tensor_affine`` (the reference), our uniform per-tensor
``fake_quantize`` (goal: within 1.5x of torch), the log quantizer at τ = 2 (goal: 3x) and the
post-softmax twin-uniform quantizer (goal: 3x). Each method is warmed up once, then the methods
run in turn (interleaved) ``--repeats`` times; the table shows median seconds and the ratio to
torch's median.

Example (the SAM-B global attention map, 805 MB in fp32)::

    python experiments/benchmarks/bench_fake_quant_speed.py --shape 12 4096 4096 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from quantizers.functional.log import LogGrid, log_fake_quantize
from quantizers.functional.twin import TwinGrid, twin_fake_quantize
from quantizers.functional.uniform import fake_quantize

#: Largest acceptable ratio to torch's time.
GOALS = {
    "torch fake_quantize_per_tensor_affine": None,
    "uniform fake_quantize": 1.5,
    "log tau=2": 3.0,
    "twin softmax": 3.0,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[12, 4096, 4096], help="tensor shape")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method")
    parser.add_argument("--bits", type=int, default=8, help="bit-width of every quantizer")
    parser.add_argument("--shift", type=int, default=4, help="twin softmax shift m")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x = _post_softmax(tuple(args.shape), args.seed)
    methods = _methods(x, args.bits, args.shift)
    for run in methods.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            result = run()
            times[name].append(time.perf_counter() - start)
            del result

    size_mb = x.numel() * x.element_size() / 1e6
    print(f"shape {tuple(args.shape)} fp32 ({size_mb:.0f} MB), {args.bits} bits, "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats}")
    reference = statistics.median(times["torch fake_quantize_per_tensor_affine"])
    print(f"{'method':40s} {'seconds':>9s} {'ratio':>7s} {'goal':>6s}")
    for name, samples in times.items():
        median = statistics.median(samples)
        goal = GOALS[name]
        print(f"{name:40s} {median:9.3f} {median / reference:7.2f} {'' if goal is None else f'<={goal:g}':>6s}")


def _post_softmax(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Softmax over the last dim of N(0, 4²) logits."""
    return torch.softmax(torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 4.0, dim=-1)


def _methods(x: torch.Tensor, bits: int, shift: int) -> dict[str, Callable[[], torch.Tensor]]:
    top = float(x.max())
    qmax = 2**bits - 1
    scale = top / qmax
    log_grid = LogGrid.build(top, 2.0, bits)
    twin_grid = TwinGrid.softmax(bits, shift)
    return {
        "torch fake_quantize_per_tensor_affine": lambda: torch.fake_quantize_per_tensor_affine(x, scale, 0, 0, qmax),
        "uniform fake_quantize": lambda: fake_quantize(x, torch.tensor([scale]), torch.tensor([0]), 0, qmax),
        "log tau=2": lambda: log_fake_quantize(x, log_grid),
        "twin softmax": lambda: twin_fake_quantize(x, twin_grid),
    }


if __name__ == "__main__":
    main()
