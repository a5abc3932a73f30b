"""Sweeps: models × recipes × bit-widths over one dataset, one atomic result file per cell.

Re-running the same sweep skips the cells already written and completes the rest; an interrupted
run leaves no half-written file. The float run of each model is a cell too (recipe ``float``): it
is the baseline of the degradation report and the reference of the agreement metric.

Each cell records the fingerprint of the settings that made it (:mod:`ptqsam.fingerprint`: model,
checkpoint content, recipe content, bits, calibration images and their data, evaluated images and
their data, prompt, mask and scoring options, seed, ptqsam version). A cell file whose fingerprint
differs from the current settings, or that cannot be read (zero bytes, invalid JSON), is computed
again with a warning naming what changed, and overwritten: a result is never reported under
settings that did not make it.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from segment_anything.modeling import Sam

from ptqsam.bits import normal_bits, parse_bits
from ptqsam.calibration import CalibrationSample, calibrate, calibrated_quantizing, save_calibrated
from ptqsam.config import ExperimentConfig
from ptqsam.constants import FLOAT
from ptqsam.data import CocoDataset
from ptqsam.data.prompts import Detections
from ptqsam.data.selection import calibration_set, data_fingerprint, dataset_for
from ptqsam.embedding_cache import EmbeddingCache, embedding_key
from ptqsam.errors import ConfigError
from ptqsam.evaluation.evaluator import EvalOptions, EvalResult, evaluate, masks_from_json, masks_to_json
from ptqsam.evaluation.report import degradation_rows, write_report
from ptqsam.fingerprint import file_sha256, fingerprint, mismatch
from ptqsam.instrument.recipe import load_recipe
from ptqsam.io import json_text, write_or_rescue
from ptqsam.models import build_model
from ptqsam.models.blocks import ENCODER_SITES
from ptqsam.models.zoo import image_size, weights_id
from ptqsam.preflight import check_device, check_output_folder, check_recipes

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
    """The float cell of each model, then every recipe × its bits (``recipe_bits`` or ``bits``,
    normalised)."""
    out = []
    for model in config.models:
        out.append(Cell(model, FLOAT, FLOAT))
        for recipe in config.recipes:
            out += [Cell(model, recipe, normal_bits(b)) for b in config.recipe_bits.get(recipe, config.bits)]
    return out


def run_sweep(config: ExperimentConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Run every missing cell (and every cell made under other settings), then write
    ``report.{json,csv,md}``; returns the report rows."""
    todo = _preflight(config)
    out = Path(config.out)
    dataset = dataset_for(config)
    detections = Detections(config.detections) if config.detections else None
    eval_ids = dataset.image_ids[: config.eval_images] if config.eval_images else list(dataset.image_ids)
    options = EvalOptions(config.prompt, config.num_points, config.multimask, config.score_with_iou, config.seed)
    evaluation = {"data": data_fingerprint(dataset, eval_ids), **asdict(options),
                  "detections": file_sha256(config.detections) if config.detections else None}
    runs, checkpoints = [], {}
    for model_type in config.models:
        context = _ModelContext(config, model_type, dataset, detections, eval_ids, options, progress, evaluation)
        checkpoints[model_type] = context.checkpoint_id
        for cell in [c for c in todo if c.model == model_type]:
            path = out / "cells" / cell.file_name
            stamp = context.fingerprint(cell)
            record = _finished(path, stamp, cell)
            if record is None:
                record = {**context.run(cell), "fingerprint": stamp}
                write_or_rescue(path, lambda file, data=record: file.write(json_text(data)))
            runs.append(record)
    rows = degradation_rows(runs)
    settings = {**config.to_dict(), "checkpoint_ids": checkpoints, "eval_image_ids": eval_ids,
                "skipped": dataset.skips.as_dict(),
                "cell_fingerprints": {f"{r['model']}/{r['recipe']}/{r['bits']}": r["fingerprint"]["hash"] for r in runs}}
    write_report(rows, out, settings)
    return rows


def _preflight(config: ExperimentConfig) -> list[Cell]:
    """The cells to run, after the checks that need no work: device, results folder, recipes
    against every model, and one cell file per cell."""
    check_device(config.device)
    check_output_folder(config.out, "results folder")
    check_recipes(config.recipes, config.models)
    todo = cells(config)
    names = [cell.file_name for cell in todo]
    shared = sorted({cell.recipe for cell in todo if names.count(cell.file_name) > 1})
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
    log.info("cell %s already done: skipped", path.name)
    return record


class _ModelContext:
    """Everything the cells of one model share: the float model, its embeddings, its reference."""

    def __init__(self, config, model_type, dataset, detections, eval_ids, options, progress, evaluation) -> None:
        self.config, self.model_type, self.dataset = config, model_type, dataset
        self.detections, self.eval_ids, self.options, self.progress = detections, eval_ids, options, progress
        self.evaluation = evaluation
        checkpoint = config.checkpoints.get(model_type)
        self.float_model: Sam = build_model(model_type, checkpoint, seed=config.seed).to(config.device)
        self.checkpoint_id = weights_id(model_type, checkpoint, config.seed)
        cache_dir = Path(config.out) / "cache" if len(eval_ids) > 64 else None
        self.cache = EmbeddingCache(cache_dir)
        size = image_size(self.float_model)
        data_id = evaluation["data"]["annotations"]
        self.cache_key = lambda image_id: embedding_key(model_type, self.checkpoint_id, image_id, size, data_id)
        self._reference: EvalResult | None = None
        self._calibration: tuple[CocoDataset, list[CalibrationSample]] | None = None

    def fingerprint(self, cell: Cell) -> dict[str, Any]:
        """The fingerprint of the settings that make ``cell``'s result."""
        settings: dict[str, Any] = {"model": cell.model, "weights": self.checkpoint_id, "recipe": FLOAT,
                                    "bits": cell.bits, "evaluation": self.evaluation}
        if cell.recipe != FLOAT:
            settings.update(recipe=load_recipe(cell.recipe).to_dict(), quantize_encoder=self.config.quantize_encoder,
                            calibration=self.calibration_settings())
        return fingerprint(settings)

    def calibration_settings(self) -> dict[str, Any]:
        """What the calibration of every quantized cell of this model depends on."""
        dataset, samples = self.calibration()
        return {"data": data_fingerprint(dataset, [s.image_id for s in samples]), "images": self.config.calib_images,
                "prompt": self.config.prompt, "num_points": self.config.num_points, "seed": self.config.seed,
                "search_rows": self.config.search_rows, "reconstruction": self.config.reconstruction}

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
                               search_rows=self.config.search_rows, reconstruction=self.config.reconstruction)
            saved = state_path(self.config, cell)
            save_calibrated(model, saved, report, cell.recipe, self.model_type, w, a,
                            {"calibration": self.calibration_settings(), "quantize_encoder": self.config.quantize_encoder})
            record["calibration"] = {"images_dir": str(calibration_set.images_dir), "image_ids": report.image_ids,
                                     "num_prompts": report.num_prompts,
                                     "seconds": report.seconds, "unreached_sites": report.unreached,
                                     "bimodal": report.bimodal, "reconstruction": report.reconstruction,
                                     "passes": report.passes,
                                     "state": str(saved)}
            if report.reference_drop_bug is not None:
                record["reference_drop_bug"] = True
                log.warning("%s %s reproduces PTQ4SAM's drop bug: its numbers are marked", cell.recipe, cell.bits)
            with calibrated_quantizing(model, report.extra_state()):
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
