"""Uniform fake quantization: pure tensor functions.

Grids (b bits): signed ``[-2^(b-1), 2^(b-1) - 1]``, unsigned ``[0, 2^b - 1]``.
``x̂ = (clamp(round(x / Δ) + z, qmin, qmax) - z) · Δ`` with round-half-to-even, computed exactly as
torch's ``fake_quantize_per_{tensor,channel}_affine``: ``x·(1/Δ)`` in float32, rounded, plus z,
clamped, minus z, times Δ. Large float32 tensors that need no gradient take a fused kernel
(:mod:`quantizers.functional.fused`: one read, one write, no mask); the others take torch's ops
(exact, and their backward is the clipped straight-through estimator). The two agree bit for bit
except where ``|x/Δ| >= 2^63``, which torch's CPU per-channel op sends to ``qmin`` (an undefined
float-to-int64 conversion) while the fused kernel clamps it to the nearer end of the grid.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from quantizers.errors import QuantizationError
from quantizers.functional.checks import check_finite, check_peak, check_tensor
from quantizers.functional.fused import FusedKernel, constant, memory_order
from quantizers.spec import PER_TENSOR, Granularity, check_bits

#: Smallest scale ever produced (an all-zero tensor gets this, never a zero scale).
SCALE_EPS = float(torch.finfo(torch.float32).eps)


def quant_range(bits: int, signed: bool) -> tuple[int, int]:
    """Integer grid ``(qmin, qmax)`` of a ``bits``-bit signed or unsigned code."""
    check_bits(bits)
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def grid_range(bits: int, symmetric: bool, signed: bool = True) -> tuple[int, int]:
    """Grid of a spec: symmetric specs follow ``signed``; affine specs use the unsigned grid."""
    return quant_range(bits, signed if symmetric else False)


def qparams_from_minmax(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    bits: int,
    symmetric: bool,
    signed: bool = True,
    eps: float = SCALE_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` covering ``[min_val, max_val]`` (extended to include 0).

    Same arithmetic as ``torch.ao.quantization`` observers: symmetric signed uses
    ``amax / ((qmax - qmin) / 2)``; symmetric unsigned ``max / qmax``; affine
    ``(max - min) / (qmax - qmin)`` with ``z = qmin - round(min / scale)``. Scales are floored at
    ``eps`` so an all-zero input never yields a zero scale. Shapes follow ``min_val``.
    """
    qmin, qmax = grid_range(bits, symmetric, signed)
    min_val = torch.as_tensor(min_val, dtype=torch.float32)
    max_val = torch.as_tensor(max_val, dtype=torch.float32)
    if min_val.shape != max_val.shape:
        raise QuantizationError(f"min and max shapes differ: {tuple(min_val.shape)} vs {tuple(max_val.shape)}")
    if not bool(torch.isfinite(min_val).all() & torch.isfinite(max_val).all()):
        raise QuantizationError("min/max statistics contain NaN or Inf")
    if bool((min_val > max_val).any()):
        raise QuantizationError("min statistic exceeds max statistic")
    min_neg = torch.clamp(min_val, max=0.0)
    max_pos = torch.clamp(max_val, min=0.0)
    if symmetric:
        if signed:
            scale = torch.maximum(-min_neg, max_pos) / (float(qmax - qmin) / 2)
        else:
            scale = max_pos / float(qmax)
        scale = torch.clamp(scale, min=eps)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        span = max_pos - min_neg
        # a span beyond float32's range (e.g. [-3e38, 3e38]) is divided in float64: the scale fits
        wide = ((max_pos.double() - min_neg.double()) / float(qmax - qmin)).float()
        scale = torch.clamp(torch.where(torch.isfinite(span), span / float(qmax - qmin), wide), min=eps)
        zero_point = torch.clamp(qmin - torch.round(min_neg / scale).to(torch.int32), qmin, qmax)
    check_grid_ends(scale, zero_point, qmin, qmax)
    return scale, zero_point.to(torch.int32)


