"""Perceptual-consistency clipping (SAQ-SAM's PCC): the clipping range of a query or key
quantizer chosen so the quantized attention keeps the float attention's salient entries.

For a candidate percentile ``p`` the range is ``[quantile(x, 1 − p), quantile(x, p)]`` of the
quantizer's input (extended to include 0, as every affine range); the objective is
``1 − IoU`` of the attention masks ``A > τ·rowmax(A)`` of the float and the quantized attention,
averaged over the leading dimensions (prompts, heads). The pass that runs it lives with the model
code; these are the numerics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantizers.errors import QuantizationError
from quantizers.options import Options, check_int, check_number
from quantizers.registry import register_search
from quantizers.search.base import ScaleSearch

#: SAQ-SAM's candidate percentiles (``search_range_AOL``)
PERCENTILES = (0.85, 0.87, 0.88, 0.89, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.960, 0.965, 0.970, 0.975, 0.980,
               0.983, 0.985, 0.987, 0.989, 0.99, 0.993, 0.995, 0.997, 0.999, 0.9993, 0.9995, 0.9997, 0.9999, 0.99999)


@dataclass(frozen=True)
class PCCOptions(Options):
    """``percentiles``: candidates p, each in (0.5, 1]; ``threshold``: τ of the masks (0.5);
    ``rounds``: greedy passes over every searched quantizer (SAQ-SAM: 2); ``images``: calibration
    images the objective is measured on (SAQ-SAM: the first one)."""

    percentiles: tuple[float, ...] = PERCENTILES
    threshold: float = 0.5
    rounds: int = 2
    images: int = 1

    def __post_init__(self) -> None:
        values = self.percentiles
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or not len(values):
            raise QuantizationError(f"pcc percentiles must be a non-empty list of numbers, got {values!r}")
        object.__setattr__(self, "percentiles", tuple(
            check_number(v, "pcc percentile", lambda f: 0.5 < f <= 1.0, "in (0.5, 1]") for v in values))
        check_number(self.threshold, "pcc option 'threshold'", lambda v: 0.0 < v <= 1.0, "in (0, 1]")
        check_int(self.rounds, "pcc option 'rounds'", 1)
        check_int(self.images, "pcc option 'images'", 1)


@register_search("pcc", PCCOptions)
class PCCSearch(ScaleSearch):
    """Clipping percentile of a per-tensor affine uniform quantizer by attention-mask IoU."""

    @classmethod
    def check_spec(cls, spec) -> None:
        if spec.quantizer != "uniform" or spec.granularity.kind != "tensor" or spec.symmetric:
            raise QuantizationError("the pcc search clips per-tensor affine uniform quantizers")


def percentile_ranges(x: torch.Tensor, percentiles: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lows, highs)``: ``quantile(x, 1 − p)`` and ``quantile(x, p)`` for each ``p`` (linear
    interpolation, as ``torch.quantile``, without its size limit), float32."""
    values = torch.sort(x.detach().reshape(-1).double()).values
    q = torch.tensor(percentiles, dtype=torch.float64)
    return _interpolate(values, 1.0 - q).float(), _interpolate(values, q).float()


def _interpolate(values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    position = q.to(values.device) * (values.numel() - 1)
    low = torch.floor(position).long()
    high = torch.clamp(low + 1, max=values.numel() - 1)
    return values[low] + (position - low) * (values[high] - values[low])


def attention_masks(attention: torch.Tensor, threshold: float) -> torch.Tensor:
    """``A > τ·max(A)`` along the last dimension (the keys of each query)."""
    return attention > threshold * attention.amax(dim=-1, keepdim=True)


def mask_iou_loss(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Mean over the leading dimensions of ``1 − |m₁ ∧ m₂| / (|m₁ ∨ m₂| + 1e-6)``, the sums over the
    last two (queries × keys); masks of shape ``(..., queries, keys)``."""
    if reference.shape != candidate.shape or reference.dim() < 2:
        raise QuantizationError(f"masks must have one shape with at least 2 dims, got {tuple(reference.shape)} and "
                                f"{tuple(candidate.shape)}")
    inter = (reference & candidate).sum(dim=(-2, -1)).double()
    union = (reference | candidate).sum(dim=(-2, -1)).double()
    return float((1.0 - inter / (union + 1e-6)).mean())
