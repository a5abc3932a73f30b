"""Float activation statistics of an instrumented model over calibration samples.

Every function runs the model in float (attached quantizers off) over the samples, with temporary
forward hooks that reduce each watched tensor on the fly: nothing keeps a whole activation (a SAM-B
global attention map is 805 MB per image). Values are kept as a bounded, seeded random sample.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from segment_anything.modeling import Sam
from torch import nn

from ptqsam.data.samples import CalibrationSample
from ptqsam.errors import AnalysisError
from ptqsam.instrument import attached_quantizers, disabled, forward_hooks, instrument, sites
from ptqsam.passes import SampleLoop

#: Elements reduced at a time (bounds the float64 temporaries of a hook).
CHUNK_NUMEL = 1 << 22


@dataclass(frozen=True, eq=False)
class SiteStats:
    """Statistics of every value one site saw, and a random sample of them.

    Arguments:
      values: float32 1-D CPU tensor: a uniform random sample without replacement of at most
        ``max_values`` of the values (all of them, in random order, when there were fewer).
      count: how many values the site saw.
      min, max, mean: exact, over every value.
      std: exact population standard deviation (ddof 0), over every value.
    """

    values: torch.Tensor
    count: int
    min: float
    max: float
    mean: float
    std: float


class ValueSampler:
    """Streams tensors: exact count / min / max / mean / std, and a bounded uniform sample.

    The sample is a bottom-k sample: every value gets a random float64 key and the ``max_values``
    values with the smallest keys are kept, so it is uniform over everything seen whatever the
    number and sizes of the tensors. Moments are merged chunk by chunk in float64 (Chan et al.).

    Arguments:
      max_values: the sample's size limit (>= 1).
      seed: seed of the keys.
    """

    def __init__(self, max_values: int, seed: int) -> None:
        self.max_values = max_values
        self.generator = torch.Generator().manual_seed(seed)
        self.keys = torch.empty(0, dtype=torch.float64)
        self.values = torch.empty(0, dtype=torch.float32)
        self.count, self.min, self.max, self.mean, self.m2 = 0, math.inf, -math.inf, 0.0, 0.0

    def add(self, x: torch.Tensor, what: str) -> None:
        """Take in every value of ``x``; ``what`` names it in errors."""
        for chunk in x.detach().reshape(-1).split(CHUNK_NUMEL):
            chunk = chunk.to(device="cpu", dtype=torch.float32)
            if not bool(torch.isfinite(chunk).all()):
                raise AnalysisError(f"{what} holds NaN or Inf values in the float model")
            self._add_moments(chunk)
            self._add_sample(chunk)

    def _add_moments(self, chunk: torch.Tensor) -> None:
        wide = chunk.double()
        n, mean = chunk.numel(), float(wide.mean())
        m2 = float((wide - mean).square().sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.min = min(self.min, float(chunk.min()))
        self.max = max(self.max, float(chunk.max()))

    def _add_sample(self, chunk: torch.Tensor) -> None:
        keys = torch.rand(chunk.numel(), generator=self.generator, dtype=torch.float64)
        if self.keys.numel() == self.max_values:  # full: only keys below the largest kept can enter
            entering = keys < self.keys.max()
            keys, chunk = keys[entering], chunk[entering]
        keys, values = torch.cat([self.keys, keys]), torch.cat([self.values, chunk])
        if keys.numel() > self.max_values:
            keep = torch.topk(keys, self.max_values, largest=False, sorted=False).indices
            keys, values = keys[keep], values[keep]
        self.keys, self.values = keys, values

    def stats(self, what: str) -> SiteStats:
        if self.count == 0:
            raise AnalysisError(f"{what} saw no value: the samples never reach it")
        order = torch.argsort(self.keys)
        return SiteStats(self.values[order], self.count, self.min, self.max, self.mean, math.sqrt(self.m2 / self.count))


def collect_site_values(
    model: Sam,
    samples: Sequence[CalibrationSample],
    site_names: Iterable[str],
    max_values: int = 200_000,
    seed: int = 0,
) -> dict[str, SiteStats]:
    """Run the float model over ``samples`` and gather the values of each site (its input).

    Arguments:
      model: a SAM-family model (instrumented here if it is not yet; attached quantizers are
        switched off for the run and restored after).
      samples: images with their prompts (:func:`ptqsam.calibration.calibration_samples`).
      site_names: exact site names (see :func:`ptqsam.instrument.sites`).
      max_values: size limit of each site's random sample.
      seed: seed of the samples; each site's keys derive from ``seed`` and its name, so a site's
        sample does not depend on which other sites are collected.

    Returns:
      ``name -> SiteStats`` in the order of ``site_names``.
    """
    return _sample_modules(model, samples, _site_targets(model, site_names), _site_input, max_values, seed)


def decoder_keys(
    model: Sam,
    samples: Sequence[CalibrationSample],
    module_names: Iterable[str],
    max_values: int = 200_000,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Sampled ``k_proj`` outputs of the given decoder attention modules, in float.

    Call it before and after :func:`ptqsam.calibration.calibrate` with a bimodal-fold recipe to
    see the keys before and after the sign fold (same seed: the same positions are sampled).

    Arguments:
      model: a SAM-family model (instrumented or not).
      samples: images with their prompts.
      module_names: attention module paths, e.g.
        ``mask_decoder.transformer.layers.0.cross_attn_token_to_image``.
      max_values, seed: as in :func:`collect_site_values`.
    """
    names = _unique(module_names, "module_names")
    modules = dict(model.named_modules())
    _check_known(names, modules, "module")
    no_key = [n for n in names if not isinstance(getattr(modules[n], "k_proj", None), nn.Linear)]
    if no_key:
        raise AnalysisError(f"module(s) {no_key} have no k_proj Linear: not attention modules")
    targets = {n: modules[n].k_proj for n in names}
    stats = _sample_modules(model, samples, targets, _module_output, max_values, seed)
    return {name: s.values for name, s in stats.items()}


