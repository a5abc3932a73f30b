"""The mixed-precision commands as library calls: allocate from a sensitivity study, accuracy
control, and the cost-against-mIoU table; each reads its inputs, runs and writes its files."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Collection, Sequence

from segment_anything.modeling import Sam

from ptqsam.analysis.sensitivity import SensitivityResult
from ptqsam.bits import bits_label, parse_bits
from ptqsam.calibration.runner import calibrate
from ptqsam.config import ExperimentConfig
from ptqsam.constants import FLOAT
from ptqsam.data.samples import choose_image_ids
from ptqsam.data.selection import calibration_set, data_fingerprint, dataset_for
from ptqsam.errors import AllocationError, RecipeError
from ptqsam.evaluation.evaluator import EvalOptions, evaluate
from ptqsam.fingerprint import fingerprint
from ptqsam.instrument import Recipe, load_recipe
from ptqsam.instrument.recipe import BITS_PLACEHOLDERS
from ptqsam.io import json_text, write_or_rescue
from ptqsam.mixed_precision.allocation import Allocation, allocate, group_choices, parse_budget
from ptqsam.mixed_precision.control import HeldOutMeasure, accuracy_control, ranked_groups
from ptqsam.mixed_precision.costs import ModelCosts, model_costs
from ptqsam.mixed_precision.pareto import RecipeRun, RunCache, pareto_rows, write_pareto
from ptqsam.mixed_precision.recipes import mixed_recipe, write_recipe
from ptqsam.models.zoo import built_model, weights_id
from ptqsam.plots.precision import MIXED, plot_pareto

#: Uniform bit-widths whose costs a written recipe lists for comparison.
REFERENCE_BITS = ((4, 4), (6, 6), (8, 8))


def study_model(result: SensitivityResult, device: str = "cpu") -> Sam:
    """The float model a sensitivity study written by ``ptqsam sensitivity`` measured (its model
    type, checkpoint and seed); an AllocationError when the study does not record it, or when its
    weights are not the study's (the checkpoint file changed since)."""
    settings = result.settings
    missing = [key for key in ("model", "checkpoint", "weights", "config") if key not in settings]
    if missing:
        raise AllocationError(f"the study does not record its model ({', '.join(missing)} missing): write it with "
                              "`ptqsam sensitivity`, or pass the model")
    seed = settings["config"]["seed"]
    weights = weights_id(settings["model"], settings["checkpoint"], seed)
    if weights != settings["weights"]:
        raise AllocationError(f"the study measured weights {settings['weights']}, but {settings['model']} with "
                              f"checkpoint {settings['checkpoint']} and seed {seed} has weights {weights}")
    return built_model(settings["model"], settings["checkpoint"], seed, device)


def study_costs(result: SensitivityResult, model: Sam) -> ModelCosts:
    """The costs of ``model`` over the sites the study's groups hold."""
    return model_costs(model, {site for group in result.groups for site in group.sites})


def allocate_study(result: SensitivityResult, model: Sam, budget_texts: Sequence[str], metric: str,
                   name: str | None = None, candidates: Collection[int] | None = None
                   ) -> tuple[Allocation, Recipe, list[str]]:
    """Allocate bits (among ``candidates``, default: every measured bit-width) to the study's
    groups under the budgets (:func:`~.allocation.parse_budget` texts): the allocation, the mixed
    recipe and the comments to write above it (budgets, predicted costs; see
    :func:`~.recipes.write_recipe`)."""
    costs = study_costs(result, model)
    budgets = [budget for text in budget_texts for budget in parse_budget(text, costs)]
    allocation = allocate(result.groups, group_choices(result, metric, candidates), costs, budgets)
    base = Recipe.from_dict(result.settings["recipe"])
    name = name or f"{base.name}-mixed-" + "-".join(_slug(text) for text in budget_texts)
    description = (f"{base.name} with bits per site chosen by ptqsam allocate: {metric} sensitivity "
                   f"({result.settings['granularity']} groups), budgets {_budgets(allocation)}")
    comments = [f"Mixed-precision recipe written by `ptqsam allocate` (base recipe {base.name}).",
                f"Sensitivity: {metric}, {result.settings['granularity']} groups, roles {result.settings['roles']}, "
                f"measured at {result.settings['bits']} on calibration images {result.settings['image_ids']}"
                + ("." if candidates is None else f"; candidate bits {sorted(candidates)}.")
                + f" Study fingerprint {fingerprint(result.settings)['hash']}.",
                f"Budget: {_budgets(allocation)}.",
                f"Predicted cost: {_costs(allocation.costs)}.",
                f"Predicted summed sensitivity: {allocation.sensitivity:.6g}.",
                *_reference_costs(costs)]
    return allocation, mixed_recipe(base, allocation.bits_by_site, name, description), comments


