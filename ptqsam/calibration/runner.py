"""Calibrate a recipe on a few images: the passes the recipe needs, in order.

1. Transforms, each after a float pass: ``bimodal_fold`` (the decoder's token→image keys; bimodal
   ones get their signs folded into q_proj / k_proj) and ``repq_fold`` (RepQ-ViT: per-channel
   post-LayerNorm ranges folded into the LayerNorm and the next Linear, :mod:`.repq`).
2. PCC (SAQ-SAM) for the quantizers whose spec asks for ``search: pcc`` (:mod:`.pcc`).
3. Statistics: observing mode over every image and prompt (PCC-clipped quantizers quantizing).
   Activation observers are streaming; the log quantizer runs its per-batch AGQ search with each
   attention's v. Weight sites are observed once (on the first image), not once per image.
4. Hessian-guided search for the operands whose spec asks for it (see :mod:`.hessian`).
5. HLUQ grids (AHCPTQ): every hybrid log-uniform quantizer scores its (r, g) candidates by the
   output error of the Linear it feeds (:mod:`.hybrid`).
6. ``finalize`` of every observed quantizer.
7. GPTQ codes for the weight quantizers whose spec asks for ``search: gptq`` (:mod:`.gptq`).
8. Block reconstruction, when the recipe asks for it (:mod:`ptqsam.reconstruction`).

The image encoder runs once per image per pass (:class:`~ptqsam.passes.SampleLoop`);
when the recipe leaves it in float, its embeddings are computed once and reused by every pass. What grows with the number of images: the images and
their prompts (held in memory), those float embeddings, and the Hessian search's cached operands,
outputs and gradients — of one transformer block at a time (one forward + backward pass over the
images per block).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from segment_anything.modeling import Sam

from ptqsam.calibration import repq
from ptqsam.calibration.bimodal import STATE_KEY, attention_modules, bimodal_fold_pass
from ptqsam.calibration.gptq import gptq_pass, gptq_units
from ptqsam.calibration.hessian import capture, search_unit, search_units
from ptqsam.calibration.hybrid import hybrid_grid_pass, hybrid_sites
from ptqsam.calibration.pcc import pcc_pass, pcc_sites
from ptqsam.data.samples import CalibrationSample
from ptqsam.instrument.hooks import forward_hooks
from ptqsam.instrument.instrument import attach, sites
from ptqsam.instrument.modes import observing, quantizing
from ptqsam.instrument.recipe import Recipe, load_recipe
from ptqsam.instrument.state import weights_fingerprint
from ptqsam.instrument.units import Unit
from ptqsam.models.blocks import group_by_block, model_blocks, part_of
from ptqsam.passes import SampleLoop
from ptqsam.reconstruction.reconstruct import REFERENCE_BUG_KEY, reconstruct, reconstruction_units, reference_bug_sites
from quantizers.modules.base import Mode, Quantizer


@dataclass
class CalibrationReport:
    """What calibration did: images, quantizers, per-pass seconds, BIG, Hessian and reconstruction
    records, the records of the other passes (``passes``: ``repq_fold``, ``pcc``, ``hluq_grids``,
    ``gptq``, by site or layer), the selected sites no calibration pass reached (left
    uncalibrated), the fingerprint of the weights it started from
    (:func:`~ptqsam.instrument.state.weights_fingerprint`) and, when the reconstruction reproduces
    PTQ4SAM's drop bug on purpose, where and how it drops."""

    image_ids: list[int]
    num_prompts: int
    quantizers: dict[str, Quantizer] = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)
    bimodal: dict[str, dict] = field(default_factory=dict)
    hessian: dict[str, dict] = field(default_factory=dict)
    reconstruction: dict[str, dict] = field(default_factory=dict)
    passes: dict[str, dict[str, dict]] = field(default_factory=dict)
    unreached: list[str] = field(default_factory=list)
    weights: str = ""
    reference_drop_bug: dict[str, Any] | None = None

    def extra_state(self) -> dict[str, Any]:
        """The transform state to save beside the quantizers (re-applied when loading)."""
        extra: dict[str, Any] = {STATE_KEY: self.bimodal} if self.bimodal else {}
        if self.passes.get(repq.STATE_KEY):
            extra[repq.STATE_KEY] = self.passes[repq.STATE_KEY]
        if self.reference_drop_bug is not None:
            extra[REFERENCE_BUG_KEY] = self.reference_drop_bug
        return extra


