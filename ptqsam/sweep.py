"""Sweeps: models × recipes × bit-widths over one dataset, one atomic result file per cell.

Re-running the same sweep skips the cells already written and completes the rest; an interrupted
run leaves no half-written file. The float run of each model is a cell too (recipe ``float``): it
is the baseline of the degradation report and the reference of the agreement metric.

A quantized cell is calibrated on each of the config's calibration sets (``calib_sets``) and
evaluated after each calibration; its file keeps every run (metrics, per-instance IoUs, what
calibration did) and ``metrics`` holds their mean. With a protocol float list (``float_sites``)
every recipe quantizes the same sites, and (``own_float_variants``) a recipe whose own
``keep_float`` differs runs again as the variant ``<recipe>[own-float]``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segment_anything.modeling import Sam

from ptqsam.bits import normal_bits, parse_bits
from ptqsam.calibration import calibrate, save_calibrated
from ptqsam.config import ExperimentConfig
from ptqsam.constants import FLOAT
from ptqsam.data import CocoDataset
from ptqsam.data.prompts import Detections
from ptqsam.data.selection import calibration_set, dataset_for
from ptqsam.embedding_cache import EmbeddingCache, embedding_key
from ptqsam.evaluation.evaluator import EvalOptions, EvalResult, evaluate, masks_from_json, masks_to_json
from ptqsam.evaluation.report import degradation_rows, write_report
from ptqsam.evaluation.significance import mean_metrics
from ptqsam.instrument.modes import quantizing
from ptqsam.instrument.recipe import Recipe, load_recipe
from ptqsam.io import write_json_atomic
from ptqsam.models import build_model
from ptqsam.models.blocks import ENCODER_SITES
from ptqsam.models.zoo import image_size, weights_id

log = logging.getLogger("ptqsam")
#: suffix of the variant of a recipe that keeps its own float list under a protocol float list
OWN_FLOAT = "[own-float]"


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
        """The recipe's name in reports: its name (a YAML path's stem), ``[own-float]`` for the variant."""
        name = Path(self.recipe).stem if self.recipe.endswith((".yaml", ".yml")) else self.recipe
        return name + (OWN_FLOAT if self.own_float else "")

    @property
    def file_name(self) -> str:
        return f"{self.model}__{self.label.replace(OWN_FLOAT, '.own-float')}__{self.bits}.json"


def state_path(config: ExperimentConfig, cell: Cell, calib_seed: int) -> Path:
    """Where a sweep saves the calibrated state of ``cell`` calibrated on the set of ``calib_seed``."""
    return Path(config.out) / "states" / cell.file_name.replace(".json", f"__calib{calib_seed}.pt")


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
    return dataclasses.replace(recipe, keep_float=protocol)


def cells(config: ExperimentConfig) -> list[Cell]:
    """The float cell of each model, then every recipe × bits (bit strings normalised); with a
    protocol float list, each recipe whose own list differs also as its own-float variant."""
    bits = [normal_bits(b) for b in config.bits]
    protocol = protocol_float_list(config)
    out = []
    for model in config.models:
        out.append(Cell(model, FLOAT, FLOAT))
        for recipe in config.recipes:
            out += [Cell(model, recipe, b) for b in bits]
            if protocol is not None and config.own_float_variants and load_recipe(recipe).keep_float != protocol:
                out += [Cell(model, recipe, b, own_float=True) for b in bits]
    return out


def run_sweep(config: ExperimentConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Run every missing cell, then write ``report.{json,csv,md}``; returns the report rows."""
    for recipe in config.recipes:
        load_recipe(recipe)  # fail before any work on an unknown recipe
    todo = cells(config)
    out = Path(config.out)
    dataset = dataset_for(config)
    detections = Detections(config.detections) if config.detections else None
    eval_ids = dataset.image_ids[: config.eval_images] if config.eval_images else list(dataset.image_ids)
    options = EvalOptions(config.prompt, config.num_points, config.multimask, config.score_with_iou, config.seed)
    runs, checkpoints = [], {}
    for model_type in config.models:
        context = _ModelContext(config, model_type, dataset, detections, eval_ids, options, progress)
        checkpoints[model_type] = context.checkpoint_id
        for cell in [c for c in todo if c.model == model_type]:
            path = out / "cells" / cell.file_name
            if path.is_file():
                log.info("cell %s already done: skipped", cell.file_name)
                runs.append(json.loads(path.read_text()))
                continue
            record = context.run(cell)
            write_json_atomic(path, record)
            runs.append(record)
    rows = degradation_rows(runs, config.seed)
    settings = {**config.to_dict(), "checkpoint_ids": checkpoints, "eval_image_ids": eval_ids,
                "calibration_seeds": list(config.calibration_seeds()), "protocol_float_list":
                None if protocol_float_list(config) is None else list(protocol_float_list(config)),
                "skipped": dataset.skips.as_dict()}
    write_report(rows, out, settings)
    return rows


