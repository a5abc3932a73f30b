"""Calibrate a recipe on a few images: the passes the recipe needs, in order.

1. Encoder statistics: observing mode on the image encoder's sites, one encoder forward per image
   (weight sites on the first image only). Activation observers are streaming; the log quantizer
   runs its per-batch AGQ search with each attention's v.
2. Transforms, each after a float pass: ``bimodal_fold`` (the decoder's token→image keys; bimodal
   ones get their signs folded into q_proj / k_proj) and ``repq_fold`` (RepQ-ViT: per-channel
   post-LayerNorm ranges folded into the LayerNorm and the next Linear, :mod:`.repq`). A transform
   that changes the encoder moves step 1 after it.
3. PCC (SAQ-SAM) for the mask-decoder quantizers whose spec asks for ``search: pcc`` (:mod:`.pcc`).
4. Statistics of the other sites (the mask decoder), PCC-clipped quantizers quantizing; then of the
   mask-prompt path (:data:`~ptqsam.models.blocks.MASK_PROMPT_SITES`), which box and point prompts
   never reach, on the same prompts given a mask prompt each: the float model's best low-resolution
   mask logits for that prompt (SAM's iterative refinement). Only the mask-path sites observe that
   pass, so the other sites' statistics are those of the calibration prompts alone.
5. Hessian-guided search for the operands whose spec asks for it (see :mod:`.hessian`); the units
   of the mask-prompt path on the mask-prompted decoder calls of step 4.
6. HLUQ grids (AHCPTQ): every hybrid log-uniform quantizer scores its (r, g) candidates by the
   output error of the Linear it feeds (:mod:`.hybrid`).
7. ``finalize`` of every observed quantizer.
8. GPTQ codes for the weight quantizers whose spec asks for ``search: gptq`` (:mod:`.gptq`; the
   mask-prompt path's layers on the mask-prompted calls).
9. Block reconstruction, when the recipe asks for it (:mod:`ptqsam.reconstruction`; under ``torchrun``
   each process captures its shard, one process computes each step and the others follow it).

Under ``torchrun`` each process runs the sample passes on its shard of the images and the
statistics are folded in the one-process order (:mod:`.gathered`). The passes whose statistics do
not split into per-image summaries (``repq_fold``, PCC, HLUQ, GPTQ) run on every process over the
whole calibration set: the same data and the same state give every process the one-process result
(no faster than one process, and exact).

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

import torch
from segment_anything.modeling import Sam

from ptqsam import distributed
from ptqsam.calibration import gathered, repq
from ptqsam.calibration.bimodal import STATE_KEY, attention_modules, bimodal_fold_pass
from ptqsam.calibration.gptq import gptq_pass, gptq_units
from ptqsam.calibration.hessian import asks_for_search, capture, search_unit, search_units
from ptqsam.calibration.hybrid import hybrid_grid_pass, hybrid_sites
from ptqsam.calibration.pcc import pcc_pass, pcc_sites
from ptqsam.data.samples import CalibrationSample
from ptqsam.errors import CalibrationError
from ptqsam.instrument.hooks import forward_hooks
from ptqsam.instrument.instrument import attach, sites
from ptqsam.instrument.inventory import site_inventory
from ptqsam.instrument.modes import observing, quantizing
from ptqsam.instrument.recipe import Recipe, load_recipe
from ptqsam.instrument.state import weights_fingerprint
from ptqsam.instrument.units import Unit
from ptqsam.models.blocks import group_by_block, model_blocks, on_mask_path, part_of, touches_encoder
from ptqsam.passes import SampleLoop
from ptqsam.reconstruction.reconstruct import REFERENCE_BUG_KEY, reconstruct, reconstruction_units, reference_bug_sites
from quantizers.modules.base import Mode, Quantizer

log = logging.getLogger("ptqsam")


@dataclass
class CalibrationReport:
    """What calibration did: images, quantizers, per-pass seconds, BIG, Hessian (per unit: metric,
    objective history, ``fallback`` where the l2 metric replaced the Hessian one) and reconstruction
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
    config = recipe.reconstruction_config()
    weights = weights_fingerprint(model)
    quantizers = attach(model, recipe, w_bits, a_bits, exclude)
    start, stop = distributed.shard_bounds(len(samples))
    # no pass before reconstruction quantizes the encoder: its embeddings are float and kept
    passes = SampleLoop(model, samples[start:stop], True, progress, start)
    report = CalibrationReport([s.image_id for s in samples], sum(len(s.prompts) for s in samples), quantizers,
                               weights=weights)

    clipped = _pcc_sites(model)
    units = search_units(model)
    searched = {name for unit in units for name in (unit.a, unit.b) if asks_for_search(quantizers.get(name))}
    searched |= set(clipped)
    observed = [name for name in quantizers if name not in searched]
    # operands of searched units that do not ask for the search: calibrated as their specs say, then
    # held fixed while their partner is searched
    partners = [name for unit in units for name in (unit.a, unit.b) if name in quantizers and name not in searched]
    in_encoder = [name for name in observed if part_of(name) == "image_encoder"]
    mask_path = [name for name in observed if on_mask_path(name)]
    elsewhere = [name for name in observed if part_of(name) != "image_encoder" and name not in mask_path]
    folds_encoder = _folds_encoder(model, recipe)

    def encoder_statistics() -> set[str]:
        return _timed(report, "encoder_statistics", lambda: _statistics(model, passes, in_encoder, decode=False))

    reached = set() if folds_encoder else encoder_statistics()
    whole = _whole_set_loop(model, samples, passes, progress)
    _timed(report, "transforms", lambda: _transforms(model, recipe, passes, whole, report))
    if folds_encoder:
        passes.forget_embeddings()
        reached = encoder_statistics()
    if clipped:
        report.passes["pcc"] = _timed(report, "pcc", lambda: pcc_pass(model, list(samples), clipped))
    with quantizing(model, clipped):
        reached |= _timed(report, "statistics", lambda: _statistics(model, passes, elsewhere))
    if mask_path:
        reached |= _timed(report, "mask_prompt_statistics",
                          lambda: _statistics(model, passes.with_mask_prompts(), mask_path))
    hybrid = hybrid_sites(model, [name for name in observed if name in reached])
    held = [name for name in partners if name in reached and name not in hybrid]
    for name in held:
        quantizers[name].finalize()
    _timed(report, "hessian_search", lambda: _hessian(model, passes, samples, units, report, search_rows))
    if hybrid:
        loop = _encoder_loop(model, samples, hybrid, progress)
        report.passes["hluq_grids"] = _timed(report, "hluq_grids", lambda: hybrid_grid_pass(model, loop, hybrid))
    for name in observed:
        if name in reached:
            if name not in held:
                quantizers[name].finalize()
        else:
            report.unreached.append(name)
    report.unreached += [name for unit in units if unit.name not in report.hessian
                         for name in (unit.a, unit.b) if name in searched]
    layers = gptq_units(model)
    if layers:
        report.passes["gptq"] = _timed(report, "gptq", lambda: _gptq(model, samples, layers, progress))
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