def control_bits(start: str, raise_to: str) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """Accuracy control's bit labels as bits: ``start`` (``"W4A4"``) and ``raise_to`` (a label, or
    ``"float"``: None)."""
    return parse_bits(start), None if raise_to.strip().lower() == FLOAT else parse_bits(raise_to)


def check_control(target: float, control_images: int, max_steps: int | None) -> None:
    """An AllocationError naming the first accuracy-control setting out of range."""
    if not (target >= 0 and math.isfinite(target)):
        raise AllocationError(f"target must be a finite number >= 0, got {target}")
    if control_images < 1:
        raise AllocationError(f"control_images must be >= 1, got {control_images}")
    if max_steps is not None and max_steps < 0:
        raise AllocationError(f"max_steps must be >= 0, got {max_steps}")


def write_control(out: str | Path, summary: dict[str, Any], recipe: Recipe, comments: Sequence[str]) -> None:
    """``recipe.yaml`` and ``control.json`` (the summary) of :func:`control_study` under ``out``."""
    write_recipe(Path(out) / "recipe.yaml", recipe, comments)
    write_or_rescue(Path(out) / "control.json", lambda file: file.write(json_text(summary)))


def control_study(result: SensitivityResult, model: Sam, config: ExperimentConfig, low: tuple[int, int],
                  high: tuple[int, int] | None, target: float, control_images: int, max_steps: int | None,
                  metric: str, recipe_path: Path) -> tuple[dict[str, Any], Recipe, list[str]]:
    """Accuracy control (:func:`~.control.accuracy_control`) of the study's groups: calibrates the
    base recipe at ``low`` and ``high`` on the study's calibration images, decides on
    ``control_images`` images of the evaluated set and verifies on the others. Returns the summary
    (naming ``recipe_path``), the recipe and the comments to write above it."""
    check_control(target, control_images, max_steps)
    base = Recipe.from_dict(result.settings["recipe"])
    calibration, samples = calibration_set(config)
    ids = [s.image_id for s in samples]
    if ids != result.settings["image_ids"] or result.settings.get("data", None) not in (
            None, data_fingerprint(calibration, ids)):
        raise AllocationError("the calibration images differ from the study's: run both with the same data and seed")
    dataset = dataset_for(config)
    control_ids = choose_image_ids(dataset, control_images, config.seed)
    verify_ids = [i for i in dataset.image_ids if i not in set(control_ids)]
    if not verify_ids:
        raise AllocationError(f"--control-images {control_images} leaves no image of {len(dataset.image_ids)} to verify on")
    options = eval_options(config)
    calibrated = []
    for w_bits, a_bits in dict.fromkeys(b for b in (low, high) if b is not None):
        calibrated.append(copy.deepcopy(model))
        calibrate(calibrated[-1], base, w_bits, a_bits, samples, result.settings["exclude"], progress=False,
                  search_rows=result.settings["search_rows"],
                  reconstruction=result.settings.get("reconstruction") or None)  # as the study calibrated
    measures = {name: HeldOutMeasure(calibrated, dataset, ids, options,
                                     evaluate(model, dataset, ids, options, progress=False).metrics["miou"])
                for name, ids in (("control", control_ids), ("verify", verify_ids))}
    costs = study_costs(result, model)
    control = accuracy_control(ranked_groups(result, *low, metric), low, high, measures["control"], target, costs,
                               max_steps)
    raise_label = FLOAT if high is None else bits_label(*high)
    recipe = mixed_recipe(base, control.bits_by_site, f"{base.name}-control-{_slug(str(target))}",
                          f"{base.name} from uniform {bits_label(*low)}, groups raised to {raise_label} by "
                          f"ptqsam accuracy-control until the mIoU loss <= {target}")
    last = control.steps[-1]
    comments = [f"Accuracy control from uniform {bits_label(*low)}: raised {len(control.steps) - 1} group(s) to "
                f"{raise_label}; target mIoU loss <= {target} on images {control_ids}: "
                f"{'reached' if control.reached else 'NOT reached'} (delta {last.delta_miou:+.4f}).",
                f"Predicted cost: {_costs(last.costs)}.", *_reference_costs(costs)]
    summary = {"recipe": str(recipe_path), "reached": control.reached, "target": target, "start": bits_label(*low),
               "raise_to": raise_label, "control_images": control_ids, "verify_images": len(verify_ids),
               "steps": [s.to_dict() for s in control.steps],
               "verify_delta_miou": {"start": measures["verify"](control.start_bits),
                                     "final": measures["verify"](control.bits_by_site)}}
    return summary, recipe, comments


