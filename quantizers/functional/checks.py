"""Input validation shared by every numeric entry point."""

from __future__ import annotations

import torch

from quantizers.errors import QuantizationError


def check_tensor(x: torch.Tensor, what: str = "input") -> torch.Tensor:
    """Raise :class:`QuantizationError` if ``x`` is not a non-empty, finite floating tensor."""
    if not isinstance(x, torch.Tensor):
        raise QuantizationError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise QuantizationError(f"{what} must be a floating-point tensor, got {x.dtype}")
    if x.numel() == 0:
        raise QuantizationError(f"{what} is empty (shape {tuple(x.shape)})")
    # One reduction pass instead of a full boolean mask: NaN/Inf always propagate into the sum; a
    # non-finite sum of finite values (overflow) falls through to the exact check.
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise QuantizationError(f"{what} contains NaN or Inf values")
    return x