def _whole_set_loop(model: Sam, samples: Sequence[CalibrationSample], passes: SampleLoop,
                    progress: bool) -> SampleLoop:
    """The loop over every calibration image: ``passes`` itself in one process; under ``torchrun``
    a loop of its own on every process, for the passes whose statistics are not split across the
    processes (RepQ-ViT's fold: every process computes the one-process fold from the same data)."""
    if not distributed.active():
        return passes
    return SampleLoop(model, list(samples), True, progress)


def _transforms(model: Sam, recipe: Recipe, passes: SampleLoop, whole: SampleLoop, report: CalibrationReport) -> None:
    """The recipe's folds, in order. Under ``torchrun`` the bimodal fold's processes embed their
    images at once, then observe the keys one after the other (:func:`~ptqsam.distributed.
    in_rank_order`: the one-process statistics); RepQ-ViT's fold runs on the ``whole`` set."""
    relay = distributed.in_rank_order if distributed.active() else None
    for transform in recipe.transforms:
        if transform.kind == "bimodal_fold":
            targets = attention_modules(model, transform.matches)
            if targets:
                if relay is not None:
                    passes.embed_all()
                report.bimodal.update(bimodal_fold_pass(targets, lambda: passes.run("bimodal fold (float)"),
                                                        transform.config(), relay))
        else:  # repq_fold (the recipe checks the kind)
            targets = repq.fold_targets(model, transform.matches)
            if targets:
                report.passes.setdefault(repq.STATE_KEY, {}).update(
                    repq.repq_fold_pass(model, targets, lambda: whole.run("repq fold (float)")))


def _folds_encoder(model: Sam, recipe: Recipe) -> bool:
    """Whether a transform of ``recipe`` changes a module of the image encoder."""
    for transform in recipe.transforms:
        targets = attention_modules(model, transform.matches) if transform.kind == "bimodal_fold" \
            else repq.fold_targets(model, transform.matches)
        if touches_encoder(targets):
            return True
    return False


def _pcc_sites(model: Sam) -> list[str]:
    """The PCC-clipped sites; they quantize during the decoder statistics, so they must be decoder sites
    (the encoder statistics run on the float encoder, once)."""
    clipped = pcc_sites(model)
    in_encoder = [name for name in clipped if part_of(name) == "image_encoder"]
    if in_encoder:
        raise CalibrationError(f"search 'pcc' is for mask-decoder attentions (SAQ-SAM); {in_encoder[0]} is in the "
                               "image encoder")
    return clipped


def _mask_path_apart(units: list[Unit]) -> list[tuple[list[Unit], bool]]:
    """``units`` off the mask-prompt path, then those on it (``True``: their passes need mask
    prompts); only the parts that have units."""
    on_path = [unit for unit in units if on_mask_path(unit.module)]
    parts = [([unit for unit in units if unit not in on_path], False), (on_path, True)]
    return [(part, masked) for part, masked in parts if part]


