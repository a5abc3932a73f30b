"""Per-image calibration and evaluation time, and calibration peak memory against float inference.

Each measurement runs in a fresh subprocess on the same generated image(s), so the figures are
side by side in one run. Peak memory is the process's resident-set high-water mark (Linux VmHWM,
reset just before the measured work via /proc/self/clear_refs), minus the resident set right
before the work (model built, images loaded).

    python experiments/benchmarks/bench_calibration.py --model testbed --recipes minmax,ptq4vit,ptq4sam
    python experiments/benchmarks/bench_calibration.py --model vit_b --recipes ptq4sam --images 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(args: argparse.Namespace) -> dict:
    import torch

    from ptqsam.calibration import calibrate, calibration_samples
    from ptqsam.data import CocoDataset
    from ptqsam.evaluation.evaluator import evaluate
    from ptqsam.instrument.modes import quantizing
    from ptqsam.models import build_model

    torch.set_num_threads(args.threads)
    dataset = CocoDataset(Path(args.data) / "images", Path(args.data) / "annotations.json")
    model = build_model(args.model, seed=0)
    samples = calibration_samples(dataset, args.images, seed=0)
    ids = [s.image_id for s in samples]
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    if args.task == "float":
        evaluate(model, dataset, ids, progress=False)
    else:
        calibrate(model, args.task, args.bits, args.bits, samples, progress=False)
        calibrated = time.perf_counter()
        with quantizing(model):
            evaluate(model, dataset, ids, progress=False)
    end = time.perf_counter()
    result = {"task": args.task, "images": len(ids), "prompts": sum(len(s.prompts) for s in samples),
              "peak_extra_mib": (_rss_kib("VmHWM") - before) / 1024}
    if args.task == "float":
        result["eval_s_per_image"] = (end - start) / len(ids)
    else:
        result["calib_s_per_image"] = (calibrated - start) / len(ids)
        result["eval_s_per_image"] = (end - calibrated) / len(ids)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--recipes", default="minmax,ptq4vit,ptq4sam")
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        print(json.dumps(worker(args)))
        return
    from ptqsam.data import generate_dataset
    from ptqsam.models import build_model
    from ptqsam.models.zoo import image_size

    with tempfile.TemporaryDirectory() as tmp:
        size = image_size(build_model(args.model, seed=0))
        generate_dataset(tmp, args.images, seed=0, image_size=size)
        results = []
        for task in ["float"] + args.recipes.split(","):
            command = [sys.executable, __file__, "--model", args.model, "--bits", str(args.bits), "--images",
                       str(args.images), "--threads", str(args.threads), "--task", task, "--data", tmp]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    float_peak = results[0]["peak_extra_mib"]
    print(f"\nmodel {args.model}, {args.images} image(s) of {size}², W{args.bits}A{args.bits}, {args.threads} threads")
    print(f"{'task':<10} {'calib s/img':>12} {'eval s/img':>11} {'peak extra MiB':>15} {'peak / float':>13}")
    for r in results:
        calib = f"{r['calib_s_per_image']:.2f}" if "calib_s_per_image" in r else "-"
        print(f"{r['task']:<10} {calib:>12} {r['eval_s_per_image']:>11.2f} {r['peak_extra_mib']:>15.1f} "
              f"{r['peak_extra_mib'] / float_peak:>13.2f}")


if __name__ == "__main__":
    main()
