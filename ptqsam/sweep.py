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

from ptqsam.analysis import collect_site_values, site_quantization_error
from ptqsam.calibration import CalibrationSample, calibrate, calibration_samples, load_calibrated, save_calibrated
from ptqsam.config import ExperimentConfig
from ptqsam.data import CocoDataset, generate_dataset
from ptqsam.data.prompts import Detections
from ptqsam.embedding_cache import EmbeddingCache, embedding_key
from ptqsam.evaluation.evaluator import EvalOptions, EvalResult, evaluate
from ptqsam.evaluation.report import FLOAT, degradation_rows, write_report
from ptqsam.instrument.modes import quantizing
from ptqsam.instrument.recipe import load_recipe, parse_bits
from ptqsam.io import write_json_atomic
from ptqsam.models import build_model
from ptqsam.models.checkpoint import checkpoint_sha256
from ptqsam.models.zoo import PACKAGED_WEIGHTS, image_size
from ptqsam.plots import plot_sensitivity, plot_site_histogram

log = logging.getLogger("ptqsam")
ENCODER_PATTERN = "image_encoder.*"
#: generated calibration data uses ``seed`` + this: far from the evaluated data of any nearby seed
CALIBRATION_SEED_OFFSET = 1_000_000


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


def plot_cell_sites(config: ExperimentConfig, cell: Cell, site: str) -> list[Path]:
    """Figures of a finished cell under ``out/plots``: ``site``'s float values with the cell's grid
    over them, and the per-site quantization error (sensitivity) of every calibrated site, both
    measured on the cell's calibration images."""
    model = build_model(cell.model, config.checkpoints.get(cell.model), seed=config.seed).to(config.device)
    info = load_calibrated(model, state_path(config, cell), cell.recipe, cell.model)
    _, samples = sweep_calibration(config)
    values = collect_site_values(model, samples, [site], seed=config.seed)[site].values
    stem = Path(config.out) / "plots" / f"{Path(cell.recipe).stem}_{cell.bits}"
    histogram = plot_site_histogram(values, info.quantizers[site], f"{site} ({cell.recipe} {cell.bits})",
                                    stem.with_name(f"site_{stem.name}"))
    sensitivity = plot_sensitivity(site_quantization_error(model, samples), stem.with_name(f"sensitivity_{stem.name}"))
    return [*histogram, *sensitivity]


def cells(config: ExperimentConfig) -> list[Cell]:
    """The float cell of each model, then every recipe × bits (bit strings normalised)."""
    bits = [_normal_bits(b) for b in config.bits]
    out = []
    for model in config.models:
        out.append(Cell(model, FLOAT, "float"))
        out += [Cell(model, recipe, b) for recipe in config.recipes for b in bits]
    return out


def _normal_bits(text: str) -> str:
    w, a = parse_bits(text)
    return f"W{w}A{a}"


def dataset_for(config: ExperimentConfig) -> CocoDataset:
    """The configured COCO-format dataset, or the synthetic one generated under ``out/data``."""
    if config.images is not None:
        return CocoDataset(config.images, config.annotations)
    return _generated(Path(config.out) / "data", config.synthetic_images, config.seed)


def calibration_dataset_for(config: ExperimentConfig) -> CocoDataset:
    """Where the calibration images come from: the configured calibration set; for generated data,
    a set generated apart under ``out/calib_data`` (so no evaluated image is a calibration image);
    else the evaluated dataset itself, with a warning."""
    if config.calib_images_dir is not None:
        return CocoDataset(config.calib_images_dir, config.calib_annotations)
    if config.images is None:
        return _generated(Path(config.out) / "calib_data", config.calib_images,
                          config.seed + CALIBRATION_SEED_OFFSET)
    log.warning("no calibration set given (calib_images_dir): calibrating on images of the evaluated dataset")
    return dataset_for(config)


def sweep_calibration(config: ExperimentConfig) -> tuple[CocoDataset, list[CalibrationSample]]:
    """The calibration dataset of a sweep and the images (with their prompts) its cells calibrate on."""
    dataset = calibration_dataset_for(config)
    return dataset, calibration_samples(dataset, config.calib_images, config.seed, config.prompt, config.num_points)


def _generated(root: Path, count: int, seed: int) -> CocoDataset:
    """The synthetic dataset under ``root``, generated there unless it already holds ``count`` images."""
    marker = root / "annotations.json"
    if not marker.is_file() or len(json.loads(marker.read_text())["images"]) != count:
        generate_dataset(root, count, seed=seed)
    return CocoDataset(root / "images", marker)


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


def checkpoint_id(model_type: str, checkpoint: str | None, seed: int) -> str:
    """What the weights are: the checkpoint's hash, the packaged weights' hash, or the random seed."""
    if checkpoint:
        return checkpoint_sha256(checkpoint)
    packaged = PACKAGED_WEIGHTS.get(model_type)
    if packaged is not None and Path(packaged).is_file():
        return "packaged-" + checkpoint_sha256(packaged)
    return f"random-seed{seed}"


class _ModelContext:
    """Everything the cells of one model share: the float model, its embeddings, its reference."""

    def __init__(self, config, model_type, dataset, detections, eval_ids, options, progress) -> None:
        self.config, self.model_type, self.dataset = config, model_type, dataset
        self.detections, self.eval_ids, self.options, self.progress = detections, eval_ids, options, progress
        checkpoint = config.checkpoints.get(model_type)
        self.float_model: Sam = build_model(model_type, checkpoint, seed=config.seed).to(config.device)
        self.checkpoint_id = checkpoint_id(model_type, checkpoint, config.seed)
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
            result = self._evaluate(self.float_model, encoder_float=True, reference=None, label="float")
            record["reference_masks"] = _masks_to_json(result.masks)
        else:
            model = copy.deepcopy(self.float_model)
            w, a = parse_bits(cell.bits)
            exclude = () if self.config.quantize_encoder else (ENCODER_PATTERN,)
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
            self._calibration = sweep_calibration(self.config)
        return self._calibration

    def reference(self) -> EvalResult:
        """The float run's masks (from its cell file when an earlier run wrote it)."""
        if self._reference is None:
            path = Path(self.config.out) / "cells" / Cell(self.model_type, FLOAT, "float").file_name
            data = json.loads(path.read_text())
            self._reference = EvalResult(data["metrics"], _masks_from_json(data["reference_masks"]),
                                         data["skipped"], data["num_images"], data["num_prompts"])
        return self._reference

    def _evaluate(self, model: Sam, encoder_float: bool, reference, label: str) -> EvalResult:
        return evaluate(model, self.dataset, self.eval_ids, self.options, self.detections, reference,
                        self.cache if encoder_float else None, self.cache_key, self.progress, label)


def _masks_to_json(masks: dict) -> list[list]:
    return [[image_id, source, ann_id, {"size": rle["size"], "counts": rle["counts"].decode("ascii")}]
            for (image_id, source, ann_id), rle in masks.items()]


def _masks_from_json(entries: list[list]) -> dict:
    return {(image_id, source, ann_id): {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            for image_id, source, ann_id, rle in entries}

