"""Calibrate a recipe on a few images: the passes the recipe needs, in order.

1. Bimodal fold (recipes with a ``bimodal_fold`` transform): a float pass collects the decoder's
   token→image keys, detects bimodal ones and folds their signs into q_proj / k_proj.
2. Statistics: observing mode over every image and prompt. Activation observers are streaming;
   the log quantizer runs its per-batch AGQ search with each attention's v. Weight sites are
   observed once (on the first image), not once per image.
3. Hessian-guided search for the operands whose spec asks for it (see :mod:`.hessian`).
4. ``finalize`` of every observed quantizer.

The image encoder runs once per image per pass; when the recipe leaves it in float, its embeddings
are computed once and reused by every pass. What grows with the number of images: the images and
their prompts (held in memory), those float embeddings, and the Hessian search's cached operands,
outputs and gradients — of one transformer block at a time (one forward + backward pass over the
images per block).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from segment_anything.modeling import Sam
from tqdm import tqdm

from ptqsam.calibration.bimodal import STATE_KEY, attention_modules, bimodal_fold_pass
from ptqsam.calibration.hessian import capture, search_unit, search_units
from ptqsam.calibration.samples import CalibrationSample
from ptqsam.inference import ImageEmbedding, SamRunner
from ptqsam.instrument.instrument import attach, sites
from ptqsam.instrument.modes import observing
from ptqsam.instrument.recipe import Recipe, load_recipe
from quantizers.modules.base import Mode, Quantizer

ENCODER_PREFIX = "image_encoder."
BLOCK_PATTERN = re.compile(r"^(image_encoder\.(blocks|layers)\.\d+(\.blocks\.\d+)?|mask_decoder\.transformer\.layers\.\d+)")


@dataclass
class CalibrationReport:
    """What calibration did: images, quantizers, per-pass seconds, BIG and Hessian records, and the
    selected sites no calibration pass reached (left uncalibrated)."""

    image_ids: list[int]
    num_prompts: int
    quantizers: dict[str, Quantizer] = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)
    bimodal: dict[str, dict] = field(default_factory=dict)
    hessian: dict[str, dict] = field(default_factory=dict)
    unreached: list[str] = field(default_factory=list)

    def extra_state(self) -> dict[str, Any]:
        """The transform state to save beside the quantizers (re-applied when loading)."""
        return {STATE_KEY: self.bimodal} if self.bimodal else {}


class _Passes:
    """Runs the model over the calibration samples, reusing float embeddings where valid."""

    def __init__(self, model: Sam, samples: Sequence[CalibrationSample], encoder_float: bool, progress: bool):
        self.runner = SamRunner(model)
        self.samples = samples
        self.encoder_float = encoder_float
        self.progress = progress
        self.embeddings: dict[int, ImageEmbedding] = {}

    def embed(self, sample: CalibrationSample) -> ImageEmbedding:
        if self.encoder_float and sample.image_id in self.embeddings:
            return self.embeddings[sample.image_id]
        embedding = self.runner.embed(sample.image)
        if self.encoder_float:
            self.embeddings[sample.image_id] = embedding
        return embedding

    def decode(self, embedding: ImageEmbedding, sample: CalibrationSample):
        p = sample.prompts
        return self.runner.decode(embedding, p.boxes, p.points, p.point_labels, multimask=True)

    def run(self, description: str, before_each: Callable[[int], None] | None = None) -> None:
        with torch.inference_mode():
            for i, sample in enumerate(self._iterate(description)):
                if before_each is not None:
                    before_each(i)
                self.decode(self.embed(sample), sample)

    def run_with_grad(self, loss_fn: Callable, needs_encoder: bool, description: str) -> None:
        for sample in self._iterate(description):
            with torch.enable_grad():
                if needs_encoder or not self.encoder_float:
                    x, input_size, original_size = self.runner.prepare(sample.image)
                    embedding = ImageEmbedding(self.runner.model.image_encoder(x.requires_grad_(True)),
                                               input_size, original_size)
                else:
                    cached = self.embed(sample)
                    features = cached.features.detach().clone().requires_grad_(True)
                    embedding = ImageEmbedding(features, cached.input_size, cached.original_size)
                loss_fn(self.decode(embedding, sample).low_res_logits).backward()

    def _iterate(self, description: str) -> Iterable[CalibrationSample]:
        return tqdm(self.samples, desc=description, disable=not self.progress, leave=False)


def calibrate(
    model: Sam,
    recipe: Recipe | str,
    w_bits: int,
    a_bits: int,
    samples: Sequence[CalibrationSample],
    exclude: Iterable[str] = (),
    progress: bool = True,
    search_rows: int | None = None,
) -> CalibrationReport:
    """Attach ``recipe`` at WxA bits to ``model`` (instrumenting it) and calibrate on ``samples``.

    Arguments:
      model: a float SAM-family model; it is modified in place (sites, quantizers, folds).
      recipe: a :class:`Recipe` or a shipped name / YAML path.
      w_bits, a_bits: weight and activation bit-widths.
      samples: calibration images with their prompts (:func:`calibration_samples`).
      exclude: site-name patterns kept in float, e.g. ``("image_encoder.*",)``.
      search_rows: default ``max_rows`` of the Hessian-guided search (see :func:`.hessian.search_unit`).
    """
    recipe = load_recipe(recipe)
    quantizers = attach(model, recipe, w_bits, a_bits, exclude)
    encoder_float = not any(name.startswith(ENCODER_PREFIX) for name in quantizers)
    passes = _Passes(model, samples, encoder_float, progress)
    report = CalibrationReport([s.image_id for s in samples], sum(len(s.prompts) for s in samples), quantizers)

    _timed(report, "bimodal_fold", lambda: _bimodal(model, recipe, passes, report))
    units = search_units(model)
    searched = {name for unit in units for name in (unit.a, unit.b) if name in quantizers}
    observed = [name for name in quantizers if name not in searched]
    reached = _timed(report, "statistics", lambda: _statistics(model, passes, observed))
    _timed(report, "hessian_search", lambda: _hessian(model, passes, units, report, search_rows))
    for name in observed:
        if name in reached:
            quantizers[name].finalize()
        else:
            report.unreached.append(name)
    return report


def _timed(report: CalibrationReport, name: str, work: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = work()
    report.seconds[name] = round(time.perf_counter() - start, 3)
    return result


def _bimodal(model: Sam, recipe: Recipe, passes: _Passes, report: CalibrationReport) -> None:
    for transform in recipe.transforms:
        targets = attention_modules(model, transform.matches)
        if targets:
            report.bimodal.update(bimodal_fold_pass(targets, lambda: passes.run("bimodal fold (float)"),
                                                    transform.config()))


def _statistics(model: Sam, passes: _Passes, observed: list[str]) -> set[str]:
    """Observe activations on every image and weights on the first; returns the sites reached
    (a site no pass reaches, e.g. the mask-prompt convs with box prompts, stays uncalibrated)."""
    weights = {name for name in observed if name.endswith(".weight")}
    activations = [name for name in observed if name not in weights]
    reached: set[str] = set()
    model_sites = sites(model)
    handles = [model_sites[name].register_forward_hook(lambda m, a, o, n=name: reached.add(n)) for name in observed]
    try:
        with observing(model, activations), observing(model, weights) as weight_quantizers:
            def weights_once(index: int) -> None:
                if index == 1:
                    for quantizer in weight_quantizers.values():
                        quantizer.mode = Mode.OFF
            passes.run("statistics", before_each=weights_once)
    finally:
        for handle in handles:
            handle.remove()
    return reached


def _hessian(model: Sam, passes: _Passes, units, report: CalibrationReport, search_rows: int | None) -> None:
    """Capture and search block by block, so the cache holds one block's units at a time."""
    for block, group in _by_block(units).items():
        needs_encoder = block.startswith(ENCODER_PREFIX)
        data = capture(model, group, lambda loss: passes.run_with_grad(loss, needs_encoder, f"hessian {block}"))
        for unit in group:
            report.hessian[unit.name] = search_unit(unit, data.pop(unit.name), model, search_rows)


def _by_block(units) -> dict[str, list]:
    """Units grouped by transformer block (``image_encoder.blocks.3``, ``...layers.1``) or owner."""
    groups: dict[str, list] = {}
    for unit in units:
        match = BLOCK_PATTERN.match(unit.name)
        groups.setdefault(match.group(0) if match else unit.name.rsplit(".", 1)[0], []).append(unit)
    return groups
