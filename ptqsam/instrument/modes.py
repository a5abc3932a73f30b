"""Context managers switching the mode of attached quantizers (restored on exit, also on errors)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

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


def quantizing(model: nn.Module, sites: Iterable[str] | None = None):
    """Selected quantizers fake-quantize (they must be calibrated)."""
    return switched(model, Mode.QUANTIZE, sites)


def disabled(model: nn.Module):
    """Every attached quantizer is off: the model computes in float."""
    return switched(model, Mode.OFF)