class _ModelContext:
    """Everything the cells of one model share: the float model, its embeddings, its reference."""

    def __init__(self, config, model_type, dataset, detections, eval_ids, options, progress) -> None:
        self.config, self.model_type, self.dataset = config, model_type, dataset
        self.detections, self.eval_ids, self.options, self.progress = detections, eval_ids, options, progress
        checkpoint = config.checkpoints.get(model_type)
        self.float_model: Sam = build_model(model_type, checkpoint, seed=config.seed).to(config.device)
        self.checkpoint_id = weights_id(model_type, checkpoint, config.seed)
        cache_dir = Path(config.out) / "cache" if len(eval_ids) > 64 else None
        self.cache = EmbeddingCache(cache_dir)
        size = image_size(self.float_model)
        self.cache_key = lambda image_id: embedding_key(model_type, self.checkpoint_id, image_id, size)
        self._reference: EvalResult | None = None
        self._calibration: dict[int, tuple] = {}

    def run(self, cell: Cell) -> dict[str, Any]:
        start = time.perf_counter()
        record: dict[str, Any] = {"model": cell.model, "recipe": cell.label, "bits": cell.bits,
                                  "checkpoint": self.checkpoint_id}
        if cell.recipe == FLOAT:
            result = self._evaluate(self.float_model, encoder_float=True, reference=None, label=FLOAT)
            record.update(reference_masks=masks_to_json(result.masks), instance_ious=result.instance_ious,
                          metrics=result.metrics, quantized_sites=0)
        else:
            done = [self._calibrated_run(cell, seed) for seed in self.config.calibration_seeds()]
            runs, result = [run for run, _ in done], done[0][1]
            record.update(float_list=float_list_label(self.config, cell), quantized_sites=runs[0]["quantized_sites"],
                          metrics=mean_metrics([run["metrics"] for run in runs]), runs=runs)
        record.update(num_images=result.num_images, num_prompts=result.num_prompts, skipped=result.skips,
                      seconds=round(time.perf_counter() - start, 3))
        return record

    def _calibrated_run(self, cell: Cell, seed: int) -> tuple[dict[str, Any], EvalResult]:
        """Calibrate a copy of the float model on the set of calibration seed ``seed``, save its
        state and evaluate it: the run's record and its evaluation."""
        model = copy.deepcopy(self.float_model)
        w, a = parse_bits(cell.bits)
        exclude = () if self.config.quantize_encoder else (ENCODER_SITES,)
        calibration_set, samples = self.calibration(seed)
        recipe = cell_recipe(self.config, cell)
        report = calibrate(model, recipe, w, a, samples, exclude, self.progress, search_rows=self.config.search_rows)
        saved = state_path(self.config, cell, seed)
        save_calibrated(model, saved, report, recipe, self.model_type, w, a)
        with quantizing(model):
            result = self._evaluate(model, encoder_float=not self.config.quantize_encoder, reference=self.reference(),
                                    label=f"{cell.label} {cell.bits} (calibration set {seed})")
        calibration = {"images_dir": str(calibration_set.images_dir), "image_ids": report.image_ids,
                       "num_prompts": report.num_prompts, "seconds": report.seconds,
                       "unreached_sites": report.unreached, "bimodal": report.bimodal, "hessian": report.hessian,
                       "state": str(saved)}
        quantized = len(report.quantizers) - len(report.unreached)
        return {"calib_seed": seed, "metrics": result.metrics, "quantized_sites": quantized, "calibration": calibration,
                "instance_ious": result.instance_ious}, result

    def calibration(self, seed: int) -> tuple[CocoDataset, list]:
        """The calibration set and samples of calibration seed ``seed``, loaded once."""
        if seed not in self._calibration:
            self._calibration[seed] = calibration_set(self.config, seed)
        return self._calibration[seed]

    def reference(self) -> EvalResult:
        """The float run's masks (from its cell file when an earlier run wrote it)."""
        if self._reference is None:
            path = Path(self.config.out) / "cells" / Cell(self.model_type, FLOAT, FLOAT).file_name
            data = json.loads(path.read_text())
            self._reference = EvalResult(data["metrics"], masks_from_json(data["reference_masks"]),
                                         data["skipped"], data["num_images"], data["num_prompts"])
        return self._reference

    def _evaluate(self, model: Sam, encoder_float: bool, reference, label: str) -> EvalResult:
        return evaluate(model, self.dataset, self.eval_ids, self.options, self.detections, reference,
                        self.cache if encoder_float else None, self.cache_key, self.progress, label)
