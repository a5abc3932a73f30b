"""Cost against accuracy: calibrate and evaluate uniform and mixed-precision recipes side by side.

Every recipe is calibrated from scratch on the same calibration images (a mixed recipe through the
recipe system, as a user would run it) and evaluated on the same images and prompts as the float
model; its costs (:mod:`.costs`) come from the bits its calibrated quantizers hold, with averages
over every site any of the recipes quantizes.
"""

from __future__ import annotations

import copy
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from segment_anything.modeling import Sam

from ptqsam.calibration.runner import calibrate
from ptqsam.constants import FLOAT
from ptqsam.data.coco import CocoDataset
from ptqsam.data.samples import CalibrationSample
from ptqsam.evaluation.evaluator import EvalOptions, evaluate
from ptqsam.instrument import Recipe, attached_quantizers, instrument, quantizing
from ptqsam.io import write_json_atomic, write_text_atomic
from ptqsam.mixed_precision.costs import COST_KINDS, model_costs

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
) -> list[dict[str, Any]]:
    """A row per run (and one for the float model, first): costs, mIoU, Δ mIoU, agreement."""
    instrument(model)
    reference = evaluate(model, dataset, image_ids, options, progress=progress, description=FLOAT)
    measured = []
    for run in runs:
        calibrated = copy.deepcopy(model)
        calibrate(calibrated, run.recipe, run.w_bits, run.a_bits, samples, progress=progress, search_rows=search_rows)
        bits = {name: q.spec.bits for name, q in attached_quantizers(calibrated).items()}
        with quantizing(calibrated):
            result = evaluate(calibrated, dataset, image_ids, options, reference=reference, progress=progress,
                              description=run.label)
        measured.append((run, bits, result.metrics))
    costs = model_costs(model, {site for _, bits, _ in measured for site in bits})
    rows = [_row(FLOAT, FLOAT, FLOAT, costs.of({}), reference.metrics, reference.metrics["miou"])]
    for run, bits, metrics in measured:
        rows.append(_row(run.label, run.recipe.name, run.bits, costs.of(bits), metrics, reference.metrics["miou"]))
    return rows


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
    return [write_json_atomic(out / "pareto.json", {"settings": settings, "rows": list(rows)}),
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
