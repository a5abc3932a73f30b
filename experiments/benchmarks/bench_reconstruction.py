"""Block reconstruction: peak memory against float inference, and seconds per iteration per block.

Two fresh subprocesses on the same generated images, so the figures are side by side in one run:
``float`` evaluates the float model on the images; ``reconstruct`` calibrates the base recipe
(statistics only), then reconstructs (by default every block; ``--blocks`` names a subset, e.g. one
windowed and one global ViT block, the neck and the decoder layers, whose peak is the largest of
the model's). Peak memory is the resident-set high-water mark (Linux VmHWM, reset with
/proc/self/clear_refs right before the measured work) minus the resident set at that moment.

    python experiments/benchmarks/bench_reconstruction.py --model testbed --iterations 200
    python experiments/benchmarks/bench_reconstruction.py --model vit_b --images 2 --iterations 50 \\
        --blocks image_encoder.blocks.0,image_encoder.blocks.2,image_encoder.neck,mask_decoder.transformer.layers.0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"{field} not in /proc/self/status")


def worker(args: argparse.Namespace) -> dict:
    import torch

    from ptqsam.calibration import calibrate, calibration_samples
    from ptqsam.data import CocoDataset
    from ptqsam.evaluation.evaluator import evaluate
    from ptqsam.instrument import load_recipe
    from ptqsam.models import build_model
    from ptqsam.reconstruction.reconstruct import reconstruct

    torch.set_num_threads(args.threads)
    dataset = CocoDataset(Path(args.data) / "images", Path(args.data) / "annotations.json")
    model = build_model(args.model, seed=0)
    samples = calibration_samples(dataset, args.images, seed=0)
    if args.task == "reconstruct":
        recipe = load_recipe(args.recipe)
        base = recipe.__class__.from_dict({**recipe.to_dict(), "reconstruction": None})
        calibrate(model, base, args.bits, args.bits, samples, progress=False)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    result: dict = {"task": args.task}
    if args.task == "float":
        with torch.inference_mode():
            evaluate(model, dataset, [s.image_id for s in samples], progress=False)
    else:
        config = recipe.reconstruction_config().with_overrides({"iterations": args.iterations})
        only = args.blocks.split(",") if args.blocks else None
        records = reconstruct(model, samples, config, progress=False, only=only)
        result["blocks"] = {name: {"seconds_per_iteration": r["seconds_per_iteration"], "seconds": r["seconds"],
                                   "mse_before": r["mse_before"], "mse_after": r["mse_after"]}
                            for name, r in records.items()}
    result.update(seconds=round(time.perf_counter() - start, 2), peak_extra_mib=(_status_kib("VmHWM") - before) / 1024)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--recipe", default="qdrop", help="a reconstruction recipe")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--blocks", default="", help="comma-separated block names (default: every block)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--task", choices=("float", "reconstruct"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        print(json.dumps(worker(args)))
        return
    from ptqsam.data import generate_dataset
    from ptqsam.models import build_model

    size = build_model(args.model).image_encoder.img_size
    with tempfile.TemporaryDirectory() as folder:
        generate_dataset(folder, count=args.images, seed=7, image_size=size)
        results = {}
        for task in ("float", "reconstruct"):
            command = [sys.executable, __file__, *sys.argv[1:], "--task", task, "--data", folder]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[task] = json.loads(output.strip().splitlines()[-1])
    ratio = results["reconstruct"]["peak_extra_mib"] / results["float"]["peak_extra_mib"]
    print(f"{args.model}, {args.images} images, {args.recipe} W{args.bits}A{args.bits}, "
          f"{args.iterations} iterations per block, {args.threads} threads")
    print(f"peak memory above the loaded model: float inference {results['float']['peak_extra_mib']:.0f} MiB, "
          f"reconstruction {results['reconstruct']['peak_extra_mib']:.0f} MiB, ratio {ratio:.2f}")
    print(f"{'block':<55} {'s/iteration':>12} {'s (with caching)':>17} {'MSE before':>11} {'MSE after':>11}")
    for name, block in results["reconstruct"]["blocks"].items():
        print(f"{name:<55} {block['seconds_per_iteration']:>12.4f} {block['seconds']:>17.1f} "
              f"{block['mse_before']:>11.3e} {block['mse_after']:>11.3e}")


if __name__ == "__main__":
    main()
