"""Result records: what a sweep cell and an ``evaluate --out`` file keep of an evaluation, and the
float run's record as the reference of another (agreement with its masks, Δ's against it).

A record names its run (``model``, ``recipe``, ``bits``, ``checkpoint``: the weights' id) and holds
its ``metrics``, the counts (``num_images``, ``num_prompts``, ``skipped``) and the IoU of every
evaluated instance; a float run's record also holds its predicted masks (``reference_masks``). Its
``fingerprint`` says under which settings it was made; ``fingerprint.settings.evaluation`` (images,
prompt, mask and scoring options, detections) is what two records must share to be compared.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from ptqsam.constants import FLOAT
from ptqsam.data.coco import CocoDataset
from ptqsam.data.selection import data_fingerprint
from ptqsam.errors import PtqsamError
from ptqsam.evaluation.evaluator import EvalOptions, EvalResult, masks_from_json, masks_to_json
from ptqsam.evaluation.report import degradation_rows
from ptqsam.fingerprint import file_sha256, fingerprint

#: the fields of a record too long to print (per instance; files keep them)
PER_INSTANCE = ("instance_ious", "reference_masks")
#: the keys a record needs to be a reference (a float run with its masks)
REFERENCE_KEYS = ("metrics", "reference_masks", "skipped", "num_images", "num_prompts")


def evaluation_settings(dataset: CocoDataset, image_ids: Sequence[int], options: EvalOptions,
                        detections: str | None) -> dict[str, Any]:
    """The evaluation part of a record's fingerprint: the images (data fingerprint), the options and
    the detections file's SHA-256."""
    return {"data": data_fingerprint(dataset, image_ids), **asdict(options),
            "detections": file_sha256(detections) if detections else None}


def result_fields(result: EvalResult, reference: bool) -> dict[str, Any]:
    """What a record keeps of an evaluation: metrics, per-instance IoUs and counts; a float run
    (``reference``) also its masks, the reference of other runs' agreement."""
    fields: dict[str, Any] = {"metrics": result.metrics, "instance_ious": result.instance_ious}
    if reference:
        fields["reference_masks"] = masks_to_json(result.masks)
    return {**fields, **counts(result)}


def counts(result: EvalResult) -> dict[str, Any]:
    """The images, prompts and skipped data of an evaluation, as a record keeps them."""
    return {"num_images": result.num_images, "num_prompts": result.num_prompts, "skipped": result.skips}


def reference_result(record: Mapping[str, Any]) -> EvalResult:
    """The float run of ``record`` as the reference of an evaluation (its masks, metrics, counts)."""
    return EvalResult(record["metrics"], masks_from_json(record["reference_masks"]), record["skipped"],
                      record["num_images"], record["num_prompts"], record.get("instance_ious", []))


def check_reference(reference: Mapping[str, Any], model: str, weights: str, evaluation: Mapping[str, Any],
                    where: str) -> None:
    """PtqsamError (naming ``where``) unless the float run's record ``reference``
    (:func:`read_float_record`) is of ``model`` with ``weights`` under the same evaluation settings."""
    theirs = reference["fingerprint"].get("settings", {}).get("evaluation", {})
    differ = [f"evaluation.{key}" for key in sorted(set(theirs) | set(evaluation))
              if theirs.get(key) != evaluation.get(key)]
    differ += [name for name, mine, other in (("model", model, reference["model"]),
                                              ("checkpoint", weights, reference["checkpoint"])) if mine != other]
    if differ:
        raise PtqsamError(f"{where} was evaluated under other settings ({', '.join(differ)} differ): "
                          "evaluate the float model on the same images, prompts and options")


def evaluation_record(named: Mapping[str, Any], image_ids: Sequence[int], result: EvalResult,
                      float_record: Mapping[str, Any] | None = None, reference: str | None = None) -> dict[str, Any]:
    """The record of an evaluation (``ptqsam evaluate --out``), shaped as a sweep cell's.

    ``named`` says what was evaluated: ``model``, ``weights`` (the weights' id), ``checkpoint_path``,
    ``state``, ``recipe``, ``bits`` (and what else the state names) and ``evaluation``
    (:func:`evaluation_settings`); all but the path make the record's fingerprint. The record adds
    the prompt kind, the image ids and :func:`result_fields` (a float run keeps its masks); with the
    float run's record ``float_record`` (read from ``reference``), ``against_reference``: the Δ's
    against it and the bootstrap interval of Δ mIoU, as a report row has them.
    """
    settings = {key: value for key, value in named.items() if key != "checkpoint_path"}
    evaluation = named["evaluation"]
    record = {"model": named["model"], "recipe": named["recipe"], "bits": named["bits"], "checkpoint": named["weights"],
              **{key: value for key, value in named.items() if key not in ("model", "recipe", "bits", "weights",
                                                                         "evaluation")},
              "prompt": evaluation["prompt"], "image_ids": list(image_ids),
              **result_fields(result, reference=named["recipe"] == FLOAT)}
    if float_record is not None:
        rows = degradation_rows([float_record, {**record, "recipe": "evaluated"}], evaluation["seed"])
        row = next(row for row in rows if row["recipe"] != FLOAT)
        record["against_reference"] = {"reference": reference,
                                       **{key: value for key, value in row.items() if key.startswith("delta_")}}
    return {**record, "fingerprint": fingerprint(settings)}


def read_float_record(path: str | Path, what: str) -> dict[str, Any]:
    """The record of a float run in the file ``path`` (given as the option ``what``): an ``evaluate
    --out`` file of the float model or a sweep's float cell; PtqsamError for anything else."""
    record = read_record(path, what)
    missing = [key for key in ("model", "recipe", "checkpoint", "fingerprint", *REFERENCE_KEYS) if key not in record]
    if missing:
        raise PtqsamError(f"{what} {path} is not the record of a float run (an `evaluate --out` file of the float "
                          f"model, or a sweep's float cell): it lacks {missing}")
    if record["recipe"] != FLOAT:
        raise PtqsamError(f"{what} {path} is a {record['recipe']} run, not a float one")
    return record


def read_record(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON record in the file ``path`` (given as the option ``what``)."""
    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PtqsamError(f"{what} {path} not found") from None
    except (OSError, ValueError) as error:
        raise PtqsamError(f"{what} {path} cannot be read: {error}") from None
    if not isinstance(record, dict):
        raise PtqsamError(f"{what} {path} is not a JSON object")
    return record
