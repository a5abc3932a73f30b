"""Evaluation throughput (images per second) of the float model and of W8A8 ``minmax`` fake
quantization, with the profile's top entries.

Each (model, tree) runs in a fresh subprocess on the same generated images: the float model
evaluates them once untimed (warm-up: compilation, caches), then timed; the same model is then
calibrated (``minmax`` W8A8, one image) and evaluated quantized, warm-up and timed. ``--profile``
prints the top entries of a cProfile of each timed evaluation by own time (the model's own compute
shows as the torch ops: linear, matmul, softmax, conv...; the rest is overhead). With
``--baseline DIR`` every model also runs on a checkout of the code before a change, first.

    python experiments/benchmarks/bench_eval_throughput.py --models testbed --images 8 --profile
    python experiments/benchmarks/bench_eval_throughput.py --models vit_b --images 1
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
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
    model = build_model(args.model, seed=0).to(args.device)
    result = {"model": args.model, "images": len(dataset.image_ids)}
    result["float"] = _timed_evaluation(lambda: evaluate(model, dataset, progress=False), args.profile)
    calibrate(model, "minmax", 8, 8, calibration_samples(dataset, 1, seed=0), progress=False)
    with quantizing(model):
        result["w8a8"] = _timed_evaluation(lambda: evaluate(model, dataset, progress=False), args.profile)
    return result


def _timed_evaluation(run, profile: int) -> dict:
    run()  # warm-up
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    run()
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - start
    entry = {"seconds": seconds}
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(profile)
        entry["profile"] = text.getvalue()
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="testbed,vit_b")
    parser.add_argument("--images", type=int, default=4, help="images per model (SAM-B: 1 or 2 on a CPU)")
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
                                                     "--device", args.device, "--profile", str(args.profile)])
                for mode in ("float", "w8a8"):
                    rows.append((model, label, mode, result["images"], result[mode]["seconds"]))
                    if args.profile:
                        print(f"--- {model} {mode} ({label}): top {args.profile} by own time\n{result[mode]['profile']}")
    print(f"\n{args.threads} threads, device {args.device}")
    print(f"{'model':<8} {'tree':<7} {'mode':<6} {'images':>6} {'seconds':>8} {'images/s':>9} {'x float':>8}")
    floats = {(m, t): s for m, t, mode, _, s in rows if mode == "float"}
    for model, label, mode, images, seconds in rows:
        print(f"{model:<8} {label:<7} {mode:<6} {images:>6} {seconds:>8.2f} {images / seconds:>9.3f} "
              f"{seconds / floats[model, label]:>8.2f}")


if __name__ == "__main__":
    main()
