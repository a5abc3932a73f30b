"""Fake-quantization speed on one large post-softmax tensor, before and after the fused kernels,
side by side in one run.

Rows: torch's ``fake_quantize_per_{tensor,channel}_affine`` (the references), a ``clone`` (one read
and one write: the memory-bandwidth floor), and for each of our kernels (uniform per tensor, uniform
per channel along axis 1, log τ = 2, twin-uniform softmax) the eager kernels (``before``: what ran
before the fused kernels, still used below their size threshold or without a compiler), the fused
kernel (``after``) and the fused kernel writing into a handed-over input (``overwrite``: what a
probs site does). Goals: uniform ≤ 1.0× torch's op, log and twin ≤ 1.2×, each ≤ 2× a clone.

Every method is warmed up once (the fused kernels compile then: their first-call seconds are
printed), then the methods run in turn (interleaved) ``--repeats`` times; medians are reported.

    python experiments/benchmarks/bench_fake_quant_speed.py --repeats 5            # 12×4096×4096 fp32
    python experiments/benchmarks/bench_fake_quant_speed.py --shape 12 1024 4096   # quicker
    python experiments/benchmarks/bench_fake_quant_speed.py --device cuda --profile 8

``--profile N`` then profiles one more call of each fused kernel (the ``after`` rows) with
``torch.profiler`` and prints its top N entries by own device time: the kernels the compiler
made, their launch counts and the host work around them (what a slow fused kernel on a GPU spends
its time on).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from quantizers.functional.fused import fused_kernels
from quantizers.functional.log import LogGrid, log_fake_quantize
from quantizers.functional.twin import TwinGrid, twin_fake_quantize
from quantizers.functional.uniform import fake_quantize
from quantizers.spec import Granularity

#: method -> (reference row its ratio is taken against, largest acceptable ratio)
GOALS = {
    "uniform per tensor": ("torch per tensor", 1.0),
    "uniform per channel": ("torch per channel", 1.0),
    "log tau=2": ("torch per tensor", 1.2),
    "twin softmax": ("torch per tensor", 1.2),
}
CLONE_GOAL = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[12, 4096, 4096], help="tensor shape (3 dims)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method")
    parser.add_argument("--bits", type=int, default=8, help="bit-width of every quantizer")
    parser.add_argument("--shift", type=int, default=4, help="twin softmax shift m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=int, default=0, help="print this many profiler entries per fused kernel")
    args = parser.parse_args()

    device = torch.device(args.device)
    x = _post_softmax(tuple(args.shape), args.seed, device)
    methods = _methods(x, args.bits, args.shift)
    first_call = {}
    for name, run in methods.items():
        first_call[name] = _timed(run, x)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, run in methods.items():
            times[name].append(_timed(run, x))

    medians = {name: statistics.median(samples) for name, samples in times.items()}
    size_mb = x.numel() * x.element_size() / 1e6
    print(f"shape {tuple(args.shape)} fp32 ({size_mb:.0f} MB) on {device}, {args.bits} bits, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved runs")
    print(f"{'method':36s} {'seconds':>8s} {'x torch':>8s} {'x clone':>8s} {'goal':>10s} {'1st call s':>10s}")
    for name, median in medians.items():
        kernel, _, variant = name.partition(": ")
        reference, goal = GOALS.get(kernel, (None, None))
        ratio = median / medians[reference] if reference else 1.0
        clone = median / medians["clone"]
        verdict = ""
        if goal is not None and variant != "before":
            met = ratio <= goal and clone <= CLONE_GOAL
            verdict = f"<={goal:g} {'met' if met else 'NOT'}"
        print(f"{name:36s} {median:8.3f} {ratio:8.2f} {clone:8.2f} {verdict:>10s} {first_call[name]:10.2f}")
    if args.profile:
        _profile({name: run for name, run in methods.items() if name.endswith(": after")}, x, args.profile)


def _profile(methods: dict[str, Callable[[], object]], x: torch.Tensor, top: int) -> None:
    """One profiled call of each method: its top ``top`` entries by own device (or CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = x.device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    for name, run in methods.items():
        with profile(activities=activities) as prof:
            _timed(run, x)
        print(f"--- {name}: one call, top {top} by {sort}")
        print(prof.key_averages().table(sort_by=sort, row_limit=top))


def _timed(run: Callable[[], object], x: torch.Tensor) -> float:
    if isinstance(run, _HandedOver):
        run.prepare()
    _sync(x)
    start = time.perf_counter()
    result = run()
    _sync(x)
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def _sync(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize()


def _post_softmax(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """Softmax over the last dim of N(0, 4²) logits."""
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 4.0
    return torch.softmax(logits.to(device), dim=-1)


class _HandedOver:
    """Runs ``kernel(copy, overwrite=True)`` on a copy of ``x`` made by :meth:`prepare` (untimed)."""

    def __init__(self, x: torch.Tensor, kernel: Callable[..., torch.Tensor]) -> None:
        self.x, self.kernel, self.copy = x, kernel, None

    def prepare(self) -> None:
        self.copy = self.x.clone()

    def __call__(self) -> torch.Tensor:
        out, self.copy = self.kernel(self.copy, overwrite=True), None
        return out


def _methods(x: torch.Tensor, bits: int, shift: int) -> dict[str, Callable[[], torch.Tensor]]:
    device = x.device
    qmax = 2**bits - 1
    scale = float(x.max()) / qmax
    scale_t, zero_t = torch.tensor([scale], device=device), torch.tensor([0], dtype=torch.int32, device=device)
    channels = x.shape[1]
    channel_scale = (x.amax(dim=(0, 2)) / qmax).clamp(min=1e-8).contiguous()
    channel_zero = torch.zeros(channels, dtype=torch.int32, device=device)
    per_channel = Granularity("channel", axis=1)
    log_grid = LogGrid.build(float(x.max()), 2.0, bits)
    twin_grid = TwinGrid.softmax(bits, shift)
    kernels: dict[str, Callable[..., torch.Tensor]] = {
        "uniform per tensor": lambda t, overwrite=False: fake_quantize(t, scale_t, zero_t, 0, qmax, overwrite=overwrite),
        "uniform per channel": lambda t, overwrite=False: fake_quantize(
            t, channel_scale, channel_zero, 0, qmax, per_channel, overwrite=overwrite),
        "log tau=2": lambda t, overwrite=False: log_fake_quantize(t, log_grid, overwrite=overwrite),
        "twin softmax": lambda t, overwrite=False: twin_fake_quantize(t, twin_grid, overwrite=overwrite),
    }
    methods: dict[str, Callable[[], torch.Tensor]] = {
        "torch per tensor": lambda: torch.fake_quantize_per_tensor_affine(x, scale, 0, 0, qmax),
        "torch per channel": lambda: torch.fake_quantize_per_channel_affine(
            x, channel_scale, channel_zero, 1, 0, qmax),
        "clone": lambda: x.clone(),
    }
    for name, kernel in kernels.items():
        methods[f"{name}: before"] = _eager(kernel, x)
        methods[f"{name}: after"] = lambda kernel=kernel: kernel(x)
        methods[f"{name}: overwrite"] = _HandedOver(x, kernel)
    return methods


def _eager(kernel: Callable[..., torch.Tensor], x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with fused_kernels(enabled=False):
            return kernel(x)
    return run


if __name__ == "__main__":
    main()
