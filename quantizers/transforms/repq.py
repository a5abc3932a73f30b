"""RepQ-ViT's reparameterisation of post-LayerNorm activations (Li et al. 2023).

A post-LayerNorm activation whose channels have very different ranges is calibrated per channel
(range ``[min_c, max_c]``), then folded into one per-tensor grid: with ``r_c = range_c /
mean(range)`` and ``b_c = min_c / r_c − mean(min / r)``, the LayerNorm outputs ``x' = x / r − b``
(``γ ← γ / r``, ``β ← β / r − b``) and the next Linear undoes it (``W ← W·r`` on its input
columns, ``bias ← bias + (W·r)·b``), so the float function is unchanged:
``(W r)(x/r − b) + bias + (W r) b = W x + bias``. Every channel of ``x'`` then spans the same
``[mean(min / r), mean(min / r) + mean(range)]``, which one per-tensor quantizer fits.
(RepQ-ViT derives the same shift from per-channel zero points, ``b = s̃(z̃ − z_c)``, whose mean z̃
it leaves fractional; here the shift comes from the ranges and the quantizer of ``x'`` calibrates
on the folded data like any other.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from quantizers.errors import QuantizationError

#: smallest ratio r_c, so a (near-)constant channel is not divided by zero
MIN_RATIO = 1e-4


@dataclass(frozen=True)
class RepQConfig:
    """Options of the ``repq_fold`` transform (none yet: the ranges are the per-channel min and max
    of the LayerNorm output over the calibration set)."""


def fold_parameters(min_val: torch.Tensor, max_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, b)`` from per-channel ``min`` and ``max`` (see the module docstring), float64."""
    if min_val.shape != max_val.shape or min_val.dim() != 1 or bool((max_val < min_val).any()):
        raise QuantizationError("per-channel min and max must be 1-D, of one shape, with min <= max")
    spread = (max_val - min_val).double()
    mean = spread.mean()
    if not bool(mean > 0):
        raise QuantizationError("every channel is constant: nothing to reparameterise")
    ratio = torch.clamp(spread / mean, min=MIN_RATIO)
    low = min_val.double() / ratio
    return ratio, low - low.mean()


@torch.no_grad()
def fold_into(norm: nn.LayerNorm, linear: nn.Linear, ratio: torch.Tensor, shift: torch.Tensor) -> None:
    """Fold ``x' = x / r − b`` into ``norm`` and undo it in ``linear`` (in place, float-exact up to
    rounding). A Linear without a bias gets one."""
    if norm.weight is None or norm.bias is None:
        raise QuantizationError("the LayerNorm needs an affine weight and bias to fold into")
    if not (norm.weight.shape == ratio.shape == shift.shape and linear.weight.shape[1] == ratio.numel()):
        raise QuantizationError(f"fold of {ratio.numel()} channels into a LayerNorm of {tuple(norm.weight.shape)} "
                                f"and a Linear of {tuple(linear.weight.shape)}")
    weight = linear.weight.double() * ratio[None, :]
    bias = weight @ shift + (0.0 if linear.bias is None else linear.bias.double())
    norm.weight.copy_((norm.weight.double() / ratio).to(norm.weight.dtype))
    norm.bias.copy_((norm.bias.double() / ratio - shift).to(norm.bias.dtype))
    linear.weight.copy_(weight.to(linear.weight.dtype))
    if linear.bias is None:
        linear.bias = nn.Parameter(bias.to(linear.weight.dtype))
    else:
        linear.bias.copy_(bias.to(linear.bias.dtype))