class RoundSTE(torch.autograd.Function):
    """``torch.round`` (half to even) forward, identity gradient backward (straight-through)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.round(v)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad


def round_ste(v: torch.Tensor) -> torch.Tensor:
    """Round to nearest (ties to even) with a straight-through gradient."""
    return RoundSTE.apply(v)


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.factor = factor
        return v.view_as(v)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad * ctx.factor, None


def grad_scale(v: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """``v`` unchanged forward; its gradient multiplied by ``factor`` (a number, or one per entry
    of ``v``) backward (LSQ's step-size gradient scale)."""
    return _GradScale.apply(v, factor)


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    granularity: Granularity = PER_TENSOR,
    rounding: Callable[[torch.Tensor], torch.Tensor] | None = None,
    overwrite: bool = False,
) -> torch.Tensor:
    """Fake-quantize ``x``; gradients follow the clipped straight-through estimator.

    ``scale``/``zero_point`` hold one entry per quantization group (see :func:`num_groups`).
    Non-float32 inputs are computed in float32 and cast back. ``overwrite=True`` says the caller
    hands ``x`` over: the result may be written into it (the fused kernel does; use the result).

    Without ``rounding``, torch's fused ``fake_quantize_per_{tensor,channel}_affine`` ops compute
    it (exact; gradient for ``x`` only). With a ``rounding`` (e.g. :func:`round_ste`, or a learned
    soft rounding), the same arithmetic runs in autograd ops so that ``scale`` and ``zero_point``
    (float tensors, e.g. ``nn.Parameter`` s) receive gradients (LSQ): ``rounding(x·(1/Δ)) + z``,
    clamped to ``[qmin, qmax]`` with the op's gradient mask, minus ``z``, times ``Δ``. With
    ``round_ste`` and integer zero points the values equal the fused ops' bit for bit.
    """
    check_tensor(x, finite=False)
    if rounding is not None:
        check_finite(x)
        return _fake_quantize_autograd(x, scale, zero_point, qmin, qmax, granularity, rounding)
    qparams = check_qparams(scale, zero_point, qmin, qmax, num_groups(x, granularity))
    return fake_quantize_checked(x, qparams, granularity, overwrite)


class CheckedQParams:
    """Qparams that passed :func:`check_qparams` on the grid ``[qmin, qmax]``: ``scale`` (float32)
    and ``zero_point`` (int32), one entry per group, flat. A holder of one (a quantizer whose
    qparams did not change) quantizes with :func:`fake_quantize_checked` without reading their
    values again (on a GPU, that read is a synchronisation per call); the fused kernel's scalars
    are derived from them once."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> None:
        self.scale, self.zero_point, self.qmin, self.qmax = scale, zero_point, qmin, qmax
        self._kernel_args: dict[tuple[int, ...], tuple[torch.Tensor, ...]] = {}

    def kernel_args(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        """``(1/Δ, Δ, z, (qmin, qmax))`` for the fused kernel, the first three shaped ``shape``
        against the tensor (detached: the kernel takes no gradient)."""
        found = self._kernel_args.get(shape)
        if found is None:
            step = self.scale.detach().reshape(shape).clone()
            ones = torch.ones((), dtype=torch.float32, device=step.device)
            found = self._kernel_args[shape] = (ones / step, step, self.zero_point.reshape(shape).to(torch.float32),
                                                constant((self.qmin, self.qmax), step.device))
        return found


def fake_quantize_checked(x: torch.Tensor, qparams: CheckedQParams, granularity: Granularity = PER_TENSOR,
                          overwrite: bool = False) -> torch.Tensor:
    """:func:`fake_quantize` (nearest rounding) with qparams already checked."""
    check_tensor(x, finite=False)
    groups = num_groups(x, granularity)
    if qparams.scale.numel() != groups:
        raise QuantizationError(f"expected {groups} scale/zero_point entries, got {qparams.scale.numel()}")
    scale, zero_point = qparams.scale, qparams.zero_point
    if granularity.kind != "group" and _grad_free(x, scale):
        fused = _fused_in_memory_order(x, qparams, granularity, overwrite)
        if fused is not None:
            return fused
    check_finite(x, deferrable=True)
    qmin, qmax = qparams.qmin, qparams.qmax
    out_dtype = x.dtype
    xf = x if x.dtype == torch.float32 else x.float()
    if granularity.kind == "tensor":
        out = torch.fake_quantize_per_tensor_affine(xf, scale.reshape(()), zero_point.reshape(()), qmin, qmax)
    elif granularity.kind == "channel":
        axis = channel_axis(x, granularity)
        out = torch.fake_quantize_per_channel_affine(xf, scale, zero_point, axis, qmin, qmax)
    else:
        rows = group_rows(xf, granularity)
        out = torch.fake_quantize_per_channel_affine(rows, scale, zero_point, 0, qmin, qmax)
        out = ungroup_rows(out, x.shape, granularity)
    return out if out_dtype == torch.float32 else out.to(out_dtype)


def _grad_free(*tensors: torch.Tensor) -> bool:
    """Whether no gradient flows through these tensors here (the fused kernel has no backward; where
    one is needed, torch's op gives the input's or refuses a scale that requires it)."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _uniform(x: torch.Tensor, out: torch.Tensor, inv_scale: torch.Tensor, scale: torch.Tensor,
             zero_point: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Fused kernel: ``out = fake_quantize(x)`` (qparams broadcast against ``x``); returns max |x|."""
    peak = torch.amax(torch.abs(x))  # read before ``out`` (which may be ``x``) is written
    index = torch.clamp(torch.round(x * inv_scale) + zero_point, bounds[0], bounds[1])
    out.copy_((index - zero_point) * scale)
    return peak


_fused_uniform = FusedKernel(_uniform)


def _fused_in_memory_order(x, qparams, granularity, overwrite) -> torch.Tensor | None:
    """The fused kernel's result, or None where ``x`` does not take it. A tensor dense in another
    layout (a transposed or permuted view, channels-last) is computed on its contiguous permutation
    and returned in its own layout, as torch's ops return it."""
    if x.is_contiguous():
        return _fake_quantize_fused(x, qparams, granularity, overwrite) \
            if _fused_uniform.wants(x) else None
    perm = memory_order(x)
    if perm is None or not _fused_uniform.wants(x.permute(perm)):
        return None
    if granularity.kind == "channel":
        granularity = Granularity("channel", perm.index(channel_axis(x, granularity)))
    out = _fake_quantize_fused(x.permute(perm), qparams, granularity, overwrite)
    return out.permute(sorted(range(x.dim()), key=perm.__getitem__))


