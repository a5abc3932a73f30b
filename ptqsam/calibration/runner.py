"""Calibrate a recipe on a few images: the passes the recipe needs, in order.

1. Encoder statistics: observing mode on the image encoder's sites, one encoder forward per image
   (weight sites on the first image only). Activation observers are streaming; the log quantizer
   runs its per-batch AGQ search with each attention's v.
2. Bimodal fold (recipes with a ``bimodal_fold`` transform): a float pass collects the decoder's
   token→image keys, detects bimodal ones and folds their signs into q_proj / k_proj.
3. Statistics of the other sites (the mask decoder), observed after the fold.
4. Hessian-guided search for the operands whose spec asks for it (see :mod:`.hessian`).
5. ``finalize`` of every observed quantizer.
6. Block reconstruction, when the recipe asks for it (:mod:`ptqsam.reconstruction`).

No pass before reconstruction quantizes, so the image encoder's output is float in each of them: it
runs once per image (:class:`~ptqsam.passes.SampleLoop` keeps the embeddings), observed on the way,
and the other passes decode the kept embeddings. Only the Hessian search of encoder units runs it
again (it needs gradients). A fold that changes the encoder itself would make the kept embeddings
stale: then the encoder statistics wait for the fold and the embeddings are recomputed after it.
What grows with the number of images: the images and their prompts (held in memory), the float
embeddings, and the Hessian search's cached operands, outputs and gradients — of one transformer
block at a time (one forward + backward pass over the images per block).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from segment_anything.modeling import Sam

from ptqsam.calibration.bimodal import STATE_KEY, attention_modules, bimodal_fold_pass
from ptqsam.calibration.hessian import capture, search_unit, search_units
from ptqsam.data.samples import CalibrationSample
from ptqsam.instrument.hooks import forward_hooks
from ptqsam.instrument.instrument import attach, sites
from ptqsam.instrument.inventory import site_inventory
from ptqsam.instrument.modes import observing
from ptqsam.instrument.recipe import Recipe, load_recipe
from ptqsam.instrument.state import weights_fingerprint
from ptqsam.instrument.units import Unit
from ptqsam.models.blocks import block_of, model_blocks, part_of
from ptqsam.passes import SampleLoop
from ptqsam.reconstruction.reconstruct import REFERENCE_BUG_KEY, reconstruct, reconstruction_units, reference_bug_sites
from quantizers.modules.base import Mode, Quantizer

log = logging.getLogger("ptqsam")


@dataclass
class CalibrationReport:
    """What calibration did: images, quantizers, per-pass seconds, BIG, Hessian (per unit: metric,
    objective history, ``fallback`` where the l2 metric replaced the Hessian one) and reconstruction
    records, the selected sites no calibration pass reached (left uncalibrated), the fingerprint of
    the weights it started from (:func:`~ptqsam.instrument.state.weights_fingerprint`) and, when the
    reconstruction reproduces PTQ4SAM's drop bug on purpose, where and how it drops."""

    image_ids: list[int]
    num_prompts: int
    quantizers: dict[str, Quantizer] = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)
    bimodal: dict[str, dict] = field(default_factory=dict)
    hessian: dict[str, dict] = field(default_factory=dict)
    reconstruction: dict[str, dict] = field(default_factory=dict)
    unreached: list[str] = field(default_factory=list)
    weights: str = ""
    reference_drop_bug: dict[str, Any] | None = None

    def extra_state(self) -> dict[str, Any]:
        """The transform state to save beside the quantizers (re-applied when loading)."""
        extra: dict[str, Any] = {STATE_KEY: self.bimodal} if self.bimodal else {}
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
    passes = SampleLoop(model, samples, encoder_float=True, progress=progress)  # no pass quantizes
    report = CalibrationReport([s.image_id for s in samples], sum(len(s.prompts) for s in samples), quantizers,
                               weights=weights)

    units = search_units(model)
    searched = {name for unit in units for name in (unit.a, unit.b) if name in quantizers}
    observed = [name for name in quantizers if name not in searched]
    in_encoder = [name for name in observed if part_of(name) == "image_encoder"]
    elsewhere = [name for name in observed if part_of(name) != "image_encoder"]
    folds_encoder = _folds_encoder(model, recipe)

    def encoder_statistics() -> set[str]:
        return _timed(report, "encoder_statistics", lambda: _statistics(model, passes, in_encoder, decode=False))

    reached = set() if folds_encoder else encoder_statistics()
    _timed(report, "bimodal_fold", lambda: _bimodal(model, recipe, passes, report))
    if folds_encoder:
        passes.forget_embeddings()
        reached = encoder_statistics()
    reached |= _timed(report, "statistics", lambda: _statistics(model, passes, elsewhere))
    _timed(report, "hessian_search", lambda: _hessian(model, passes, units, report, search_rows))
    for name in observed:
        if name in reached:
            quantizers[name].finalize()
        else:
            report.unreached.append(name)
    report.unreached += [name for unit in units if unit.name not in report.hessian
                         for name in (unit.a, unit.b) if name in quantizers]
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


