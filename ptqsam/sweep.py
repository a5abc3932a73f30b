"""Sweeps: models × recipes × bit-widths over one dataset, one atomic result file per cell.

Re-running the same sweep skips the cells already written and completes the rest; an interrupted
run leaves no half-written file. The float run of each model is a cell too (recipe ``float``): it
is the baseline of the degradation report and the reference of the agreement metric.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segment_anything.modeling import Sam

from ptqsam.bits import normal_bits, parse_bits
from ptqsam.calibration import CalibrationSample, calibrate, save_calibrated
from ptqsam.config import ExperimentConfig
from ptqsam.constants import FLOAT
from ptqsam.data import CocoDataset
from ptqsam.data.prompts import Detections
from ptqsam.data.selection import calibration_set, dataset_for
from ptqsam.embedding_cache import EmbeddingCache, embedding_key
from ptqsam.evaluation.evaluator import EvalOptions, EvalResult, evaluate, masks_from_json, masks_to_json
from ptqsam.evaluation.report import degradation_rows, write_report
from ptqsam.instrument.modes import quantizing
from ptqsam.instrument.recipe import load_recipe
from ptqsam.io import write_json_atomic
from ptqsam.models import build_model
from ptqsam.models.blocks import ENCODER_SITES
from ptqsam.models.zoo import image_size, weights_id

log = logging.getLogger("ptqsam")


@dataclass(frozen=True)
class Cell:
    """One (model, recipe, bits) run; ``recipe == "float"`` is the baseline."""

    model: str
    recipe: str
    bits: str

    @property
    def file_name(self) -> str:
        recipe = Path(self.recipe).stem if self.recipe.endswith((".yaml", ".yml")) else self.recipe
        return f"{self.model}__{recipe}__{self.bits}.json"


def state_path(config: ExperimentConfig, cell: Cell) -> Path:
    """Where a sweep saves the calibrated state of ``cell``."""
    return Path(config.out) / "states" / cell.file_name.replace(".json", ".pt")


def cells(config: ExperimentConfig) -> list[Cell]:
    """The float cell of each model, then every recipe × bits (bit strings normalised)."""
    bits = [normal_bits(b) for b in config.bits]
    out = []
    for model in config.models:
        out.append(Cell(model, FLOAT, FLOAT))
        out += [Cell(model, recipe, b) for recipe in config.recipes for b in bits]
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
    rows = degradation_rows(runs)
    settings = {**config.to_dict(), "checkpoint_ids": checkpoints, "eval_image_ids": eval_ids,
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
        self._calibration: tuple[CocoDataset, list[CalibrationSample]] | None = None

    def run(self, cell: Cell) -> dict[str, Any]:
        start = time.perf_counter()
        record: dict[str, Any] = {"model": cell.model, "recipe": cell.recipe, "bits": cell.bits,
                                  "checkpoint": self.checkpoint_id}
        if cell.recipe == FLOAT:
            result = self._evaluate(self.float_model, encoder_float=True, reference=None, label=FLOAT)
            record["reference_masks"] = masks_to_json(result.masks)
        else:
            model = copy.deepcopy(self.float_model)
            w, a = parse_bits(cell.bits)
            exclude = () if self.config.quantize_encoder else (ENCODER_SITES,)
            calibration_set, samples = self.calibration()
            report = calibrate(model, cell.recipe, w, a, samples, exclude, self.progress,
                               search_rows=self.config.search_rows)
            saved = state_path(self.config, cell)
            save_calibrated(model, saved, report, cell.recipe, self.model_type, w, a)
            record["calibration"] = {"images_dir": str(calibration_set.images_dir), "image_ids": report.image_ids,
                                     "num_prompts": report.num_prompts,
                                     "seconds": report.seconds, "unreached_sites": report.unreached,
                                     "bimodal": report.bimodal, "state": str(saved)}
            with quantizing(model):
                result = self._evaluate(model, encoder_float=not self.config.quantize_encoder,
                                        reference=self.reference(), label=f"{cell.recipe} {cell.bits}")
        record.update(metrics=result.metrics, num_images=result.num_images, num_prompts=result.num_prompts,
                      skipped=result.skips, seconds=round(time.perf_counter() - start, 3))
        return record

    def calibration(self) -> tuple[CocoDataset, list[CalibrationSample]]:
        """The calibration set and samples, loaded by the first quantized cell."""
        if self._calibration is None:
            self._calibration = calibration_set(self.config)
        return self._calibration

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
