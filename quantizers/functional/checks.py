"""Input validation shared by every numeric entry point."""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Iterator

import torch

from quantizers.errors import QuantizationError


def check_tensor(x: torch.Tensor, what: str = "input", finite: bool = True) -> torch.Tensor:
    """Raise :class:`QuantizationError` if ``x`` is not a non-empty, finite floating tensor.

    ``finite=False`` skips the NaN/Inf scan (a pass over ``x``) for callers whose kernel returns
    ``max |x|`` and calls :func:`check_peak` with it.
    """
    if not isinstance(x, torch.Tensor):
        raise QuantizationError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise QuantizationError(f"{what} must be a floating-point tensor, got {x.dtype}")
    if x.numel() == 0:
        raise QuantizationError(f"{what} is empty (shape {tuple(x.shape)})")
    if finite:
        check_finite(x, what)
    return x


def check_finite(x: torch.Tensor, what: str = "input", deferrable: bool = False) -> None:
    """Raise if ``x`` holds NaN or Inf (``deferrable``: as in :func:`check_peak`)."""
    if deferrable and getattr(_deferred, "peaks", None) is not None:
        check_peak(torch.amax(torch.abs(x.detach())), what, deferrable=True)  # NaN propagates into amax
        return
    # One reduction pass instead of a full boolean mask: NaN/Inf always propagate into the sum; a
    # non-finite sum of finite values (overflow) falls through to the exact check.
    if not math.isfinite(float(x.detach().sum())) and not bool(torch.isfinite(x).all()):
        _non_finite(what)


def check_peak(peak: torch.Tensor | float, what: str = "input", deferrable: bool = False) -> None:
    """Raise if a tensor holds NaN or Inf, given its ``peak = max |x|`` (NaN propagates into it).

    ``deferrable=True`` (a fake-quantization kernel's check, which no decision waits on): inside
    :func:`deferred_peak_checks`, the check is made when that block ends."""
    pending = getattr(_deferred, "peaks", None)
    if deferrable and pending is not None and isinstance(peak, torch.Tensor):
        pending.append((peak, what))
    elif not math.isfinite(float(peak)):
        _non_finite(what)


_deferred = threading.local()


@contextlib.contextmanager
def deferred_peak_checks() -> Iterator[None]:
    """The deferrable NaN/Inf checks (see :func:`check_peak`) made inside the block are gathered on
    the device and made when it ends, with one device-to-host read for all of them instead of one
    per quantized tensor (on a GPU, each read waits for every queued kernel). A non-finite input
    raises the same QuantizationError, at the end of the block: keep a block to one forward whose
    outputs leave it only then. Nested blocks check at the end of the outermost; a block that
    raises drops its pending checks (its error stands)."""
    if getattr(_deferred, "peaks", None) is not None:
        yield
        return
    _deferred.peaks = []
    try:
        yield
    finally:
        pending, _deferred.peaks = _deferred.peaks, None
    _check_pending(pending)


def _check_pending(pending: list[tuple[torch.Tensor, str]]) -> None:
    if not pending:
        return
    device = pending[0][0].device
    peaks = torch.stack([peak.detach().reshape(()).float().to(device) for peak, _ in pending])
    finite = torch.isfinite(peaks)
    if not bool(finite.all()):
        _non_finite(pending[int(torch.argmin(finite.int()))][1])


def _non_finite(what: str) -> None:
    raise QuantizationError(f"{what} contains NaN or Inf values")
