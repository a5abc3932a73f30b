"""The values a calibrated quantizer can output (its grid), for drawing over a histogram."""

from __future__ import annotations

from ptqsam.errors import AnalysisError
from quantizers import GridLevels, Quantizer

__all__ = ["GridLevels", "grid_levels"]


def grid_levels(quantizer: Quantizer) -> GridLevels:
    """The grid of a calibrated quantizer, as the quantizer describes it (:meth:`Quantizer.levels`)."""
    if not quantizer.is_calibrated:
        raise AnalysisError(f"{type(quantizer).__name__} is not calibrated: it has no grid yet")
    levels = quantizer.levels()
    if levels is None:
        raise AnalysisError(f"no grid is known for quantizer type {type(quantizer).__name__}")
    return levels