def site_quantization_error(
    model: Sam, samples: Sequence[CalibrationSample], site_names: Iterable[str] | None = None
) -> dict[str, float]:
    """Relative quantization error ``Σ‖q(x) − x‖² / Σ‖x‖²`` of each calibrated site's input.

    The model runs in float; each site's quantizer fake-quantizes a copy of the site's input (so
    errors do not propagate from one site to the next). Weights are counted once.

    Arguments:
      model: a calibrated model (:func:`ptqsam.calibration.calibrate`).
      samples: images with their prompts.
      site_names: sites to measure (each must carry a calibrated quantizer); default: every site
        with a calibrated quantizer that the samples reach (box and point prompts never reach the
        mask-prompt path).
    """
    calibrated = {n: q for n, q in attached_quantizers(model).items() if q.is_calibrated}
    names = list(calibrated) if site_names is None else _unique(site_names, "site_names")
    if not names:
        raise AnalysisError("the model has no calibrated quantizer: calibrate it first")
    _check_known(names, calibrated, "calibrated quantizer on site")
    model_sites = sites(model)
    meters = {n: _ErrorMeter(calibrated[n], once=model_sites[n].kind == "weight") for n in names}
    _run_float(model, samples, [(model_sites[n], lambda m, args, out, meter=meters[n]: meter(args[0])) for n in names])
    return {name: meters[name].relative_error(name) for name in names
            if site_names is not None or meters[name].calls}


