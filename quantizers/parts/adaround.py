"""AdaRound (Nagel et al. 2020): learned rounding of weights, and the rounding it hardens into.

Soft rounding of ``v = W/Δ``: ``⌊v⌋ + h(V)`` with the rectified sigmoid
``h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1)``, ζ = 1.1, γ = −0.1, and ``V`` initialised so that
``h(V) = v − ⌊v⌋`` (the soft-rounded weight starts equal to the float weight). The regulariser
``Σ (1 − |2h(V) − 1|^β)`` pushes every ``h`` to 0 or 1; at the end the rounding is hardened:
``⌊v⌋ + [V ≥ 0]`` (:class:`FixedRounding`), which holds only the chosen offsets, so it saves and
loads with the quantizer's state.
"""

from __future__ import annotations

import torch
from torch import nn

from quantizers.errors import QuantizationError
from quantizers.parts.rounding import Rounding, register_rounding

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1)``."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_logits(fraction: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = fraction`` (fractions in [0, 1)): ``V = −log((ζ − γ)/(fraction − γ) − 1)``."""
    return -torch.log((ZETA - GAMMA) / (fraction - GAMMA) - 1.0)


def rounding_regulariser(h: torch.Tensor, beta: float) -> torch.Tensor:
    """``Σ (1 − |2h − 1|^β)``: zero when every ``h`` is 0 or 1."""
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


@register_rounding("adaround")
class AdaRoundRounding(Rounding):
    """Soft rounding ``⌊v⌋ + h(V)`` with learnable logits ``V`` (one per weight element).

    Arguments:
      v: ``W/Δ`` laid out as the quantizer's rows (``(groups, elements)``) at the start.
    """

    def __init__(self, v: torch.Tensor | None = None) -> None:
        super().__init__()
        start = torch.zeros(0) if v is None else initial_logits(v.detach() - torch.floor(v.detach()))
        self.logits = nn.Parameter(start.float())

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if v.shape != self.logits.shape:
            raise QuantizationError(f"AdaRound was set up for {tuple(self.logits.shape)} values, got {tuple(v.shape)}")
        return torch.floor(v) + rectified_sigmoid(self.logits)

    def soft_values(self) -> torch.Tensor:
        """``h(V)``, for the regulariser."""
        return rectified_sigmoid(self.logits)

    def hardened(self) -> "FixedRounding":
        """The hard rounding ``⌊v⌋ + [V ≥ 0]`` these logits choose."""
        return FixedRounding(self.logits.detach() >= 0)


@register_rounding("fixed")
class FixedRounding(Rounding):
    """``⌊v⌋ + up`` with a fixed boolean ``up`` per element (hardened AdaRound).

    Arguments:
      up: whether each element rounds up, laid out as the quantizer's rows.
    """

    def __init__(self, up: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("up", torch.zeros(0, dtype=torch.bool) if up is None else up.detach().bool().clone())

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if v.shape != self.up.shape:
            raise QuantizationError(f"the fixed rounding holds {tuple(self.up.shape)} choices, got {tuple(v.shape)}")
        return torch.floor(v) + self.up.to(v.dtype)