def _bimodal(model: Sam, recipe: Recipe, passes: SampleLoop, report: CalibrationReport) -> None:
    for transform in recipe.transforms:
        targets = attention_modules(model, transform.matches)
        if targets:
            report.bimodal.update(bimodal_fold_pass(targets, lambda: passes.run("bimodal fold (float)"),
                                                    transform.config()))


def _folds_encoder(model: Sam, recipe: Recipe) -> bool:
    """Whether a transform of ``recipe`` changes a module of the image encoder."""
    return any(part_of(name) == "image_encoder" for transform in recipe.transforms
               for name in attention_modules(model, transform.matches))


def _statistics(model: Sam, passes: SampleLoop, observed: list[str], decode: bool = True) -> set[str]:
    """Observe activations on every image and weights on the first; returns the sites reached
    (a site no pass reaches, e.g. the mask-prompt convs with box prompts, stays uncalibrated).
    ``decode=False``: a pass over the encoder alone (for encoder sites). No site: no pass."""
    if not observed:
        return set()
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
        passes.run("statistics" if decode else "encoder statistics", before_each=weights_once, decode=decode)
    return reached


#: Bytes the Hessian search's cache of one capture pass may take (operands, outputs, gradients).
CAPTURE_BUDGET = 2**30


def _hessian(model: Sam, passes: SampleLoop, units: list[Unit], report: CalibrationReport,
             search_rows: int | None) -> None:
    """Capture and search consecutive blocks together while their cache fits :data:`CAPTURE_BUDGET`
    (one forward + backward pass over the images per group), a block at a time beyond it."""
    for group_name, group in _capture_groups(model, units, passes.samples).items():
        needs_encoder = any(part_of(unit.module) == "image_encoder" for unit in group)
        data = capture(model, group, lambda loss: passes.run_with_grad(loss, needs_encoder, f"hessian {group_name}"))
        for unit in group:
            record = search_unit(unit, data.pop(unit.name), model, search_rows)
            if record is not None:  # None: no calibration image reaches the unit (left uncalibrated)
                report.hessian[unit.name] = record
    fallbacks = {name: record["fallback"] for name, record in report.hessian.items() if "fallback" in record}
    if fallbacks:
        log.warning("Hessian search: %d unit(s) searched on the unweighted output error (l2) instead: %s",
                    len(fallbacks), "; ".join(f"{name} ({reason})" for name, reason in fallbacks.items()))


def _capture_groups(model: Sam, units: list[Unit], samples: Sequence[CalibrationSample]) -> dict[str, list[Unit]]:
    """Blocks (see :func:`_by_block`) merged in forward order while their estimated cache fits."""
    if not units:
        return {}
    shapes = {row.name: row.shape for row in site_inventory(model)}
    prompts = max(len(sample.prompts) for sample in samples)
    groups: dict[str, list[Unit]] = {}
    name, size = "", 0
    for block, block_units in _by_block(model, units).items():
        block_size = len(samples) * sum(_cache_bytes(model, unit, shapes, prompts) for unit in block_units)
        if name and size + block_size <= CAPTURE_BUDGET:
            groups[name] += block_units
            size += block_size
        else:
            name, size = block, block_size
            groups[name] = list(block_units)
    return groups


def _cache_bytes(model: Sam, unit: Unit, shapes: dict, prompts: int) -> int:
    """Estimated bytes one image adds to the cache of ``unit``: its operand(s), output and output
    gradient (the shapes come from a one-prompt probe; decoder tensors grow with the prompts)."""
    per_image = 1 if part_of(unit.module) == "image_encoder" else prompts
    a = math.prod(shapes.get(unit.a) or (0,))
    if unit.output is None:
        layer = model.get_submodule(unit.module)
        stored = a + 2 * a // max(layer.weight.shape[1], 1) * layer.weight.shape[0]
    else:
        stored = a + math.prod(shapes.get(unit.b) or (0,)) + 2 * math.prod(shapes.get(unit.output) or (0,))
    return 4 * per_image * stored


def _by_block(model: Sam, units: list[Unit]) -> dict[str, list[Unit]]:
    """Units grouped by the model block that holds them (:func:`~ptqsam.models.blocks.model_blocks`);
    a unit outside every block (e.g. in the IoU head) is grouped by the parent of its name."""
    blocks = model_blocks(model)
    groups: dict[str, list[Unit]] = {}
    for unit in units:
        block = block_of(blocks, unit.module)
        groups.setdefault(block.name if block else unit.name.rpartition(".")[0], []).append(unit)
    return groups
