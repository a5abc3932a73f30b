"""Hessian-guided scale search of a convolution's weight and input (PTQ4ViT searches its convs too).

The same alternating search as :func:`quantizers.search.hessian.search_linear` (same grid, rounds,
metrics and objective), scored on the output of the convolution itself: the module's stride,
padding, dilation and groups (:class:`ConvGeometry`). The weight is taken in its *site layout*,
output channels on axis 0: ``(out, in/groups, kH, kW)`` for ``conv2d``; for ``conv_transpose2d``
the stored ``(in, out/groups, kH, kW)`` transposed on its first two axes, ``(out/groups, in, kH, kW)``
(its row ``j`` makes output channels ``j``, ``j + out/groups``, ... of every group). A per-channel
weight scale is one scale per row; the input scale is per tensor.

With ``max_rows`` the objective is estimated on whole batch elements (images or prompts), drawn at
random (seed 0) without replacement: ``max(1, max_rows // (H_out·W_out))`` of them, an output row
being one output position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quantizers.errors import QuantizationError
from quantizers.functional.checks import check_tensor
from quantizers.search.candidates import Operand, Output
from quantizers.search.hessian import (
    HessianSearchConfig,
    LinearScales,
    _alternate,
    _grad_weight,
    _row_subset,
)
from quantizers.spec import check_bits

_PAIR = tuple[int, int]


def _pair(value: object, name: str, least: int) -> _PAIR:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in pair):
        raise QuantizationError(f"conv {name} must be an int or a pair of ints >= {least}, got {value!r}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvGeometry:
    """How a 2-D convolution combines its input with its weight (the module's own settings).

    Arguments:
      transposed: ``conv_transpose2d`` (else ``conv2d``).
      stride, padding, dilation, output_padding: as the torch modules take them (ints or pairs).
      groups: channel groups.
    """

    transposed: bool = False
    stride: _PAIR = (1, 1)
    padding: _PAIR = (0, 0)
    dilation: _PAIR = (1, 1)
    groups: int = 1
    output_padding: _PAIR = (0, 0)

    def __post_init__(self) -> None:
        for name, least in (("stride", 1), ("padding", 0), ("dilation", 1), ("output_padding", 0)):
            object.__setattr__(self, name, _pair(getattr(self, name), name, least))
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1:
            raise QuantizationError(f"conv groups must be a positive integer, got {self.groups!r}")

    @classmethod
    def of(cls, module: nn.Conv2d | nn.ConvTranspose2d) -> "ConvGeometry":
        """The geometry of a torch ``Conv2d`` / ``ConvTranspose2d`` (string paddings refused)."""
        if isinstance(module.padding, str):
            raise QuantizationError(f"conv padding {module.padding!r} is not supported by the search")
        transposed = isinstance(module, nn.ConvTranspose2d)
        return cls(transposed, module.stride, module.padding, module.dilation, module.groups,
                   module.output_padding if transposed else (0, 0))

    def rows_to_channels(self, rows: int) -> int:
        """Output channels made by a site-layout weight of ``rows`` rows."""
        return rows * self.groups if self.transposed else rows

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The convolution of ``x`` (N, C, H, W) with a site-layout ``weight``, without bias."""
        if self.transposed:
            return F.conv_transpose2d(x, weight.transpose(0, 1), None, self.stride, self.padding,
                                      self.output_padding, self.groups, self.dilation)
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def many(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``x`` convolved with each of ``c`` site-layout weights ``(c, rows, ...)`` in one call:
        ``(c, N, out, H, W)``. The candidates are stacked inside each channel group, so one grouped
        convolution computes them all."""
        c, rows, g = weights.shape[0], weights.shape[1], self.groups
        if self.transposed:  # stored (in, c·rows, kH, kW): each group's outputs are c·rows wide
            stacked = weights.permute(2, 0, 1, 3, 4).reshape(weights.shape[2], c * rows, *weights.shape[3:])
            per_group = rows
        else:  # (g·c·rows/g, in/g, kH, kW): group gi holds its rows of every candidate
            per_group = rows // g
            stacked = weights.reshape(c, g, per_group, *weights.shape[2:]).transpose(0, 1).reshape(
                c * rows, *weights.shape[2:])
        y = self(x, stacked.transpose(0, 1) if self.transposed else stacked)
        y = y.reshape(y.shape[0], g, c, per_group, *y.shape[2:]).permute(2, 0, 1, 3, 4, 5)
        return y.reshape(c, x.shape[0], g * per_group, *y.shape[-2:])


def subsample_batch(
    max_rows: int | None, x: torch.Tensor, out: torch.Tensor, grad: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The same seeded random batch elements of a conv's input, output and output gradient: at most
    ``max(1, max_rows // (H_out·W_out))`` (see the module docstring); None or enough: unchanged."""
    if max_rows is None:
        return x, out, grad
    rows = _row_subset(x.shape[0], max(1, max_rows // (out.shape[-2] * out.shape[-1])))
    if rows is None:
        return x, out, grad
    rows = rows.to(x.device)
    return x.index_select(0, rows), out.index_select(0, rows), None if grad is None else grad.index_select(0, rows)


def search_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, grad_out: torch.Tensor | None,
    w_bits: int, a_bits: int, geometry: ConvGeometry = ConvGeometry(), weight_granularity: str = "tensor",
    config: HessianSearchConfig = HessianSearchConfig(),
) -> LinearScales:
    """Search the weight and input scales of ``out = conv(x, weight) + bias``.

    Arguments:
      x: cached inputs ``(N, C_in, H, W)``.
      weight: the weight in its site layout (see the module docstring).
      bias: ``(C_out,)`` or None; kept in float.
      out: the float output ``(N, C_out, H_out, W_out)``.
      grad_out: ``∂L/∂out``, same shape as ``out`` (required by the ``hessian`` metric).
      w_bits, a_bits: weight and input bit-widths.
      geometry: the convolution's stride, padding, dilation, groups and kind.
      weight_granularity: ``tensor`` (one scale) or ``channel`` (one per weight row).
      config: grid, rounds, metric, memory budget and ``max_rows``.

    Returns:
      :class:`~quantizers.search.hessian.LinearScales` (weight scales, the input scale, history).
    """
    for t, what in ((x, "input"), (weight, "weight"), (out, "output")):
        check_tensor(t, what)
    if x.dim() != 4 or weight.dim() != 4:
        raise QuantizationError(f"conv input and weight must be 4-D, got {tuple(x.shape)} and {tuple(weight.shape)}")
    if weight_granularity not in ("tensor", "channel"):
        raise QuantizationError(f"conv weight_granularity must be 'tensor' or 'channel', got {weight_granularity!r}")
    rows = weight.shape[0]
    channels = geometry.rows_to_channels(rows)
    try:
        expected = (x.shape[0], *geometry(x[:1].float(), weight.float()).shape[1:])
    except RuntimeError as error:
        raise QuantizationError(f"weight {tuple(weight.shape)} does not fit input {tuple(x.shape)}: {error}") from None
    if out.shape != expected:
        raise QuantizationError(f"output shape {tuple(out.shape)} != {expected}")
    if bias is not None and bias.shape != (channels,):
        raise QuantizationError(f"bias shape {tuple(bias.shape)} != ({channels},)")
    x, out, grad_out = subsample_batch(config.max_rows, x, out, grad_out)
    groups = rows if weight_granularity == "channel" else 1
    grad_sq = _grad_weight(grad_out, out, config.metric)
    b = None if bias is None else bias.detach().float().view(-1, 1, 1)

    def by_rows(y: torch.Tensor) -> torch.Tensor:
        """``(..., C_out, H, W)`` as ``(..., C_out/rows, rows, H, W)``: weight row ``j`` makes channel
        slice ``[:, j]`` (for conv2d the leading factor is 1)."""
        return y.reshape(*y.shape[:-3], channels // rows, rows, *y.shape[-2:])

    def forward(w_hat: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        if w_hat.dim() == 5:  # weight candidates
            y = geometry.many(x_hat, w_hat)
        elif x_hat.dim() == 5:  # input candidates: folded into the batch
            y = geometry(x_hat.reshape(-1, *x_hat.shape[2:]), w_hat)
            y = y.reshape(*x_hat.shape[:2], *y.shape[1:])
        else:
            y = geometry(x_hat, w_hat)
        return by_rows(y if b is None else y + b)

    operands = (
        Operand(weight.detach().float(), check_bits(w_bits), axis=0, groups=groups),
        Operand(x.detach().float(), check_bits(a_bits), axis=0, groups=1),
    )
    ref, weight_sq = by_rows(out.detach().float()), None if grad_sq is None else by_rows(grad_sq)
    output = Output.along(ref, weight_sq, 2, groups)
    (w_scale, x_scale), history = _alternate(operands, forward, output, config)
    return LinearScales(w_scale, x_scale, history)


__all__ = ["ConvGeometry", "search_conv", "subsample_batch"]
