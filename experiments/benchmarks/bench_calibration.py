"""Per-image calibration and evaluation time, and calibration peak memory against float inference.

Each measurement runs in a fresh subprocess on the same generated image(s), so the figures are
side by side in one run. With ``--baseline DIR`` (a checkout of the code before a change), every
task also runs with ``DIR`` first on ``PYTHONPATH``, right before the same task on this tree: a
before/after table from one run. ``--agq-numel N`` adds the ``ptq4sam`` recipe with its AGQ search
sampled to N map elements (``search_numel``; 0: every row, the exhaustive search), on this tree only.

Peak memory is the process's resident-set high-water mark (Linux VmHWM, reset just before the
measured work via /proc/self/clear_refs), minus the resident set right before the work (model
built, images loaded). ``calib x float`` is calibration seconds per image over float inference
seconds per image of the same tree.

    python experiments/benchmarks/bench_calibration.py --model testbed --recipes minmax,ptq4vit,ptq4sam
    python experiments/benchmarks/bench_calibration.py --model vit_b --recipes ptq4sam --images 1 --agq-numel 4194304
    python experiments/benchmarks/bench_calibration.py --model testbed --recipes ptq4vit --baseline ../main
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from trees import add_tree_arguments, run_worker, serve, trees

SAMPLED = "ptq4sam-numel"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _recipe(task: str):
    """A shipped recipe by name; ``ptq4sam-numelN``: ptq4sam with ``search_numel: N`` on its log quantizer
    (0: None, every row)."""
    if not task.startswith(SAMPLED):
        return task
    from ptqsam.instrument.recipe import Recipe, load_recipe

    data = load_recipe("ptq4sam").to_dict()
    for rule in data["rules"]:
        if rule["spec"].get("quantizer") == "log":
            rule["spec"].setdefault("quantizer_options", {})["search_numel"] = int(task[len(SAMPLED):]) or None
    return Recipe.from_dict(data)


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
    samples = calibration_samples(dataset, args.images, seed=0)
    ids = [s.image_id for s in samples]
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    seconds = {}
    if args.task == "float":
        evaluate(model, dataset, ids, progress=False)
    else:
        report = calibrate(model, _recipe(args.task), args.bits, args.bits, samples, progress=False)
        seconds = report.seconds
        calibrated = time.perf_counter()
        with quantizing(model):
            evaluate(model, dataset, ids, progress=False)
    end = time.perf_counter()
    result = {"task": args.task, "images": len(ids), "prompts": sum(len(s.prompts) for s in samples),
              "peak_extra_mib": (_rss_kib("VmHWM") - before) / 1024, "passes": seconds}
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
    parser.add_argument("--agq-numel", type=int,
                        help="also run ptq4sam with search_numel N, 0: every row (this tree only)")
    parser.add_argument("--task", help=argparse.SUPPRESS)
    add_tree_arguments(parser)
    args = parser.parse_args()
    if serve(worker, args, args.task):
        return
    from ptqsam.data import generate_dataset
    from ptqsam.models import build_model
    from ptqsam.models.zoo import image_size

    tasks = ["float"] + args.recipes.split(",") + ([f"{SAMPLED}{args.agq_numel}"] if args.agq_numel is not None else [])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        size = image_size(build_model(args.model, seed=0))
        generate_dataset(tmp, args.images, seed=0, image_size=size)
        for task in tasks:
            for label, tree in trees(args.baseline):
                if task.startswith(SAMPLED) and label == "before":
                    continue
                arguments = ["--model", args.model, "--bits", str(args.bits), "--images", str(args.images),
                             "--threads", str(args.threads), "--device", args.device, "--task", task, "--data", tmp]
                results.append(dict(run_worker(__file__, tree, arguments), tree=label))
                print(json.dumps(results[-1]), flush=True)
    _table(results, args, size)


def _table(results: list[dict], args: argparse.Namespace, size: int) -> None:
    floats = {r["tree"]: r for r in results if r["task"] == "float"}
    print(f"\nmodel {args.model}, {args.images} image(s) of {size}², W{args.bits}A{args.bits}, {args.threads} threads, "
          f"device {args.device}")
    print(f"{'task':<18} {'tree':<7} {'calib s/img':>12} {'calib x float':>14} {'eval s/img':>11} {'eval x float':>13} "
          f"{'peak extra MiB':>15}")
    for r in results:
        float_s = floats[r["tree"]]["eval_s_per_image"]
        calib = r.get("calib_s_per_image")
        calib_text = "-" if calib is None else f"{calib:.2f}"
        ratio_text = "-" if calib is None else f"{calib / float_s:.2f}"
        print(f"{r['task']:<18} {r['tree']:<7} {calib_text:>12} {ratio_text:>14} {r['eval_s_per_image']:>11.2f} "
              f"{r['eval_s_per_image'] / float_s:>13.2f} {r['peak_extra_mib']:>15.1f}")


if __name__ == "__main__":
    main()