def calibrate(
    model: Sam,
    recipe: Recipe | str,
    w_bits: int,
    a_bits: int,
    samples: Sequence[CalibrationSample],
    exclude: Iterable[str] = (),
    progress: bool = True,
    search_rows: int | None = None,
    reconstruction: Mapping[str, Any] | None = None,
) -> CalibrationReport:
    """Attach ``recipe`` at WxA bits to ``model`` (instrumenting it) and calibrate on ``samples``.

    Arguments:
      model: a float SAM-family model; it is modified in place (sites, quantizers, folds).
      recipe: a :class:`Recipe` or a shipped name / YAML path.
      w_bits, a_bits: weight and activation bit-widths.
      samples: calibration images with their prompts (:func:`calibration_samples`).
      exclude: site-name patterns kept in float, e.g. ``("image_encoder.*",)``.
      search_rows: default ``max_rows`` of the Hessian-guided search (see :func:`.hessian.search_unit`).
      reconstruction: overrides of the recipe's reconstruction settings (e.g. ``{"iterations": 500}``);
        ignored for a recipe without reconstruction.
    """
    recipe = load_recipe(recipe)
    weights = weights_fingerprint(model)
    quantizers = attach(model, recipe, w_bits, a_bits, exclude)
    encoder_float = not any(part_of(name) == "image_encoder" for name in quantizers)
    passes = SampleLoop(model, samples, encoder_float, progress)
    report = CalibrationReport([s.image_id for s in samples], sum(len(s.prompts) for s in samples), quantizers,
                               weights=weights)

    _timed(report, "transforms", lambda: _transforms(model, recipe, passes, report))
    clipped = pcc_sites(model)
    if clipped:
        report.passes["pcc"] = _timed(report, "pcc", lambda: pcc_pass(model, list(samples), clipped))
    units = search_units(model)
    searched = {name for unit in units for name in (unit.a, unit.b) if name in quantizers} | set(clipped)
    observed = [name for name in quantizers if name not in searched]
    with quantizing(model, clipped):
        reached = _timed(report, "statistics", lambda: _statistics(model, passes, observed))
    _timed(report, "hessian_search", lambda: _hessian(model, passes, units, report, search_rows))
    hybrid = hybrid_sites(model, [name for name in observed if name in reached])
    if hybrid:
        report.passes["hluq_grids"] = _timed(report, "hluq_grids", lambda: hybrid_grid_pass(model, passes, hybrid))
    for name in observed:
        if name in reached:
            quantizers[name].finalize()
        else:
            report.unreached.append(name)
    layers = gptq_units(model)
    if layers:
        report.passes["gptq"] = _timed(report, "gptq", lambda: gptq_pass(model, passes, layers))
    config = recipe.reconstruction_config()
    if config is not None:
        config = config.with_overrides(reconstruction or {})
        report.reconstruction = _timed(report, "reconstruction", lambda: reconstruct(model, samples, config, progress))
        if config.reference_drop_bug:
            report.reference_drop_bug = {"probability": config.drop_prob, "seed": config.seed,
                                         "sites": reference_bug_sites(model, reconstruction_units(model, config))}
    return report


def _timed(report: CalibrationReport, name: str, work: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = work()
    report.seconds[name] = round(time.perf_counter() - start, 3)
    return result


def _transforms(model: Sam, recipe: Recipe, passes: SampleLoop, report: CalibrationReport) -> None:
    for transform in recipe.transforms:
        if transform.kind == "bimodal_fold":
            targets = attention_modules(model, transform.matches)
            if targets:
                report.bimodal.update(bimodal_fold_pass(targets, lambda: passes.run("bimodal fold (float)"),
                                                        transform.config()))
        else:  # repq_fold (the recipe checks the kind)
            targets = repq.fold_targets(model, transform.matches)
            if targets:
                report.passes.setdefault(repq.STATE_KEY, {}).update(
                    repq.repq_fold_pass(model, targets, lambda: passes.run("repq fold (float)")))


def _statistics(model: Sam, passes: SampleLoop, observed: list[str]) -> set[str]:
    """Observe activations on every image and weights on the first; returns the sites reached
    (a site no pass reaches, e.g. the mask-prompt convs with box prompts, stays uncalibrated)."""
    model_sites = sites(model)
    weights = {name for name in observed if model_sites[name].kind == "weight"}
    activations = [name for name in observed if name not in weights]
    reached: set[str] = set()
    hooks = [(model_sites[name], lambda m, a, o, n=name: reached.add(n)) for name in observed]
    with forward_hooks(hooks), observing(model, activations), observing(model, weights) as weight_quantizers:
        def weights_once(index: int) -> None:
            if index == 1:
                for quantizer in weight_quantizers.values():
                    quantizer.mode = Mode.OFF
        passes.run("statistics", before_each=weights_once)
    return reached


def _hessian(model: Sam, passes: SampleLoop, units: list[Unit], report: CalibrationReport,
             search_rows: int | None) -> None:
    """Capture and search block by block, so the cache holds one block's units at a time."""
    for group_name, group in group_by_block(model_blocks(model), units, lambda unit: unit.name).items():
        needs_encoder = part_of(group_name) == "image_encoder"
        data = capture(model, group, lambda loss: passes.run_with_grad(loss, needs_encoder, f"hessian {group_name}"))
        for unit in group:
            report.hessian[unit.name] = search_unit(unit, data.pop(unit.name), model, search_rows)
