"""Evaluation throughput (images per second) of the float model and of W8A8 ``minmax`` fake
quantization, with the profile's top entries.

Each (model, tree) runs in a fresh subprocess on the same generated images, with two copies of the
model: one float, one calibrated (``minmax`` W8A8, one image) and evaluated quantized. Each
evaluates the images once untimed (warm-up: compilation, caches); then ``--repeats`` rounds time
one float and one quantized pass each, alternated, so that a drift of the machine's speed reaches
both; the table gives medians, the ratio of the medians and each mode's spread (min-max).
``--profile N`` then prints the top N entries of a cProfile of one more pass of each mode by own
time (the model's own compute shows as the torch ops: linear, matmul, softmax, conv...; the rest
is overhead); profiled passes are not timed. With ``--baseline DIR`` every model also runs on a
checkout of the code before a change, first.

    python experiments/benchmarks/bench_eval_throughput.py --models testbed --images 8 --profile 12
    python experiments/benchmarks/bench_eval_throughput.py --models vit_b --images 1 --repeats 2
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from pathlib import Path

from trees import add_tree_arguments, run_worker, serve, trees


def worker(args: argparse.Namespace) -> dict:
    import torch

    from ptqsam.calibration import calibrate, calibration_samples
    from ptqsam.data import CocoDataset
    from ptqsam.evaluation.evaluator import evaluate
    from ptqsam.instrument.modes import quantizing
    from ptqsam.models import build_model

    torch.set_num_threads(args.threads)
    dataset = CocoDataset(Path(args.data) / "images", Path(args.data) / "annotations.json")
    plain = build_model(args.model, seed=0).to(args.device)
    quantized = build_model(args.model, seed=0).to(args.device)
    calibrate(quantized, "minmax", 8, 8, calibration_samples(dataset, 1, seed=0), progress=False)

    def run_quantized() -> None:
        with quantizing(quantized):
            evaluate(quantized, dataset, progress=False)

    runs = {"float": lambda: evaluate(plain, dataset, progress=False), "w8a8": run_quantized}
    for run in runs.values():
        run()  # warm-up
    seconds: dict[str, list[float]] = {mode: [] for mode in runs}
    for _ in range(args.repeats):
        for mode, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[mode].append(time.perf_counter() - start)
    result = {"model": args.model, "images": len(dataset.image_ids)}
    for mode, run in runs.items():
        result[mode] = {"seconds": statistics.median(seconds[mode]), "min": min(seconds[mode]),
                        "max": max(seconds[mode])}
        if args.profile:
            result[mode]["profile"] = _profile(run, args.profile)
    return result


def _profile(run, entries: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(entries)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="testbed,vit_b")
    parser.add_argument("--images", type=int, default=4, help="images per model (SAM-B: 1 or 2 on a CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (one pass of each mode per round)")
    parser.add_argument("--profile", type=int, default=0, help="print this many top profile entries")
    parser.add_argument("--model", help=argparse.SUPPRESS)
    add_tree_arguments(parser)
    args = parser.parse_args()
    if serve(worker, args, args.model):
        return
    from ptqsam.data import generate_dataset
    from ptqsam.models import build_model
    from ptqsam.models.zoo import image_size

    rows = []
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            generate_dataset(tmp, args.images, seed=0, image_size=image_size(build_model(model, seed=0)))
            for label, tree in trees(args.baseline):
                result = run_worker(__file__, tree, ["--model", model, "--data", tmp, "--threads", str(args.threads),
                                                     "--device", args.device, "--profile", str(args.profile),
                                                     "--repeats", str(args.repeats)])
                for mode in ("float", "w8a8"):
                    rows.append((model, label, mode, result["images"], result[mode]))
                    if args.profile:
                        print(f"--- {model} {mode} ({label}): top {args.profile} by own time\n{result[mode]['profile']}")
    print(f"\n{args.threads} threads, device {args.device}, medians of {args.repeats} rounds")
    print(f"{'model':<8} {'tree':<7} {'mode':<6} {'images':>6} {'seconds':>8} {'min':>7} {'max':>7} "
          f"{'images/s':>9} {'x float':>8}")
    floats = {(m, t): timing["seconds"] for m, t, mode, _, timing in rows if mode == "float"}
    for model, label, mode, images, timing in rows:
        seconds = timing["seconds"]
        print(f"{model:<8} {label:<7} {mode:<6} {images:>6} {seconds:>8.2f} {timing['min']:>7.2f} {timing['max']:>7.2f} "
              f"{images / seconds:>9.3f} {seconds / floats[model, label]:>8.2f}")


if __name__ == "__main__":
    main()
