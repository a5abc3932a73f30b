"""GPTQ (Frantar et al. 2023): weight codes chosen column by column, each column's rounding error
spread over the columns not yet quantized through the inverse Hessian of the layer's inputs.

For a layer ``y = W x`` and calibration inputs ``X``, ``H = 2 X Xᵀ / n``. Columns of ``W`` are
quantized in order (act-order: by descending ``diag(H)``); after column ``i`` is rounded, the
remaining columns move by ``−(w_i − q_i)/U_ii · U_i,i+1:``, ``U`` the upper Cholesky factor of
``H⁻¹`` (after dampening ``H`` by ``damp·mean(diag H)``). Updates inside a block of ``block_size``
columns are applied at once to the later blocks (lazy batch updates); the result is the same as
column by column. Dead inputs (``H_ii = 0``) get ``H_ii = 1`` and zero weights, as in the
reference. The grid is the weight quantizer's own (its calibrated qparams per element; groups are
therefore static, computed on the original weight, as GPTQ's ``static_groups``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantizers.errors import QuantizationError
from quantizers.options import Options, check_int, check_number
from quantizers.registry import register_search
from quantizers.search.base import ScaleSearch


@dataclass(frozen=True)
class GPTQOptions(Options):
    """``block_size``: columns per lazy update block (128); ``damp``: dampening as a fraction of
    the mean diagonal of H (0.01); ``act_order``: quantize columns by descending ``diag(H)``."""

    block_size: int = 128
    damp: float = 0.01
    act_order: bool = False

    def __post_init__(self) -> None:
        check_int(self.block_size, "gptq option 'block_size'", 1)
        check_number(self.damp, "gptq option 'damp'", lambda v: v > 0, "a positive number")
        if not isinstance(self.act_order, bool):
            raise QuantizationError(f"gptq option 'act_order' must be true or false, got {self.act_order!r}")


@register_search("gptq", GPTQOptions)
class GPTQSearch(ScaleSearch):
    """GPTQ rounding of a uniform weight quantizer's codes (a calibration pass over each layer's
    inputs computes H; see :func:`gptq_codes`)."""

    @classmethod
    def check_spec(cls, spec) -> None:
        if spec.quantizer != "uniform":
            raise QuantizationError("the gptq search chooses the codes of uniform weight quantizers, "
                                    f"not {spec.quantizer!r}")


def gptq_codes(weight: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               qmin: int, qmax: int, options: GPTQOptions = GPTQOptions()) -> torch.Tensor:
    """Integer codes ``q − z`` (float64, the shape of ``weight``) for the ``(rows, columns)`` weight.

    Arguments:
      weight: the float weight, one row per output, one column per input.
      hessian: ``(columns, columns)`` ``2 X Xᵀ / n`` of the layer's inputs.
      scale, zero_point: the quantizer's qparams, one per weight element (broadcast to its shape).
      qmin, qmax: the integer grid.
      options: block size, dampening, act-order.
    """
    if weight.dim() != 2 or hessian.shape != (weight.shape[1], weight.shape[1]):
        raise QuantizationError(f"gptq needs a 2-D weight and a matching square H, got {tuple(weight.shape)} and "
                                f"{tuple(hessian.shape)}")
    w = weight.detach().double().clone()
    h = hessian.detach().double().clone()
    step = scale.detach().double().expand_as(w).clone()
    zero = zero_point.detach().double().expand_as(w).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = torch.argsort(torch.diag(h), descending=True, stable=True) if options.act_order \
        else torch.arange(w.shape[1], device=w.device)
    w, step, zero, h = w[:, order], step[:, order], zero[:, order], h[order][:, order]
    h += options.damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    try:
        upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError as error:
        raise QuantizationError(f"gptq: the dampened Hessian is not positive definite ({error}); raise damp") from None
    codes = torch.zeros_like(w)
    for start in range(0, w.shape[1], options.block_size):
        end = min(start + options.block_size, w.shape[1])
        block, errors = w[:, start:end].clone(), torch.zeros_like(w[:, start:end])
        for i in range(end - start):
            column = start + i
            zero_column = zero[:, column]
            code = torch.clamp(torch.round(block[:, i] / step[:, column]) + zero_column, qmin, qmax) - zero_column
            codes[:, column] = code
            error = (block[:, i] - code * step[:, column]) / upper[column, column]
            block[:, i:] -= error[:, None] * upper[column, column:end][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ upper[start:end, end:]
    return codes[:, torch.argsort(order)]
