"""Launch a function on N gloo processes (spawned, one torch thread each) and collect what each returns.

Kept out of the test modules: spawned processes import the function by module name, and this
module is importable from its folder (``sys.path``, which spawned children inherit).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(fn: Callable, rank: int, world: int, port: int, out: str, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), PTQSAM_DIST_TIMEOUT="60")
    torch.set_num_threads(1)
    from ptqsam.distributed import process_group

    try:
        with process_group():
            result = fn(*args)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    except BaseException as error:
        (Path(out) / f"rank{rank}.err").write_text(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
        sys.exit(1)


def launch(fn: Callable, world: int, out: Path, *args: Any, timeout: float = 240.0) -> list[dict[str, Any]]:
    """Run ``fn(*args)`` on ``world`` processes; per rank: ``exitcode``, ``result`` (what it returned,
    or None), ``error`` (its error text, or None). A process still running after ``timeout`` seconds
    is killed and fails the test (a hang)."""
    out.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    port = free_port()
    processes = [context.Process(target=_entry, args=(fn, r, world, port, str(out), args)) for r in range(world)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(processes) if p.is_alive()]
    for r in hung:
        processes[r].kill()
        processes[r].join()
    assert not hung, f"ranks {hung} still running after {timeout} s (a hang)"
    runs = []
    for r, process in enumerate(processes):
        result, error = out / f"rank{r}.pt", out / f"rank{r}.err"
        runs.append({"exitcode": process.exitcode,
                     "result": torch.load(result, weights_only=False) if result.is_file() else None,
                     "error": error.read_text() if error.is_file() else None})
    return runs


def results(runs: list[dict[str, Any]]) -> list[Any]:
    """Every rank's result, after checking that every rank succeeded."""
    for r, run in enumerate(runs):
        assert run["exitcode"] == 0, f"rank {r} failed: {run['error']}"
    return [run["result"] for run in runs]


def evaluate_job(data_dir: str, image_ids: list[int] | None, detections: str | None) -> dict[str, Any]:
    """Evaluate the testbed (box prompts; with ``detections``, mask AP too) and describe the result."""
    from ptqsam.data import CocoDataset
    from ptqsam.data.prompts import Detections
    from ptqsam.evaluation.evaluator import EvalOptions, evaluate, masks_to_json
    from ptqsam.models import build_model

    dataset = CocoDataset(Path(data_dir) / "images", Path(data_dir) / "annotations.json")
    model = build_model("testbed", seed=0)
    out = {}
    box = evaluate(model, dataset, image_ids, progress=False)
    out["box"] = {"metrics": box.metrics, "instance_ious": box.instance_ious, "num_images": box.num_images,
                  "num_prompts": box.num_prompts, "skips": box.skips, "masks": masks_to_json(box.masks)}
    if detections:
        ap = evaluate(model, dataset, image_ids, EvalOptions(prompt="detections"), Detections(detections),
                      reference=box, progress=False)
        out["detections"] = {"metrics": ap.metrics, "num_prompts": ap.num_prompts}
        few = evaluate(model, dataset, dataset.image_ids[:2], progress=False)  # fewer images than processes
        out["two_images"] = {"metrics": few.metrics, "instance_ious": few.instance_ious, "num_images": few.num_images}
    return out


def killed_rank_job(data_dir: str, out_file: str, victim: int) -> None:
    """Rank ``victim`` dies at once (SIGKILL); the others evaluate and write ``out_file`` (rank 0)."""
    import signal

    from ptqsam import distributed
    from ptqsam.io import write_json_atomic

    if distributed.rank() == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    result = evaluate_job(data_dir, None, None)
    if distributed.is_main():
        write_json_atomic(out_file, result["box"]["metrics"])


SEARCH_ROWS = 64
#: recipes of the calibration check: MinMax, PTQ4SAM (BIG, AGQ), percentile and EMA observers, Hessian
#: search, and the passes each process runs over the whole set (RepQ-ViT's fold, PCC, HLUQ, GPTQ)
CALIBRATION_RECIPES = ["minmax", "ptq4sam", "mixed-observers", "hessian-decoder", "whole-set-passes"]
MIXED_OBSERVERS = """
name: mixed-observers
keep_float: []
transforms: []
rules:
  - include: ["*.weight"]
    spec: {bits: W, symmetric: true, granularity: {kind: channel, axis: 0}, observer: percentile}
  - include: ["*.probs"]
    spec: {bits: A, symmetric: false, observer: percentile, observer_options: {bins: 256}}
  - include: ["*.input", "*.query", "*.key", "*.value", "*.matmul_a", "*.matmul_b"]
    spec: {bits: A, symmetric: false, observer: ema_minmax, observer_options: {momentum: 0.1}}
"""


