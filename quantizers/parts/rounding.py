"""Rounding parts of a uniform quantizer: how ``v = x/Δ`` becomes a grid index.

The default, :class:`NearestRounding`, rounds half to even with a straight-through gradient; a
uniform quantizer with it (and fixed qparams) computes exactly torch's fake-quantize op. Other
parts (AdaRound's soft rounding, a fixed rounding baked after reconstruction) register themselves
with :func:`register_rounding` so saved states can name them.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from quantizers.functional.uniform import round_ste
from quantizers.registry import Registry
from quantizers.state import LazyStateModule

ROUNDINGS: Registry[type["Rounding"]] = Registry("rounding")
register_rounding = ROUNDINGS.register


class Rounding(LazyStateModule):
    """``forward(v) -> indices``: ``v = x/Δ`` (rows of the quantizer's groups) to grid indices,
    before the zero point is added and the result is clamped. Its state (if any) loads into a
    freshly built part of the same kind."""

    kind: str = ""

    @abstractmethod
    def forward(self, v: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ...


@register_rounding("nearest")
class NearestRounding(Rounding):
    """Round to nearest, ties to even; straight-through gradient."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return round_ste(v)
