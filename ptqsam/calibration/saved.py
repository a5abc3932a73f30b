"""Save a calibrated model's state to one file and load it into a freshly built model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from segment_anything.modeling import Sam

from ptqsam.calibration import repq
from ptqsam.calibration.bimodal import STATE_KEY, reapply_folds
from ptqsam.calibration.runner import CalibrationReport
from ptqsam.errors import CheckpointError
from ptqsam.instrument.modes import quantizing
from ptqsam.instrument.recipe import Recipe
from ptqsam.instrument.state import StateInfo, load_state, save_state
from ptqsam.reconstruction.reconstruct import REFERENCE_BUG_KEY, apply_reference_drop_bug

log = logging.getLogger("ptqsam")


def save_calibrated(
    model: Sam, path: str | Path, report: CalibrationReport, recipe: Recipe | str, model_type: str,
    w_bits: int, a_bits: int, settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Quantizer state, recipe, model type, bits, the transform state (BIG signs, RepQ-ViT folds, a
    reproduced reference drop bug) and the Hessian search's per-unit records (``extra["hessian"]``,
    with any l2 fallback) in one file, with the fingerprint of the weights calibration started from
    and of ``settings`` (what else made the state: calibration data, prompts, ...); returns the state's
    fingerprint."""
    extra = {**report.extra_state(), "calibration_image_ids": report.image_ids, "hessian": report.hessian}
    return save_state(model, path, recipe, model_type, w_bits, a_bits, extra, report.weights or None,
                      {"calibration_image_ids": report.image_ids, **(settings or {})})


def load_calibrated(
    model: Sam, path: str | Path, recipe: Recipe | str | None = None, model_type: str | None = None,
    allow_other_weights: bool = False,
) -> StateInfo:
    """Load a state saved by :func:`save_calibrated` into ``model`` (built with the same weights):
    attaches the quantizers, re-applies the sign folds and RepQ-ViT folds and, for a state that reproduces PTQ4SAM's
    drop bug on purpose, the dropping. Mismatching recipe or model type is refused
    (:class:`~ptqsam.errors.RecipeError`), other weights too (:class:`~ptqsam.errors.CheckpointError`)
    unless ``allow_other_weights``.

    Example (``ptqsam evaluate --state``)::

        >>> from ptqsam import build_model, calibrate, calibrated_quantizing, evaluate, save_calibrated
        >>> report = calibrate(model, "minmax", "W8A8", samples, progress=False)
        >>> _ = save_calibrated(model, "state.pt", report, "minmax", "testbed", "W8A8")
        >>> fresh = build_model("testbed")
        >>> info = load_calibrated(fresh, "state.pt")
        >>> info.recipe.name, info.w_bits, info.a_bits
        ('minmax', 8, 8)
        >>> with calibrated_quantizing(fresh, info.extra):
        ...     result = evaluate(fresh, dataset, progress=False)
    """
    info = load_state(model, path, recipe, model_type, allow_other_weights)
    folds, repq_folds = info.extra.get(STATE_KEY, {}), info.extra.get(repq.STATE_KEY, {})
    _check_fold_modules(model, path, folds, repq_folds)
    reapply_folds(model, folds)
    repq.reapply_repq(model, repq_folds)
    bug = info.extra.get(REFERENCE_BUG_KEY)
    if bug:
        log.warning("%s reproduces PTQ4SAM's QDrop evaluation bug: %d layer inputs keep %.0f%% of their elements "
                    "in float", path, len(bug["sites"]), 100 * bug["probability"])
        apply_reference_drop_bug(model, bug["sites"], bug["probability"], bug["seed"])
    return info


def _check_fold_modules(model: Sam, path: str | Path, *folds: Mapping[str, Any]) -> None:
    """CheckpointError naming the file for a fold of a module the model lacks (a state of another
    model, or an edited file), before any fold changes the model."""
    modules = dict(model.named_modules())
    named = [n for fold in folds for name, entry in fold.items()
             for n in (name, entry.get("linear") if isinstance(entry, Mapping) else None) if n is not None]
    unknown = [n for n in named if n not in modules]
    if unknown:
        raise CheckpointError(f"{path}: its folds name modules the model lacks: {unknown[:3]}")


def calibrated_quantizing(model: Sam, extra: Mapping[str, Any]):
    """``quantizing(model)`` for a calibrated model whose state ``extra`` (see
    :meth:`CalibrationReport.extra_state`) may reproduce the reference drop bug on purpose: only then
    are dropping quantizers allowed.

    >>> from ptqsam import calibrate, evaluate
    >>> report = calibrate(model, "minmax", "W8A8", samples, progress=False)
    >>> with calibrated_quantizing(model, report.extra_state()):
    ...     result = evaluate(model, dataset, progress=False)
    """
    return quantizing(model, allow_drop=REFERENCE_BUG_KEY in extra)
