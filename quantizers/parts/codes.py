"""A rounding part holding every element's integer code: the result of a calibration-time
algorithm that chooses the codes itself (GPTQ), saved and loaded with the quantizer's state."""

from __future__ import annotations

import torch

from quantizers.errors import QuantizationError
from quantizers.parts.rounding import Rounding, register_rounding


@register_rounding("codes")
class CodeRounding(Rounding):
    """``forward(v) -> codes``: fixed integer codes (relative to the zero point, before the clamp),
    whatever ``v`` is; ``v`` only has to have their layout.

    Arguments:
      codes: integer-valued codes laid out as the quantizer's rows.
    """

    def __init__(self, codes: torch.Tensor | None = None) -> None:
        super().__init__()
        if codes is not None and not bool(torch.equal(codes, torch.round(codes.float()).to(codes.dtype))):
            raise QuantizationError("codes must be whole numbers")
        self.register_buffer("codes", torch.zeros(0, dtype=torch.int32) if codes is None
                             else codes.detach().round().to(torch.int32).clone())

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if v.shape != self.codes.shape:
            raise QuantizationError(f"the rounding holds {tuple(self.codes.shape)} codes, got {tuple(v.shape)} values")
        return self.codes.to(v.dtype)
