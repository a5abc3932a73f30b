"""Context managers switching the mode of attached quantizers (restored on exit, also on errors)."""

from __future__ import annotations

import zlib
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

from ptqsam.errors import RecipeError
from ptqsam.instrument.instrument import attached_quantizers
from ptqsam.instrument.recipe import matches_any
from quantizers import Mode, Quantizer


def select_quantizers(model: nn.Module, sites: Iterable[str] | None = None) -> dict[str, Quantizer]:
    """Attached quantizers whose site name matches one of the fnmatch patterns ``sites``
    (all of them when ``sites`` is None). A pattern matching no attached site raises RecipeError."""
    quantizers = attached_quantizers(model)
    if sites is None:
        return quantizers
    patterns = [sites] if isinstance(sites, str) else list(sites)
    unmatched = [p for p in patterns if not any(matches_any(name, [p]) for name in quantizers)]
    if unmatched:
        raise RecipeError(f"no attached quantizer matches site pattern(s) {unmatched}")
    return {name: q for name, q in quantizers.items() if matches_any(name, patterns)}


@contextmanager
def switched(model: nn.Module, mode: Mode, sites: Iterable[str] | None = None) -> Iterator[dict[str, Quantizer]]:
    """Set ``mode`` on the selected quantizers (see :func:`select_quantizers`); the others keep
    theirs. Every previous mode is restored on exit. Yields the selected quantizers."""
    selected = select_quantizers(model, sites)
    previous = {name: q.mode for name, q in selected.items()}
    try:
        for quantizer in selected.values():
            quantizer.mode = mode
        yield selected
    finally:
        for name, quantizer in selected.items():
            quantizer.mode = previous[name]


def observing(model: nn.Module, sites: Iterable[str] | None = None):
    """Selected quantizers gather statistics and pass tensors through unchanged."""
    return switched(model, Mode.OBSERVE, sites)


def quantizing(model: nn.Module, sites: Iterable[str] | None = None, allow_drop: bool = False):
    """Selected quantizers fake-quantize (they must be calibrated).

    A quantizer still dropping elements (QDrop, see :func:`dropping`) would leave part of its
    tensor in float: that is refused (RecipeError) unless ``allow_drop`` says it is deliberate
    (reproducing a reference implementation's evaluation).

    >>> from ptqsam import calibrate, evaluate
    >>> report = calibrate(model, "ptq4sam", "W6A6", samples, progress=False)
    >>> with quantizing(model):                       # float again when the block ends
    ...     quantized = evaluate(model, dataset, progress=False)
    >>> float_run = evaluate(model, dataset, progress=False)
    >>> quantized.metrics["miou"] != float_run.metrics["miou"]
    True
    """
    if not allow_drop:
        dropping_now = [name for name, q in select_quantizers(model, sites).items() if q.drop_prob > 0.0]
        if dropping_now:
            raise RecipeError(
                f"{len(dropping_now)} quantizer(s), e.g. {dropping_now[:3]}, still drop elements (QDrop) and would "
                "leave part of their tensor in float: end the dropping() block first"
            )
    return switched(model, Mode.QUANTIZE, sites)


def disabled(model: nn.Module):
    """Every attached quantizer is off: the model computes in float."""
    return switched(model, Mode.OFF)


@contextmanager
def dropping(
    model: nn.Module, probability: float, sites: Iterable[str] | None = None, seed: int = 0
) -> Iterator[dict[str, Quantizer]]:
    """QDrop while the block runs: each selected quantizer leaves every element in float with
    ``probability`` (drawn from a generator seeded by ``seed`` and the site name). On exit every
    selected quantizer drops nothing again, also on errors. Yields the selected quantizers."""
    if not 0.0 <= probability <= 1.0:
        raise RecipeError(f"drop probability must be in [0, 1], got {probability!r}")
    selected = select_quantizers(model, sites)
    try:
        for name, quantizer in selected.items():
            device = quantizer.calibrated.device
            quantizer.drop_generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            quantizer.drop_prob = float(probability)
        yield selected
    finally:
        for quantizer in selected.values():
            quantizer.drop_prob, quantizer.drop_generator = 0.0, None
