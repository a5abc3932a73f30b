"""Cost of instrumentation on SAM-B's image encoder at 1024² (random weights, seed 0).

Variants (deep copies of one randomly initialised encoder), timed in interleaved rounds (one
forward of each per round, the order rotated every round), medians reported:
  plain         segment_anything's encoder, untouched
  sited         instrumented (a Site on every quantizable tensor), no quantizer attached
  attached_off  minmax W8A8 quantizers attached to every selected site, all in OFF mode
  w8a8          the same quantizers calibrated on one random image, fake-quantizing
Goals: sited and attached_off within 1.02x of plain, w8a8 within 1.15x.

With ``--baseline DIR`` (a checkout of the code before a change) the same measurement first runs
in a subprocess on that code, then here: the before and after tables of one run (each ratio is
taken inside its own process, from interleaved rounds).

Usage:
  python experiments/benchmarks/bench_instrument_overhead.py                # 3 rounds, CPU
  python experiments/benchmarks/bench_instrument_overhead.py --repeats 5 --device cuda
  python experiments/benchmarks/bench_instrument_overhead.py --threads 1   # on a shared CPU
  python experiments/benchmarks/bench_instrument_overhead.py --repeats 2 --baseline ../main
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from ptqsam.instrument import attach, attached_quantizers, instrument, observing, quantizing, sites
from ptqsam.models import build_model
from trees import tree_environment

IMAGE_SIZE = 1024
GOALS = {"sited": 1.02, "attached_off": 1.02, "w8a8": 1.15}


def timed_forward(encoder: nn.Module, image: torch.Tensor) -> float:
    if image.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    encoder(image)
    if image.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--baseline", help="a checkout of the code before the change: measured first, in a subprocess")
    args = parser.parse_args()
    if args.baseline:
        print("=== before (baseline tree) ===", flush=True)
        subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--device", args.device,
                        "--threads", str(args.threads)], check=True, env=tree_environment(Path(args.baseline)))
        print("\n=== after (this tree) ===", flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    # Every variant is a deep copy of one source, so their weights were allocated alike.
    source = build_model("vit_b", seed=0).image_encoder.to(device)
    plain, sited, quantized = (copy.deepcopy(source) for _ in range(3))
    del source
    instrument(sited)
    attach(quantized, "minmax", 8, 8)
    generator = torch.Generator().manual_seed(0)
    calibration, image = (torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(device) for _ in range(2))

    # name -> (encoder, context manager setting its quantizers' mode)
    variants = {
        "plain": (plain, nullcontext),
        "sited": (sited, nullcontext),
        "attached_off": (quantized, nullcontext),
        "w8a8": (quantized, lambda: quantizing(quantized)),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        start = time.perf_counter()
        with observing(quantized):
            quantized(calibration)
        for quantizer in attached_quantizers(quantized).values():
            quantizer.finalize()
        calibration_s = time.perf_counter() - start
        print(f"SAM-B encoder, {IMAGE_SIZE}², device {device}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; {len(sites(sited))} sites, "
              f"{len(attached_quantizers(quantized))} quantizers (minmax W8A8); calibration {calibration_s:.1f} s")
        with quantizing(quantized):
            reference = plain(image)
            error = (quantized(image) - reference).abs().max().item()
        assert torch.equal(sited(image), reference), "instrumented encoder differs from the original"
        names = list(variants)
        for round_index in range(args.repeats):
            shift = round_index % len(names)
            order = names[shift:] + names[:shift]  # rotated so that no variant always runs first
            for name in order:
                encoder, mode = variants[name]
                with mode():
                    times[name].append(timed_forward(encoder, image))
            print(f"round {round_index + 1} ({', '.join(order)}): "
                  + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))

    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["plain"]
    print(f"\n{'variant':<14}{'median s':>10}{'x plain':>9}")
    for name, median in medians.items():
        print(f"{name:<14}{median:>10.2f}{median / base:>9.3f}")
    print(f"\nw8a8 max |embedding - float embedding| = {error:.4g}")
    for name, goal in GOALS.items():
        ratio = medians[name] / base
        print(f"{name}: {ratio:.3f}x plain -> goal <= {goal}x {'met' if ratio <= goal else 'NOT met'}")


if __name__ == "__main__":
    main()