def _gptq(model: Sam, samples: Sequence[CalibrationSample], layers: list[Unit], progress: bool) -> dict[str, dict]:
    records = {}
    for part, masked in _mask_path_apart(layers):
        loop = _encoder_loop(model, samples, [unit.module for unit in part], progress)
        records.update(gptq_pass(model, loop.with_mask_prompts() if masked else loop, part))
    return records


def _encoder_loop(model: Sam, samples: Sequence[CalibrationSample], names: list[str], progress: bool) -> SampleLoop:
    """A loop whose passes run the image encoder when a hooked ``names`` entry is in it."""
    return SampleLoop(model, samples, encoder_float=not touches_encoder(names),
                      progress=progress)


def _statistics(model: Sam, passes: SampleLoop, observed: list[str], decode: bool = True) -> set[str]:
    """Observe activations on every image and weights on the first; returns the sites reached
    (a site no pass reaches stays uncalibrated; box and point prompts never reach the mask-prompt
    path, which gets a pass of its own with mask prompts).
    ``decode=False``: a pass over the encoder alone (for encoder sites). No site: no pass.
    Under ``torchrun`` each process observes its shard and the statistics are folded in the
    one-process order (:mod:`.gathered`); the weights are observed by the process holding image 0."""
    if not observed:
        return set()
    model_sites = sites(model)
    weights = {name for name in observed if model_sites[name].kind == "weight"}
    activations = [name for name in observed if name not in weights]
    reached: set[str] = set()
    hooks = [(model_sites[name], lambda m, a, o, n=name: reached.add(n)) for name in observed]
    quantizers = {name: model_sites[name].quantizer for name in observed}
    with forward_hooks(hooks), observing(model, activations), observing(model, weights) as weight_quantizers, \
            gathered.deferred(quantizers):
        def weights_once(index: int) -> None:
            if index >= 1:
                for quantizer in weight_quantizers.values():
                    quantizer.mode = Mode.OFF
        passes.run("statistics" if decode else "encoder statistics", before_each=weights_once, decode=decode)
        summaries = gathered.take_summaries(quantizers)
    gathered.fold(quantizers, summaries, passes.runner.device)
    return {name for part in distributed.all_gather_parts([reached]) for name in part}


#: Bytes the Hessian search's cache of one capture pass may take (operands, outputs, gradients).
CAPTURE_BUDGET = 2**30


def _hessian(model: Sam, passes: SampleLoop, samples: Sequence[CalibrationSample], units: list[Unit],
             report: CalibrationReport, search_rows: int | None) -> None:
    """Capture and search consecutive blocks together while their cache fits :data:`CAPTURE_BUDGET`
    (one forward + backward pass over the images per group), a block at a time beyond it; the
    units of the mask-prompt path apart, on the mask-prompted decoder calls. The
    groups are sized on the whole set ``samples`` (``passes`` may hold a process's shard), so every
    process under ``torchrun`` makes the same groups."""
    for part, masked in _mask_path_apart(units):
        loop = passes.with_mask_prompts() if masked else passes
        for group_name, group in _capture_groups(model, part, samples).items():
            needs_encoder = any(part_of(unit.module) == "image_encoder" for unit in group)
            data = capture(model, group,
                           lambda loss: loop.run_with_grad(loss, needs_encoder, f"hessian {group_name}"))
            data = _gathered_capture(data, passes.runner.device)
            for unit in group:
                record = search_unit(unit, data.pop(unit.name), model, search_rows)
                if record is not None:  # None: no calibration image reaches the unit (left uncalibrated)
                    report.hessian[unit.name] = record
    fallbacks = {name: record["fallback"] for name, record in report.hessian.items() if "fallback" in record}
    if fallbacks:
        log.warning("Hessian search: %d unit(s) searched on the unweighted output error (l2) instead: %s",
                    len(fallbacks), "; ".join(f"{name} ({reason})" for name, reason in fallbacks.items()))


def _gathered_capture(data: dict[str, dict[str, list]], device: torch.device) -> dict[str, dict[str, list]]:
    """Under ``torchrun``: every process's cached tensors, concatenated in the one-process order on
    every rank, on ``device`` (each rank then searches the same data: the one-process result)."""
    if not distributed.active():
        return data
    parts = distributed.all_gather_parts([data])
    return {unit: {key: [t.to(device) for part in parts for t in part[unit][key]] for key in store}
            for unit, store in data.items()}



def _capture_groups(model: Sam, units: list[Unit], samples: Sequence[CalibrationSample]) -> dict[str, list[Unit]]:
    """Blocks (:func:`~ptqsam.models.blocks.group_by_block`) merged in forward order while their estimated cache fits."""
    if not units:
        return {}
    shapes = {row.name: row.shape for row in site_inventory(model)}
    prompts = max(len(sample.prompts) for sample in samples)
    groups: dict[str, list[Unit]] = {}
    name, size = "", 0
    for block, block_units in group_by_block(model_blocks(model), units, lambda unit: unit.module).items():
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
