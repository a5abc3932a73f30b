"""Sweeps: models × recipes × bit-widths over one dataset, one atomic result file per cell.

Re-running the same sweep skips the cells already written and completes the rest; an interrupted
run leaves no half-written file. The float run of each model is a cell too (recipe ``float``): it
is the baseline of the degradation report and the reference of the agreement metric.

Each cell records the fingerprint of the settings that made it (:mod:`ptqsam.fingerprint`: model,
checkpoint content, recipe content, bits, calibration images and their data, evaluated images and
their data (file contents), prompt, mask and scoring options, seed, ptqsam version and a hash of
its code (:func:`ptqsam.fingerprint.code_hash`: any edit computes cells again), the source of the
modules a recipe imports, and the arithmetic: device,
the machine (:func:`ptqsam.fingerprint.machine`: CPU model and instruction set, or GPU), torch
version and torch's thread count, since float sums taken in another order can move a low-bit
result by more than its last digit). A cell file whose fingerprint
differs from the current settings, or that cannot be read (zero bytes, invalid JSON), is computed
again with a warning naming what changed, and overwritten: a result is never reported under
settings that did not make it.

A quantized cell is calibrated on each of the config's calibration sets (``calib_sets``) and
evaluated after each calibration; its file keeps every run (metrics, per-instance IoUs, what
calibration did) and ``metrics`` holds their mean. With a protocol float list (``float_sites``)
every recipe quantizes the same sites, and (``own_float_variants``) a recipe whose own
``keep_float`` differs runs again as the variant ``<recipe>[own-float]``.

Under ``torchrun`` every process runs every cell and each cell's images are sharded over the
processes (calibration and evaluation, see :mod:`ptqsam.distributed`): a cell's numbers are the
one-process numbers, a sweep of few cells on many images scales as well as one of many cells, and
nothing but rank 0 reads or writes the results folder (no shared filesystem is needed between
nodes): rank 0 decides which cells are done and writes cell files, states and the report.
"""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, TypeVar

import torch
from segment_anything.modeling import Sam

from ptqsam import distributed
from ptqsam.bits import normal_bits, parse_bits
from ptqsam.calibration import calibrate, calibrated_quantizing, save_calibrated
from ptqsam.config import ExperimentConfig
from ptqsam.constants import FLOAT
from ptqsam.data import CocoDataset
from ptqsam.data.prompts import Detections
from ptqsam.data.selection import calibration_set, data_fingerprint, dataset_for
from ptqsam.embedding_cache import EmbeddingCache, embedding_key
from ptqsam.errors import CheckpointError, ConfigError, DistributedError
from ptqsam.evaluation.evaluator import EvalOptions, EvalResult, evaluate
from ptqsam.evaluation.records import counts, evaluation_settings, reference_result, result_fields
from ptqsam.evaluation.report import degradation_rows, write_report
from ptqsam.evaluation.significance import mean_metrics
from ptqsam.fingerprint import (changed_settings, code_hash, file_sha256, fingerprint, machine, mismatch,
                                module_hashes, settings_hash)
from ptqsam.instrument.recipe import Recipe, load_recipe
from ptqsam.io import json_text, write_or_rescue
from ptqsam.models import build_model
from ptqsam.models.blocks import ENCODER_SITES
from ptqsam.models.zoo import image_size, weights_id
from ptqsam.preflight import check_device, check_output_folder, check_recipes
from ptqsam.progress import bar

log = logging.getLogger("ptqsam")
#: the overall line of a sweep on stderr: cells done (computed or found done) of all, the last one named
CELL_LINE = "cell {n_fmt}/{total_fmt} done [{elapsed}<{remaining}]{postfix}"
#: suffix of the variant of a recipe that keeps its own float list under a protocol float list
OWN_FLOAT = "[own-float]"
#: evaluations of more images than this keep their float embeddings on disk (``<out>/cache``)
DISK_CACHE_IMAGES = 64


