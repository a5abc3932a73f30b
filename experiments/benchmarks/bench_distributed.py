"""Images per second of evaluation (and calibration) with 1 and N torchrun processes, side by side.

Each process count runs in one ``torchrun`` launch of this script (gloo on CPU, NCCL + one GPU per
process with ``--device cuda``) on the same images; every process uses ``--threads`` torch threads.
Timed: the evaluation (or the calibration) alone, between two barriers, after the model is built
and the data read. The script also checks that every process count gives the one-process metrics
(and calibrated state) bit for bit.

    python experiments/benchmarks/bench_distributed.py --processes 1,2 --images 8
    python experiments/benchmarks/bench_distributed.py --processes 1,2 --images 8 --calibrate minmax
    # on a machine with 8 GPUs (SAM-B, 200 COCO images):
    python experiments/benchmarks/bench_distributed.py --device cuda --processes 1,8 --model vit_b \\
        --checkpoint checkpoints/sam_vit_b_01ec64.pth --coco data/coco/val2017 \\
        --annotations data/coco/annotations/instances_val2017.json --images 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def worker(args: argparse.Namespace) -> None:
    """One torchrun process: evaluate (or calibrate) and, on rank 0, print the timing and results."""
    import torch

    from ptqsam import distributed
    from ptqsam.calibration import calibrate, calibration_samples
    from ptqsam.data import CocoDataset
    from ptqsam.evaluation.evaluator import evaluate
    from ptqsam.models import build_model

    torch.set_num_threads(args.threads)
    with distributed.process_group():
        dataset = CocoDataset(args.coco, args.annotations)
        ids = dataset.image_ids[: args.images]
        model = build_model(args.model, args.checkpoint, seed=0).to(args.device)
        samples = calibration_samples(dataset, args.images, seed=0) if args.calibrate else []
        distributed.barrier()
        start = time.perf_counter()
        if args.calibrate:
            report = calibrate(model, args.calibrate, 8, 8, samples, progress=False)
            state = b"".join(t.cpu().numpy().tobytes() for q in report.quantizers.values()
                             for t in q.state_dict().values())
            result = {"state_sha256": hashlib.sha256(state).hexdigest()}
        else:
            result = evaluate(model, dataset, ids, progress=False).metrics
        distributed.barrier()
        seconds = time.perf_counter() - start
        if distributed.is_main():
            print(json.dumps({"processes": distributed.world_size(), "seconds": seconds,
                              "images": len(samples) if args.calibrate else len(ids), "result": result}))


def launch(args: argparse.Namespace, processes: int, data: tuple[str, str]) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               __file__, "--worker", "--coco", data[0], "--annotations", data[1]]
    for name in ("images", "threads", "model", "device", "calibrate", "checkpoint"):
        value = getattr(args, name)
        if value:
            command += [f"--{name}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if done.returncode:
        raise SystemExit(f"{processes} process(es) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", default="1,2", help="Process counts to compare (comma-separated).")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="Torch threads per process.")
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--calibrate", default=None, help="Time calibration with this recipe instead (W8A8).")
    parser.add_argument("--coco", default=None, help="Image folder (default: generated images).")
    parser.add_argument("--annotations", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory() as folder:
        if args.coco is None:
            from ptqsam.data import generate_dataset

            generate_dataset(folder, count=args.images, seed=0)
            data = (str(Path(folder) / "images"), str(Path(folder) / "annotations.json"))
        else:
            data = (args.coco, args.annotations)
        runs = [launch(args, int(n), data) for n in args.processes.split(",")]
    task = f"calibration ({args.calibrate})" if args.calibrate else "evaluation"
    print(f"{task} of {runs[0]['images']} images, {args.model} on {args.device}, {args.threads} thread(s) per process")
    print(f"{'processes':>9} {'seconds':>9} {'images/s':>9} {'speed-up':>9}  same result as 1 process")
    for run in runs:
        rate = run["images"] / run["seconds"]
        print(f"{run['processes']:>9} {run['seconds']:>9.2f} {rate:>9.2f} {runs[0]['seconds'] / run['seconds']:>9.2f}"
              f"  {run['result'] == runs[0]['result']}")


if __name__ == "__main__":
    main()