def _fake_quantize_fused(x, qparams: CheckedQParams, granularity, overwrite) -> torch.Tensor:
    """Per-tensor (``x`` as one row) or per-channel (``x`` as ``(outer, channels, inner)``)."""
    if granularity.kind == "tensor":
        view, shape = x.view(-1), ()
    else:
        axis = channel_axis(x, granularity)
        view = x.view(math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1 :]))
        shape = (1, -1, 1)
    out = x if overwrite else torch.empty_like(x)
    check_peak(_fused_uniform(view, out.view(view.shape), *qparams.kernel_args(shape)), deferrable=True)
    return out


def fake_quantize_candidates(rows: torch.Tensor, scales: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``rows`` ``(groups, E)`` fake-quantized at every candidate: ``scales`` ``(c, groups)`` gives
    one scale per candidate and row (zero point 0). Entry ``[k]`` is, bit for bit,
    ``fake_quantize(rows, scales[k], 0, qmin, qmax, per row)``; shape ``(c, groups, E)``.

    The fused kernel writes the ``c`` copies in one pass over ``rows`` (no expanded input)."""
    check_tensor(rows, finite=False)
    candidates, groups = scales.shape
    flat = scales.reshape(-1)
    zero = torch.zeros(flat.shape, dtype=torch.int32, device=rows.device)
    checked = check_qparams(flat, zero, qmin, qmax)
    flat, zero = checked.scale, checked.zero_point
    if _fused_uniform.wants(rows, passes=candidates) and _grad_free(rows, flat):
        step = flat.reshape(candidates, groups, 1)
        out = torch.empty((candidates, *rows.shape), dtype=torch.float32, device=rows.device)
        one, zero_f = (torch.full((), value, dtype=torch.float32, device=rows.device) for value in (1.0, 0.0))
        peak = _fused_uniform(rows.unsqueeze(0), out, one / step, step, zero_f, constant((qmin, qmax), rows.device))
        check_peak(peak)
        return out
    check_finite(rows)
    expanded = rows.unsqueeze(0).expand(candidates, -1, -1).reshape(candidates * groups, -1)
    return torch.fake_quantize_per_channel_affine(expanded, flat, zero, 0, qmin, qmax).reshape(candidates, groups, -1)


def _fake_quantize_autograd(x, scale, zero_point, qmin, qmax, granularity, rounding) -> torch.Tensor:
    groups = num_groups(x, granularity)
    if scale.numel() != groups or zero_point.numel() != groups:
        raise QuantizationError(
            f"expected {groups} scale/zero_point entries, got {scale.numel()} and {zero_point.numel()}"
        )
    if not qmin < qmax:
        raise QuantizationError(f"empty integer grid [{qmin}, {qmax}]")
    rows = group_rows(x.float(), granularity)
    step = scale.reshape(-1, 1).float()
    zero = zero_point.reshape(-1, 1).float()
    index = rounding(rows * (1.0 / step)) + zero
    # clamp with the op's gradient mask qmin <= q <= qmax (torch.clamp passes nothing at the bounds)
    inside = (index >= qmin) & (index <= qmax)
    index = torch.where(inside, index, index.detach().clamp(qmin, qmax))
    out = ungroup_rows((index - zero) * step, x.shape, granularity)
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def num_groups(x: torch.Tensor, granularity: Granularity) -> int:
    """How many (scale, zero_point) pairs ``x`` needs under ``granularity``."""
    if granularity.kind == "tensor":
        return 1
    axis = channel_axis(x, granularity)
    if granularity.kind == "channel":
        return x.shape[axis]
    size = x.shape[axis]
    if size % granularity.group_size:
        raise QuantizationError(
            f"axis {axis} of size {size} is not divisible by group_size {granularity.group_size}"
        )
    return x.numel() // granularity.group_size


def group_rows(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """2-D view ``(groups, elements)``: one row per (scale, zero_point) of ``granularity``."""
    if granularity.kind == "tensor":
        return x.reshape(1, -1)
    axis = channel_axis(x, granularity)
    if granularity.kind == "channel":
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)
    num_groups(x, granularity)  # divisibility check
    return x.movedim(axis, -1).reshape(-1, granularity.group_size)


def ungroup_rows(rows: torch.Tensor, shape: torch.Size, granularity: Granularity) -> torch.Tensor:
    """Inverse of :func:`group_rows`."""
    if granularity.kind == "tensor":
        return rows.reshape(shape)
    axis = granularity.axis % len(shape)
    if granularity.kind == "channel":
        moved = (shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis)
        return rows.reshape(moved).movedim(0, axis)
    moved = tuple(s for i, s in enumerate(shape) if i != axis) + (shape[axis],)
    return rows.reshape(moved).movedim(-1, axis)


def channel_axis(x: torch.Tensor, granularity: Granularity) -> int:
    """The axis of ``x`` that ``granularity`` (channel or group) runs along, made non-negative;
    QuantizationError when ``x`` has no such axis."""
    if x.dim() == 0:
        raise QuantizationError(f"per-{granularity.kind} granularity needs a tensor with an axis, got a 0-D tensor")
    if not -x.dim() <= granularity.axis < x.dim():
        raise QuantizationError(f"axis {granularity.axis} is out of range for a {x.dim()}-D tensor")
    return granularity.axis % x.dim()


def check_qparams(scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                  groups: int | None = None) -> CheckedQParams:
    """QuantizationError unless ``scale`` is finite and positive, ``zero_point`` on the grid
    ``[qmin, qmax]``, the grid's ends finite in float32, and (where given) ``groups`` entries of each."""
    scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    zero_point = torch.as_tensor(zero_point).reshape(-1).to(torch.int32)
    if groups is not None and (scale.numel() != groups or zero_point.numel() != groups):
        raise QuantizationError(
            f"expected {groups} scale/zero_point entries, got {scale.numel()} and {zero_point.numel()}"
        )
    if scale.numel() != zero_point.numel():
        raise QuantizationError(f"{scale.numel()} scales but {zero_point.numel()} zero points")
    if not qmin < qmax:
        raise QuantizationError(f"empty integer grid [{qmin}, {qmax}]")
    # one device-to-host read when everything is valid (each check below costs one on a GPU)
    valid = ((torch.isfinite(scale) & (scale > 0)).all() & ((zero_point >= qmin) & (zero_point <= qmax)).all()
             & torch.isfinite(_grid_ends(scale, zero_point, qmin, qmax)).all())
    if not bool(valid):  # say which check fails
        if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
            raise QuantizationError("scale must be finite and positive")
        if bool(((zero_point < qmin) | (zero_point > qmax)).any()):
            raise QuantizationError(f"zero_point outside the grid [{qmin}, {qmax}]")
        check_grid_ends(scale, zero_point, qmin, qmax)
    return CheckedQParams(scale, zero_point, qmin, qmax)


def check_grid_ends(scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> None:
    """QuantizationError when a grid's end points ``(q − z)·Δ`` overflow float32 (data within a
    step of float32's largest magnitude), where fake quantization would return ±inf."""
    if not bool(torch.isfinite(_grid_ends(scale, zero_point, qmin, qmax)).all()):
        raise QuantizationError("the grid's end points overflow float32: the values are within one step of "
                                "float32's largest magnitude")


def _grid_ends(scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``(qmin − z)·Δ`` and ``(qmax − z)·Δ`` per group, in float32."""
    zero = zero_point.to(torch.float32)
    return torch.stack([(qmin - zero) * scale, (qmax - zero) * scale])