@dataclass(frozen=True)
class Cell:
    """One (model, recipe, bits) run; ``recipe == "float"`` is the baseline. ``own_float``: the
    recipe's own float list although the sweep imposes a protocol float list (a variant)."""

    model: str
    recipe: str
    bits: str
    own_float: bool = False

    @property
    def label(self) -> str:
        """The recipe in reports: as given, with ``[own-float]`` for the variant."""
        return self.recipe + (OWN_FLOAT if self.own_float else "")

    @property
    def stem(self) -> str:
        """The recipe in file names: a YAML path's stem, ``.own-float`` for the variant."""
        recipe = Path(self.recipe).stem if self.recipe.endswith((".yaml", ".yml")) else self.recipe
        return recipe + (".own-float" if self.own_float else "")

    @property
    def file_name(self) -> str:
        return f"{self.model}__{self.stem}__{self.bits}.json"


def state_path(config: ExperimentConfig, cell: Cell, calib_seed: int) -> Path:
    """Where a sweep saves the calibrated state of ``cell`` calibrated on the set of ``calib_seed``."""
    return Path(config.out) / "states" / cell.file_name.replace(".json", f"__calib{calib_seed}.pt")


def evaluated_state(config: ExperimentConfig, cell: Cell, calib_seed: int) -> Path:
    """:func:`state_path` after checking that it holds the state the finished ``cell`` was evaluated
    with (an interrupted later run may have replaced it); CheckpointError otherwise."""
    path = Path(config.out) / "cells" / cell.file_name
    try:
        runs = json.loads(path.read_text()).get("runs", [])
    except (OSError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path} is not a finished sweep cell ({error}): run the sweep first") from None
    run = next((r for r in runs if isinstance(r, dict) and r.get("calib_seed") == calib_seed), None)
    if run is None or not _state_intact(run, path.parent.parent / "states"):
        raise CheckpointError(f"{state_path(config, cell, calib_seed)} is not the calibrated state cell {cell.file_name} "
                              f"was evaluated with (calibration set {calib_seed}): run the sweep again")
    return state_path(config, cell, calib_seed)


def protocol_float_list(config: ExperimentConfig) -> tuple[str, ...] | None:
    """The site patterns every recipe keeps in float (``float_sites``: a recipe's ``keep_float`` or
    the patterns themselves), or None: each recipe's own."""
    if isinstance(config.float_sites, str):
        return load_recipe(config.float_sites).keep_float
    return config.float_sites


def float_list_label(config: ExperimentConfig, cell: Cell) -> str:
    """Which float list a cell uses: the protocol list's recipe name, ``custom`` patterns, or ``own``."""
    if config.float_sites is None or cell.own_float:
        return "own"
    return config.float_sites if isinstance(config.float_sites, str) else "custom"


def cell_recipe(config: ExperimentConfig, cell: Cell) -> Recipe:
    """The recipe a quantized cell calibrates: the named one, its ``keep_float`` replaced by the
    protocol float list unless the cell is the own-float variant."""
    recipe = load_recipe(cell.recipe)
    protocol = protocol_float_list(config)
    if protocol is None or cell.own_float:
        return recipe
    return replace(recipe, keep_float=protocol)


def cells(config: ExperimentConfig) -> list[Cell]:
    """The float cell of each model, then every recipe × its bits (``recipe_bits`` or ``bits``,
    normalised); with a protocol float list, each recipe whose own list differs also as its
    own-float variant."""
    protocol = protocol_float_list(config)
    out = []
    for model in config.models:
        out.append(Cell(model, FLOAT, FLOAT))
        for recipe in config.recipes:
            bits = [normal_bits(b) for b in config.recipe_bits.get(recipe, config.bits)]
            out += [Cell(model, recipe, b) for b in bits]
            if protocol is not None and config.own_float_variants and load_recipe(recipe).keep_float != protocol:
                out += [Cell(model, recipe, b, own_float=True) for b in bits]
    return out