HESSIAN_DECODER = """
name: hessian-decoder
keep_float: []
transforms: []
rules:
  - include: ["mask_decoder.transformer.layers.0.cross_attn_token_to_image.*.input",
              "mask_decoder.transformer.layers.0.cross_attn_token_to_image.*.weight"]
    spec: {bits: A, symmetric: true, observer: minmax, search: hessian,
           search_options: {alpha: 0.01, beta: 1.2, n: 20, rounds: 2}}
  - include: ["mask_decoder.transformer.layers.0.cross_attn_token_to_image.probs"]
    spec: {bits: A, quantizer: twin_softmax, search: hessian, search_options: {alpha: 0.01, beta: 1.2, n: 20, rounds: 2}}
"""

CAG_STAGES = """
name: cag-stages
extends: minmax
prepend_rules:
  - include: ["image_encoder.blocks.*.mlp.lin1.input"]
    spec: {bits: A, symmetric: false, granularity: {kind: channel, axis: -1}, observer: avg_minmax,
           quantizer: channel_groups, quantizer_options: {groups: 2, milestones: [0.2, 0.6]}}
"""
WHOLE_SET_PASSES = """
name: whole-set-passes
extends: minmax
transforms:
  - kind: repq_fold
    sites: ["image_encoder.blocks.0"]
prepend_rules:
  - include: ["mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.input"]
    spec: {bits: A, symmetric: false, search: pcc, search_options: {percentiles: [0.9, 0.999], rounds: 1, images: 2}}
  - include: ["mask_decoder.transformer.layers.0.mlp.lin2.input"]
    spec: {bits: A, quantizer: hluq, quantizer_options: {range_rates: [0.1, 0.5], grid_rates: [0.25]}}
  - include: ["mask_decoder.transformer.layers.0.mlp.*.weight"]
    spec: {bits: W, symmetric: false, granularity: {kind: channel, axis: 0}, observer: minmax, search: gptq}
"""
#: recipes given as YAML text here
TEST_RECIPES = {"mixed-observers": MIXED_OBSERVERS, "hessian-decoder": HESSIAN_DECODER, "cag-stages": CAG_STAGES,
                "whole-set-passes": WHOLE_SET_PASSES}


def calibrate_job(data_dir: str, recipes: list[str], encoder: bool) -> dict[str, Any]:
    """Calibrate the testbed with each recipe (W4A4, 5 images) and return, per recipe, every
    quantizer's state and what calibration recorded."""
    from ptqsam.calibration import calibrate
    from ptqsam.data import CocoDataset
    from ptqsam.data.samples import calibration_samples
    from ptqsam.instrument.recipe import Recipe
    from ptqsam.models import build_model
    from ptqsam.models.blocks import ENCODER_SITES

    dataset = CocoDataset(Path(data_dir) / "images", Path(data_dir) / "annotations.json")
    samples = calibration_samples(dataset, 5, seed=0)
    out = {}
    for name in recipes:
        recipe = Recipe.from_yaml(TEST_RECIPES[name], None) if name in TEST_RECIPES else name
        model = build_model("testbed", seed=0)
        start = time.perf_counter()
        report = calibrate(model, recipe, 4, 4, samples, () if encoder else (ENCODER_SITES,), progress=False,
                           search_rows=SEARCH_ROWS)
        out[name] = {"state": {f"{site}.{k}": v.clone() for site, q in report.quantizers.items()
                               for k, v in q.state_dict().items()},
                     "bimodal": report.bimodal, "hessian": report.hessian, "unreached": report.unreached,
                     "image_ids": report.image_ids, "seconds": time.perf_counter() - start}
    return out