def site_statistics(
    model: Sam, samples: Sequence[CalibrationSample], site_names: Iterable[str], max_values: int = 20_000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Float statistics of each site's input and, for sites with a calibrated quantizer, its
    relative quantization error: ``name -> {count, min, max, mean, std, abs_p999[, rel_error]}``.

    Sites the samples never reach (e.g. the mask-prompt convs under box prompts) are left out; a
    weight counts once (not once per image). ``abs_p999`` is the 99.9th percentile of ``|x|`` on the
    site's random sample of at most ``max_values`` values (``abs_p999_sampled``: an estimate, the
    site saw more values); the other statistics are exact.

    Example (``ptqsam inspect --stats-images``)::

        >>> from ptqsam import site_statistics
        >>> stats = site_statistics(model, samples, ["image_encoder.blocks.0.attn.probs"])
        >>> sorted(stats["image_encoder.blocks.0.attn.probs"])
        ['abs_p999', 'abs_p999_sampled', 'count', 'max', 'mean', 'min', 'std']
    """
    targets = _site_targets(model, site_names)
    weights = [name for name, site in targets.items() if site.kind == "weight"]
    stats = _sample_modules(model, samples, targets, _site_input, max_values, seed, skip_unreached=True, once=weights)
    calibrated = [n for n, q in attached_quantizers(model).items() if q.is_calibrated and n in stats]
    errors = site_quantization_error(model, samples, calibrated) if calibrated else {}
    table = {}
    for name, s in stats.items():
        row = {"count": s.count, "min": s.min, "max": s.max, "mean": s.mean, "std": s.std,
               "abs_p999": float(np.quantile(s.values.abs().numpy(), 0.999)),
               "abs_p999_sampled": s.count > s.values.numel()}
        if name in errors:
            row["rel_error"] = errors[name]
        table[name] = row
    return table


class _ErrorMeter:
    """Sums ``‖q(x) − x‖²`` and ``‖x‖²`` over the tensors it is called with."""

    def __init__(self, quantizer: nn.Module, once: bool) -> None:
        self.quantizer, self.once = quantizer, once
        self.error = self.norm = 0.0
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> None:
        if self.once and self.calls:
            return
        self.calls += 1
        with torch.no_grad():
            difference = self.quantizer.fake_quantize(x.detach()).float().sub_(x.detach())
        self.error += _squared_norm(difference)
        self.norm += _squared_norm(x.detach())

    def relative_error(self, name: str) -> float:
        if self.calls == 0:
            raise AnalysisError(f"site {name} saw no value: the samples never reach it")
        if self.norm == 0.0:
            raise AnalysisError(f"site {name} saw only zeros: its relative error is undefined")
        return self.error / self.norm


def _site_targets(model: Sam, site_names: Iterable[str]) -> dict[str, nn.Module]:
    """The named sites of ``model`` (instrumented here if it is not yet); unknown names raise."""
    instrument(model)
    names = _unique(site_names, "site_names")
    model_sites = sites(model)
    _check_known(names, model_sites, "site")
    return {n: model_sites[n] for n in names}


def _squared_norm(x: torch.Tensor) -> float:
    return sum(float(chunk.double().square().sum()) for chunk in x.reshape(-1).split(CHUNK_NUMEL))


def _site_input(args: tuple, output: torch.Tensor) -> torch.Tensor:
    return args[0]


def _module_output(args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output


def _sample_modules(
    model: Sam,
    samples: Sequence[CalibrationSample],
    targets: dict[str, nn.Module],
    tensor_of: Callable[[tuple, torch.Tensor], torch.Tensor],
    max_values: int,
    seed: int,
    skip_unreached: bool = False,
    once: Iterable[str] = (),
) -> dict[str, SiteStats]:
    """Hook ``tensor_of(args, output)`` of each target into a :class:`ValueSampler` over a float run
    (a target the run never reaches raises, or is left out with ``skip_unreached``); the targets
    named in ``once`` (weights: the same tensor at every call) are taken at their first call only."""
    if isinstance(max_values, bool) or not isinstance(max_values, int) or max_values < 1:
        raise AnalysisError(f"max_values must be a positive integer, got {max_values!r}")
    samplers = {name: ValueSampler(max_values, _name_seed(seed, name)) for name in targets}
    once = set(once)

    def hook(name: str) -> Callable:
        def take(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if not (name in once and samplers[name].count):
                samplers[name].add(tensor_of(args, out), name)
        return take
    _run_float(model, samples, [(module, hook(name)) for name, module in targets.items()])
    return {name: sampler.stats(name) for name, sampler in samplers.items() if sampler.count or not skip_unreached}


def _name_seed(seed: int, name: str) -> int:
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def _run_float(model: Sam, samples: Sequence[CalibrationSample], hooks: Iterable) -> None:
    """Every sample through the model (all its prompts in one decoder call), quantizers off, with
    the ``(module, hook)`` pairs registered for the run."""
    if not samples:
        raise AnalysisError("no samples to run the model on")
    with forward_hooks(hooks), disabled(model):
        SampleLoop(model, samples, encoder_float=False, progress=False).run("float pass")


def _unique(names: Iterable[str], what: str) -> list[str]:
    if isinstance(names, str):
        raise AnalysisError(f"{what} must be a list of names, got the string {names!r}")
    names = list(dict.fromkeys(names))
    if not names:
        raise AnalysisError(f"{what} is empty")
    return names


def _check_known(names: list[str], known: Iterable[str], what: str) -> None:
    known = set(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise AnalysisError(f"no {what} named {unknown}")