def pareto_study(model: Sam, config: ExperimentConfig, recipe: str, bits: Sequence[tuple[int, int]],
                 mixed: Sequence[str], out: Path, weights: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """:func:`~.pareto.pareto_rows` of ``recipe`` at each uniform bit-width and of each mixed recipe
    YAML, on the configured data, and the settings they were made under. Each run's result is kept
    under ``out/runs``, reused by a later call with the same settings, data and ``weights``
    (:func:`~ptqsam.models.zoo.weights_id` of ``model``)."""
    base = load_recipe(recipe)
    runs = [RecipeRun(f"{base.name} {bits_label(w, a)}", base, w, a, bits_label(w, a)) for w, a in bits]
    runs += [RecipeRun(Path(path).stem, _explicit(load_recipe(path), path), 8, 8, MIXED) for path in mixed]
    if not runs:
        raise AllocationError("nothing to compare: give uniform bits or mixed recipes")
    calibration, samples = calibration_set(config)
    dataset = dataset_for(config)
    ids = dataset.image_ids[: config.eval_images] if config.eval_images else None
    settings = {**{k: v for k, v in config.to_dict().items() if k not in ("out", "recipes", "bits")},
                "weights": weights, "data": data_fingerprint(dataset, ids or dataset.image_ids),
                "calibration_data": data_fingerprint(calibration, [s.image_id for s in samples])}
    rows = pareto_rows(model, runs, samples, dataset, ids, eval_options(config), config.search_rows,
                       cache=RunCache(out / "runs", settings))
    return rows, {"config": config.to_dict(), "weights": weights, "data": settings["data"],
                  "calibration_data": settings["calibration_data"], "base_recipe": base.name,
                  "recipes": {r.label: r.recipe.to_dict() for r in runs}}


def pareto_run(config: ExperimentConfig, recipe: str, bits: Sequence[tuple[int, int]], mixed: Sequence[str],
               checkpoint: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``ptqsam pareto``: :func:`pareto_study` of the config's first model (with ``checkpoint``, on
    its device), its runs kept under ``config.out``."""
    model_type = config.models[0]
    model = built_model(model_type, checkpoint, config.seed, config.device)
    return pareto_study(model, config, recipe, bits, mixed, Path(config.out),
                        weights_id(model_type, checkpoint, config.seed))


def write_pareto_study(rows: Sequence[dict[str, Any]], settings: dict[str, Any], out: Path) -> list[Path]:
    """``pareto.{json,csv,md,png,pdf}`` of :func:`pareto_study`'s rows under ``out``."""
    title = f"{settings['config']['models'][0]}: cost against mIoU ({settings['base_recipe']} uniform and mixed)"
    return [*write_pareto(rows, out, settings), *plot_pareto(rows, out / "pareto", title)]


def eval_options(config: ExperimentConfig) -> EvalOptions:
    """The prompt protocol of ``config``."""
    return EvalOptions(config.prompt, config.num_points, config.multimask, config.score_with_iou, config.seed)


def _explicit(recipe: Recipe, path: str) -> Recipe:
    if any(rule.spec.get("bits") in BITS_PLACEHOLDERS for rule in recipe.rules):
        raise RecipeError(f"{path}: a mixed recipe gives every rule explicit bits (this one has W/A placeholders)")
    return recipe


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_").lower()


def _budgets(allocation: Allocation) -> str:
    return ", ".join(b.describe() for b in allocation.budgets)


def _costs(costs: dict[str, float]) -> str:
    return ", ".join(f"{kind} {value:.6g}" for kind, value in costs.items())


def _reference_costs(costs: ModelCosts) -> list[str]:
    return [f"Uniform {bits_label(w, a)} costs: {_costs(costs.uniform(w, a))}." for w, a in REFERENCE_BITS]
