"""Input validation shared by every numeric entry point."""

from __future__ import annotations

import math

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


def check_finite(x: torch.Tensor, what: str = "input") -> None:
    """Raise if ``x`` holds NaN or Inf."""
    # One reduction pass instead of a full boolean mask: NaN/Inf always propagate into the sum; a
    # non-finite sum of finite values (overflow) falls through to the exact check.
    if not math.isfinite(float(x.detach().sum())) and not bool(torch.isfinite(x).all()):
        _non_finite(what)


def check_peak(peak: torch.Tensor | float, what: str = "input") -> None:
    """Raise if a tensor holds NaN or Inf, given its ``peak = max |x|`` (NaN propagates into it)."""
    if not math.isfinite(float(peak)):
        _non_finite(what)


def _non_finite(what: str) -> None:
    raise QuantizationError(f"{what} contains NaN or Inf values")
