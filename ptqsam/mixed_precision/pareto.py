"""Cost against accuracy: calibrate and evaluate uniform and mixed-precision recipes side by side.

Every recipe is calibrated from scratch on the same calibration images (a mixed recipe through the
recipe system, as a user would run it) and evaluated on the same images and prompts as the float
model; its costs (:mod:`.costs`) come from the bits its calibrated quantizers hold, with averages
over every site any of the recipes quantizes. A :class:`RunCache` keeps each run's result, so that
adding a recipe to a table runs that recipe only.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from segment_anything.modeling import Sam

from ptqsam.calibration.runner import calibrate
from ptqsam.constants import FLOAT
from ptqsam.data.coco import CocoDataset
from ptqsam.data.samples import CalibrationSample
from ptqsam.evaluation.evaluator import EvalOptions, EvalResult, evaluate, masks_from_json, masks_to_json
from ptqsam.fingerprint import changed_settings
from ptqsam.instrument import Recipe, attached_quantizers, instrument, quantizing
from ptqsam.io import json_text, write_json_atomic, write_or_rescue, write_text_atomic
from ptqsam.mixed_precision.costs import COST_KINDS, model_costs

log = logging.getLogger("ptqsam")
COLUMNS = ("label", "recipe", "bits", *COST_KINDS, "miou", "delta_miou", "agreement")


@dataclass(frozen=True)
class RecipeRun:
    """One recipe to calibrate: ``w_bits``/``a_bits`` fill its placeholders (a mixed recipe has none;
    then ``bits`` is ``"mixed"``)."""

    label: str
    recipe: Recipe
    w_bits: int
    a_bits: int
    bits: str


def pareto_rows(
    model: Sam,
    runs: Sequence[RecipeRun],
    samples: Sequence[CalibrationSample],
    dataset: CocoDataset,
    image_ids: Sequence[int] | None = None,
    options: EvalOptions = EvalOptions(),
    search_rows: int | None = None,
    progress: bool = True,
    cache: RunCache | None = None,
) -> list[dict[str, Any]]:
    """A row per run (and one for the float model, first): costs, mIoU, Δ mIoU, agreement. With a
    ``cache``, runs it already holds (same recipe, bits and settings) are not run again."""
    instrument(model)
    cache = cache or RunCache(None, {})
    floats = cache.get(FLOAT, {}, 0, 0)
    if floats is None:
        result = evaluate(model, dataset, image_ids, options, progress=progress, description=FLOAT)
        floats = cache.put(FLOAT, {}, 0, 0, {}, result.metrics, masks_to_json(result.masks))
    reference = EvalResult(floats["metrics"], masks_from_json(floats["masks"]), {}, 0, 0)
    measured = []
    for run in runs:
        record = cache.get(run.label, run.recipe.to_dict(), run.w_bits, run.a_bits)
        if record is None:
            calibrated = copy.deepcopy(model)
            calibrate(calibrated, run.recipe, run.w_bits, run.a_bits, samples, progress=progress,
                      search_rows=search_rows)
            bits = {name: q.spec.bits for name, q in attached_quantizers(calibrated).items()}
            with quantizing(calibrated):
                result = evaluate(calibrated, dataset, image_ids, options, reference=reference, progress=progress,
                                  description=run.label)
            record = cache.put(run.label, run.recipe.to_dict(), run.w_bits, run.a_bits, bits, result.metrics)
        measured.append((run, record["bits_by_site"], record["metrics"]))
    costs = model_costs(model, {site for _, bits, _ in measured for site in bits})
    float_miou = floats["metrics"]["miou"]
    rows = [_row(FLOAT, FLOAT, FLOAT, costs.of({}), floats["metrics"], float_miou)]
    for run, bits, metrics in measured:
        rows.append(_row(run.label, run.recipe.name, run.bits, costs.of(bits), metrics, float_miou))
    return rows


class RunCache:
    """Each run's result as ``<folder>/<label>.json`` (atomic), reused while its recipe, bits and
    ``key`` (the data and protocol settings) are the same; ``folder`` None keeps nothing.

    Arguments:
      folder: where the records live.
      key: plain data naming the settings the results depend on (images, prompts, seed, ...).
    """

    def __init__(self, folder: str | Path | None, key: dict[str, Any]) -> None:
        self.folder, self.key = (None if folder is None else Path(folder)), key

    def get(self, label: str, recipe: dict, w_bits: int, a_bits: int) -> dict[str, Any] | None:
        """The record of ``label`` when it was made under these settings, else None (a record that
        cannot be read, or made under other settings, is run again with a warning naming why)."""
        path = self._path(label)
        if path is None or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            if not all(key in record for key in ("bits_by_site", "metrics")):
                raise ValueError("incomplete record")
        except (OSError, ValueError, TypeError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("pareto run %s: cannot read %s (%s); running it again", label, path, error)
            return None
        current = {"key": self.key, "recipe": recipe, "w_bits": w_bits, "a_bits": a_bits}
        changed = changed_settings({k: record.get(k) for k in current}, current)
        if changed:
            log.warning("pareto run %s: %s made under other settings (%s); running it again", label, path,
                        ", ".join(changed[:5]))
            return None
        return record

    def put(self, label: str, recipe: dict, w_bits: int, a_bits: int, bits_by_site: dict[str, int],
            metrics: dict[str, Any], masks: list | None = None) -> dict[str, Any]:
        record = {"key": self.key, "label": label, "recipe": recipe, "w_bits": w_bits, "a_bits": a_bits,
                  "bits_by_site": bits_by_site, "metrics": metrics, **({"masks": masks} if masks is not None else {})}
        path = self._path(label)
        if path is not None:
            write_json_atomic(path, record)
        return json.loads(json.dumps(record))  # what a later get() returns

    def _path(self, label: str) -> Path | None:
        return None if self.folder is None else self.folder / (re.sub(r"[^A-Za-z0-9.]+", "_", label) + ".json")


def _row(label: str, recipe: str, bits: str, costs: dict[str, float], metrics: dict[str, Any],
         float_miou: float) -> dict[str, Any]:
    return {"label": label, "recipe": recipe, "bits": bits, **costs, "miou": metrics["miou"],
            "delta_miou": metrics["miou"] - float_miou, "agreement": metrics.get("agreement")}


def write_pareto(rows: Sequence[dict[str, Any]], out_dir: str | Path, settings: dict[str, Any]) -> list[Path]:
    """``pareto.json`` (rows and settings), ``pareto.csv`` and ``pareto.md`` under ``out_dir``."""
    out = Path(out_dir)
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    data = json_text({"settings": settings, "rows": list(rows)})
    return [write_or_rescue(out / "pareto.json", lambda file: file.write(data)),
            write_text_atomic(out / "pareto.csv", text.getvalue()),
            write_text_atomic(out / "pareto.md", pareto_markdown(rows))]


def pareto_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table (float row first)."""
    lines = ["| recipe | bits | avg W bits | avg A bits | size (MB) | GBOPs | mIoU | Δ mIoU | agreement |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        agreement = "–" if r["agreement"] is None else f"{r['agreement']:.3f}"
        delta = "–" if r["label"] == FLOAT else f"{r['delta_miou']:+.4f}"
        lines.append(f"| {r['label']} | {r['bits']} | {r['weight_bits']:.2f} | {r['activation_bits']:.2f} | "
                     f"{r['size_mb']:.3f} | {r['gbops']:.2f} | {r['miou']:.4f} | {delta} | {agreement} |")
    return "\n".join(lines) + "\n"