#: reconstruction cases: (name, calibration images, recipe calibrated first, reconstruction settings
#: (the recipe's own with these overrides when every unit is reconstructed), encoder quantized,
#: units reconstructed (None: every unit, through calibrate()))
RECONSTRUCTION_CASES = [
    # QDrop (input mixing and activation dropping), one image per step, the regulariser from
    # step 1 on; the decoder's three blocks
    ("qdrop-batch1", 3, "qdrop", {"iterations": 4, "warmup": 0.25, "weight_lr": 1e-2}, False, None),
    # reconstruct() itself: three images per step (drawn across processes), Fisher loss, QDrop,
    # the encoder quantized; an encoder block and a decoder block; 2 images (on 3 processes, one
    # holds none); every cached item on disk
    ("fisher-batch3", 2, "minmax", {"iterations": 3, "batch_size": 3, "loss": "fisher", "drop_prob": 0.5,
                                    "warmup": 0.0, "weight_lr": 1e-2, "cache_bytes": 1},
     True, ["image_encoder.blocks.1", "mask_decoder.transformer.layers.1"]),
    # SAQ-SAM's PAR response term (an encoder stage: the decoder's calls and float responses
    # cached per image; a decoder layer) with QDrop, and CAG regrouping at two milestones
    ("par-cag-stages", 3, "cag-stages", {"unit": "stage", "response_weight": 1.0, "iterations": 5, "warmup": 0.2,
                                         "weight_lr": 1e-2},
     True, ["image_encoder.blocks.0-2", "mask_decoder.transformer.layers.0"]),
]


def reconstruct_job(data_dir: str) -> dict[str, Any]:
    """Calibrate and reconstruct the testbed (W4A4) for every case of :data:`RECONSTRUCTION_CASES`;
    per case every quantizer's state and the reconstruction records (without timings)."""
    from ptqsam.calibration import calibrate
    from ptqsam.data import CocoDataset
    from ptqsam.data.samples import calibration_samples
    from ptqsam.instrument.recipe import Recipe
    from ptqsam.models import build_model
    from ptqsam.models.blocks import ENCODER_SITES
    from ptqsam.reconstruction import ReconstructionConfig
    from ptqsam.reconstruction.reconstruct import reconstruct

    dataset = CocoDataset(Path(data_dir) / "images", Path(data_dir) / "annotations.json")
    out = {}
    for name, images, recipe, settings, encoder, only in RECONSTRUCTION_CASES:
        samples = calibration_samples(dataset, images, seed=0)
        model = build_model("testbed", seed=0)
        exclude = () if encoder else (ENCODER_SITES,)
        recipe = Recipe.from_yaml(TEST_RECIPES[recipe], None) if recipe in TEST_RECIPES else recipe
        with _watching_steps() as steps:
            report = calibrate(model, recipe, 4, 4, samples, exclude, progress=False,
                               reconstruction=None if only else settings)
            records = report.reconstruction if not only else \
                reconstruct(model, samples, ReconstructionConfig(**settings), progress=False, only=only)
        out[name] = {"state": {f"{site}.{k}": v.clone() for site, q in report.quantizers.items()
                               for k, v in q.state_dict().items()},
                     "records": {unit: {k: v for k, v in record.items() if not k.startswith("seconds")}
                                 for unit, record in records.items()},
                     "steps": steps}
    return out


@contextlib.contextmanager
def _watching_steps() -> Iterator[dict[str, Any]]:
    """While inside, records which ranks compute the reconstruction steps and how many drawn
    samples are sent to them from another process."""
    from ptqsam.reconstruction import reconstruct, sharded

    seen: dict[str, Any] = {"workers": set(), "sent": 0}
    share_step, fetch = sharded.share_step, sharded.fetch

    def watched_share(params, loss, worker, generators):
        seen["workers"].add(worker)
        return share_step(params, loss, worker, generators)

    def watched_fetch(shard, indices, worker, item):
        seen["sent"] += sum(shard.owner(i) != worker for i in set(indices))
        return fetch(shard, indices, worker, item)

    reconstruct.share_step, reconstruct.fetch = watched_share, watched_fetch
    try:
        yield seen
    finally:
        reconstruct.share_step, reconstruct.fetch = share_step, fetch


def every_check_job(data_dir: str) -> dict[str, Any]:
    """The evaluation, calibration and reconstruction jobs in one process group (one spawn per
    world size for the tests that compare them with one process)."""
    from ptqsam import distributed

    return {"evaluate": evaluate_job(data_dir, None, str(Path(data_dir) / "detections.json")),
            "calibrate": calibrate_job(data_dir, CALIBRATION_RECIPES, False),
            "reconstruct": reconstruct_job(data_dir), "world": distributed.world_size()}