def run_sweep(config: ExperimentConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Run every missing cell (and every cell made under other settings), then write
    ``report.{json,csv,md}``; returns the report rows. With ``workers > 1`` the quantized cells
    of a model run in that many worker processes (after its float cell, in this process)."""
    todo = _preflight(config)
    out = Path(config.out)
    shared = _Shared.of(config)
    records: dict[Cell, dict[str, Any]] = {}
    checkpoints = {}
    with bar(total=len(todo), enabled=progress, bar_format=CELL_LINE) as overall:
        for model_type in config.models:
            context = _ModelContext(config, model_type, shared, progress)
            checkpoints[model_type] = context.checkpoint_id
            missing = []
            for cell in [c for c in todo if c.model == model_type]:
                stamp = _same_on_every_rank(context.fingerprint(cell), cell)
                record = distributed.main_first(lambda: _finished(out / "cells" / cell.file_name, stamp, cell))
                if record is None:
                    missing.append((cell, stamp))
                else:
                    records[cell] = record
                    _cell_done(overall, cell, "done before")
            for cell, record in _compute(config, context, missing):
                if distributed.is_main():
                    write_or_rescue(out / "cells" / cell.file_name,
                                    lambda file, data=record: file.write(json_text(data)))
                records[cell] = record
                _cell_done(overall, cell, f"{record['seconds']:.0f} s")
    runs = [records[cell] for cell in todo]
    rows = degradation_rows(runs, config.seed)
    protocol = protocol_float_list(config)
    settings = {**config.to_dict(), "checkpoint_ids": checkpoints, "eval_image_ids": shared.eval_ids,
                "calibration_seeds": list(config.calibration_seeds()),
                "protocol_float_list": None if protocol is None else list(protocol),
                "skipped": _evaluation_skips(runs),
                "cell_fingerprints": {f"{r['model']}/{r['recipe']}/{r['bits']}": r["fingerprint"]["hash"] for r in runs}}
    if distributed.is_main():
        write_report(rows, out, settings)
    return rows


def _evaluation_skips(records: list[dict[str, Any]]) -> dict[str, int]:
    """What the cells' evaluations skipped (reason -> count), from their records: a resumed sweep
    reads no image, so this process's own counts would say nothing was skipped. Every cell reads
    the same images; should two disagree, each reason's largest count is kept."""
    skips: dict[str, int] = {}
    for record in records:
        for reason, count in record["skipped"].items():
            skips[reason] = max(skips.get(reason, 0), count)
    return skips


def _same_on_every_rank(stamp: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """``stamp`` when every torchrun rank computed the same (each reads its own copy of the data, on
    its own machine); else a DistributedError on every rank naming what differs."""
    stamps = distributed.all_gather_parts([stamp])
    for index, other in enumerate(stamps):
        if other["hash"] != stamps[0]["hash"]:
            changed = changed_settings(stamps[0]["settings"], other["settings"]) or ["fingerprint"]
            raise DistributedError(f"cell {cell.file_name}: rank {index}'s settings differ from rank 0's "
                                   f"({', '.join(changed[:6])}): every rank must read the same data on the "
                                   "same kind of machine")
    return stamp


def _cell_done(overall, cell: Cell, how: str) -> None:
    """Count ``cell`` on the overall line (:data:`CELL_LINE`), naming it."""
    overall.set_postfix_str(f"{cell.model} {cell.label} {cell.bits}: {how}", refresh=False)
    overall.update()


def _cell_threads(config: ExperimentConfig) -> int:
    """The torch threads a cell is computed on: one with worker processes (here too), else this
    process's."""
    return 1 if config.workers > 1 else torch.get_num_threads()


def _compute(config: ExperimentConfig, context: "_ModelContext",
             missing: list[tuple[Cell, dict[str, Any]]]) -> Iterator[tuple[Cell, dict[str, Any]]]:
    """Each missing cell with its new record: the float cell (the others' reference) first, in this
    process; the others here too, or in ``config.workers`` worker processes, the reconstruction
    cells (the longest) submitted first. With workers, every cell is computed on one torch thread,
    here too, so its numbers do not depend on the machine."""
    parallel = [(cell, stamp) for cell, stamp in missing if cell.recipe != FLOAT] if config.workers > 1 else []
    parallel.sort(key=lambda item: load_recipe(item[0].recipe).reconstruction is None)
    threads = torch.get_num_threads()
    for cell, stamp in [item for item in missing if item not in parallel]:
        torch.set_num_threads(_cell_threads(config))
        try:
            record = {**context.run(cell), "fingerprint": stamp}
        finally:
            torch.set_num_threads(threads)
        yield cell, record
    if not parallel:
        return
    with ProcessPoolExecutor(min(config.workers, len(parallel)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = {pool.submit(_run_in_worker, config, context.model_type, context.checkpoint_id, cell): (cell, stamp)
                   for cell, stamp in parallel}
        for (cell, stamp), result in finished_first(futures):  # each cell is written as soon as it is done
            yield cell, {**result, "fingerprint": stamp}


Key = TypeVar("Key")


def finished_first(futures: dict[Future, Key]) -> Iterator[tuple[Key, Any]]:
    """``(key, result)`` of each future as it completes. When one fails, those not yet started are
    cancelled and those already running still finish and are yielded (a sweep writes their cells:
    hours of work are not thrown away); then the first failure is raised."""
    failure: BaseException | None = None
    remaining = set(futures)
    while remaining:
        done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
        for future in done:
            error = future.exception()
            if error is None:
                yield futures[future], future.result()
            elif failure is None:
                failure = error
        if failure is not None:
            remaining = {future for future in remaining if not future.cancel()}
    if failure is not None:
        raise failure


#: the context of the model a worker process computes cells of (built by its first cell)
_WORKER_CONTEXT: dict[str, "_ModelContext"] = {}


def _run_in_worker(config: ExperimentConfig, model_type: str, weights: str, cell: Cell) -> dict[str, Any]:
    """One cell's record, computed in a worker process (one torch thread, no progress bars) with
    the weights ``weights`` (the checkpoint id the sweep's process built)."""
    key = config.to_yaml() + model_type
    if key not in _WORKER_CONTEXT:
        _WORKER_CONTEXT.clear()
        _WORKER_CONTEXT[key] = _ModelContext(config, model_type, _Shared.of(config), progress=False)
    context = _WORKER_CONTEXT[key]
    if context.checkpoint_id != weights:
        raise CheckpointError(f"a worker process built {model_type} with weights {context.checkpoint_id}, "
                              f"the sweep with {weights}")
    return context.run(cell)


@dataclass(frozen=True)
class _Shared:
    """What every cell of a sweep evaluates on: the dataset, detections, images, options and the
    evaluation part of the fingerprints."""

    dataset: CocoDataset
    detections: Detections | None
    eval_ids: list[int]
    options: EvalOptions
    evaluation: dict[str, Any]

    @classmethod
    def of(cls, config: ExperimentConfig) -> "_Shared":
        dataset = dataset_for(config)
        eval_ids = dataset.image_ids[: config.eval_images] if config.eval_images else list(dataset.image_ids)
        options = EvalOptions(config.prompt, config.num_points, config.multimask, config.score_with_iou, config.seed)
        evaluation = evaluation_settings(dataset, eval_ids, options, config.detections)
        return cls(dataset, Detections(config.detections) if config.detections else None, eval_ids, options,
                   evaluation)


def _preflight(config: ExperimentConfig) -> list[Cell]:
    """The cells to run, after the checks that need no work: device, results folder, recipes
    against every model, and one cell file per cell."""
    check_device(config.device)
    if config.workers > 1 and distributed.active():
        raise ConfigError("workers > 1 and torchrun do not combine (each cell's images are already spread over the "
                          "torchrun processes): set workers: 1")
    check_output_folder(config.out, "results folder")
    check_recipes(config.recipes, config.models)
    todo = cells(config)
    names = [cell.file_name for cell in todo]
    shared = sorted({cell.label for cell in todo if names.count(cell.file_name) > 1})
    if shared:
        raise ConfigError(f"recipes {shared} would share cell files (same file name): rename one")
    return todo


def _finished(path: Path, stamp: dict[str, Any], cell: Cell) -> dict[str, Any] | None:
    """The record in the cell file ``path`` if it was made under the settings of ``stamp``; None
    (with a warning saying why) when the cell must be computed."""
    if not path.is_file():
        return None
    needed = ("metrics", "num_images", "num_prompts", "skipped") + (("reference_masks",) if cell.recipe == FLOAT else ())
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or any(key not in record for key in needed):
            raise ValueError(f"not a cell record with {list(needed)}")
    except (OSError, ValueError) as error:
        log.warning("cell %s cannot be read (%s): computing it again", path.name, error)
        return None
    changed = mismatch(record.get("fingerprint"), stamp)
    if changed:
        log.warning("cell %s was computed under other settings (%s differ): computing it again", path.name,
                    ", ".join(changed[:6]))
        return None
    states = path.parent.parent / "states"
    replaced = [run["calibration"].get("state") for run in record.get("runs", []) if not _state_intact(run, states)]
    if replaced:
        log.warning("cell %s: its calibrated state %s is missing or was replaced since (e.g. by an interrupted "
                    "run): computing it again", path.name, replaced[0])
        return None
    log.info("cell %s already done: skipped", path.name)
    return record


def _state_intact(run: dict[str, Any], states: Path) -> bool:
    """Whether the calibrated state a run of a cell was evaluated with is still its file in ``states``."""
    calibration = run.get("calibration") or {}
    state, recorded = calibration.get("state"), calibration.get("state_sha256")
    if not (state and recorded):
        return False
    file = states / Path(state).name  # the results folder may have moved since
    return file.is_file() and file_sha256(file) == recorded


class _ModelContext:
    """Everything the cells of one model share: the float model, its embeddings, its reference."""

    def __init__(self, config: ExperimentConfig, model_type: str, shared: _Shared, progress: bool) -> None:
        self.config, self.model_type, self.dataset = config, model_type, shared.dataset
        self.detections, self.eval_ids, self.options = shared.detections, shared.eval_ids, shared.options
        self.progress, self.evaluation = progress, shared.evaluation
        checkpoint = config.checkpoints.get(model_type)
        self.float_model: Sam = build_model(model_type, checkpoint, seed=config.seed).to(config.device)
        self.checkpoint_id = weights_id(model_type, checkpoint, config.seed)
        cache_dir = Path(config.out) / "cache" if len(self.eval_ids) > DISK_CACHE_IMAGES else None
        self.cache = EmbeddingCache(cache_dir)
        #: what the cells' float arithmetic depends on (see :func:`_compute` for the thread count)
        self.arithmetic = {"device": config.device, "machine": machine(config.device), "torch": torch.__version__,
                           "threads": _cell_threads(config)}
        size, arithmetic = image_size(self.float_model), settings_hash({**self.arithmetic, "code": code_hash()})
        data_id = self.evaluation["data"]["annotations"]
        self.cache_key = lambda image_id: embedding_key(
            model_type, self.checkpoint_id, image_id, size, data_id,
            file_sha256(self.dataset.image_info(image_id).path), arithmetic)
        self._reference: EvalResult | None = None
        self._calibration: dict[int, tuple] = {}

    def fingerprint(self, cell: Cell) -> dict[str, Any]:
        """The fingerprint of the settings that make ``cell``'s result."""
        settings: dict[str, Any] = {"model": cell.model, "weights": self.checkpoint_id, "recipe": FLOAT,
                                    "bits": cell.bits, "evaluation": self.evaluation, "arithmetic": self.arithmetic,
                                    "code": code_hash()}
        if cell.recipe != FLOAT:
            recipe = cell_recipe(self.config, cell)
            settings.update(recipe=recipe.to_dict(), imports=module_hashes(recipe.imports),
                            quantize_encoder=self.config.quantize_encoder,
                            calibration={str(seed): self.calibration_settings(seed, recipe)
                                         for seed in self.config.calibration_seeds()})
        return fingerprint(settings)

    def calibration_settings(self, seed: int, recipe: Recipe) -> dict[str, Any]:
        """What the calibration of ``recipe`` on the set of calibration seed ``seed`` depends on (the
        sweep's reconstruction overrides only where the recipe reconstructs: the others ignore them)."""
        dataset, samples = self.calibration(seed)
        settings = {"data": data_fingerprint(dataset, [s.image_id for s in samples]),
                    "images": self.config.calib_images, "prompt": self.config.prompt,
                    "num_points": self.config.num_points, "seed": seed, "search_rows": self.config.search_rows}
        if recipe.reconstruction is not None:
            settings["reconstruction"] = self.config.reconstruction
        return settings

    def run(self, cell: Cell) -> dict[str, Any]:
        start = time.perf_counter()
        record: dict[str, Any] = {"model": cell.model, "recipe": cell.label, "bits": cell.bits,
                                  "checkpoint": self.checkpoint_id}
        if cell.recipe == FLOAT:
            result = self._evaluate(self.float_model, encoder_float=True, reference=None, label=FLOAT)
            record.update(result_fields(result, reference=True), quantized_sites=0)
        else:
            done = [self._calibrated_run(cell, seed) for seed in self.config.calibration_seeds()]
            runs, result = [run for run, _ in done], done[0][1]
            record.update(float_list=float_list_label(self.config, cell), quantized_sites=runs[0]["quantized_sites"],
                          metrics=mean_metrics([run["metrics"] for run in runs]), runs=runs)
            if any(run.get("reference_drop_bug") for run in runs):
                record["reference_drop_bug"] = True
                log.warning("%s %s reproduces PTQ4SAM's drop bug: its numbers are marked", cell.label, cell.bits)
            record.update(counts(result))
        record.update(seconds=round(time.perf_counter() - start, 3))
        return record

    def _calibrated_run(self, cell: Cell, seed: int) -> tuple[dict[str, Any], EvalResult]:
        """Calibrate a copy of the float model on the set of calibration seed ``seed``, save its
        state and evaluate it: the run's record and its evaluation."""
        model = copy.deepcopy(self.float_model)
        w, a = parse_bits(cell.bits)
        exclude = () if self.config.quantize_encoder else (ENCODER_SITES,)
        calibration_set, samples = self.calibration(seed)
        recipe = cell_recipe(self.config, cell)
        report = calibrate(model, recipe, w, a, samples, exclude, self.progress, search_rows=self.config.search_rows,
                           reconstruction=self.config.reconstruction)
        saved, state_sha256 = state_path(self.config, cell, seed), None
        if distributed.is_main():
            save_calibrated(model, saved, report, recipe, self.model_type, w, a,
                            {"calibration": self.calibration_settings(seed, recipe),
                             "quantize_encoder": self.config.quantize_encoder})
            state_sha256 = file_sha256(saved)
        reference = self.reference() if distributed.is_main() else None  # only rank 0 measures agreement
        with calibrated_quantizing(model, report.extra_state()):
            result = self._evaluate(model, encoder_float=not self.config.quantize_encoder, reference=reference,
                                    label=f"{cell.label} {cell.bits} (calibration set {seed})")
        calibration = {"images_dir": str(calibration_set.images_dir), "image_ids": report.image_ids,
                       "num_prompts": report.num_prompts, "seconds": report.seconds,
                       "unreached_sites": report.unreached, "bimodal": report.bimodal, "hessian": report.hessian,
                       "reconstruction": report.reconstruction, "passes": report.passes, "state": str(saved),
                       "state_sha256": state_sha256}
        quantized = len(report.quantizers) - len(report.unreached)
        run = {"calib_seed": seed, "metrics": result.metrics, "quantized_sites": quantized, "calibration": calibration,
               "instance_ious": result.instance_ious}
        if report.reference_drop_bug is not None:
            run["reference_drop_bug"] = True
        return run, result

    def calibration(self, seed: int) -> tuple[CocoDataset, list]:
        """The calibration set and samples of calibration seed ``seed``, loaded once."""
        if seed not in self._calibration:
            self._calibration[seed] = calibration_set(self.config, seed)
        return self._calibration[seed]

    def reference(self) -> EvalResult:
        """The float run's masks (from its cell file when an earlier run wrote it)."""
        if self._reference is None:
            path = Path(self.config.out) / "cells" / Cell(self.model_type, FLOAT, FLOAT).file_name
            self._reference = reference_result(json.loads(path.read_text()))
        return self._reference

    def _evaluate(self, model: Sam, encoder_float: bool, reference, label: str) -> EvalResult:
        return evaluate(model, self.dataset, self.eval_ids, self.options, self.detections, reference,
                        self.cache if encoder_float else None, self.cache_key, self.progress, label)
