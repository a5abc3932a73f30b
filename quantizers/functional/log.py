"""Log quantizer with an adaptive base (PTQ4SAM "AGQ"): pure tensor functions.

``x̂ = s·2^(−q/τ)``, ``q = clamp(round(−τ·log2(x/s)), 0, 2^b − 1)``; ``x̂ = 0`` where the unclamped
``q >= 2^b`` (the extra zero code); values above ``s`` clip to ``s``; ``x = 0`` maps to 0. The base
is ``2^(1/τ)``: τ = 1 is FQ-ViT's log2 quantizer (with a scale), τ = 2 is RepQ-ViT's log√2.
Inputs are non-negative (post-softmax attention).

Exactness: the rounding boundaries of ``q`` are ``t_k = s·2^(−(k + ½)/τ)`` (k = 0 … 2^b − 1),
evaluated in float64, and a float32 ``x`` is compared with them exactly: ``q = #{k : x < t_k}``
(capped at 2^b, the zero code). This is ``round(−τ·log2(x/s))`` without the float32 rounding of
``x/s``, ``log2`` and the product, which moves values lying next to a boundary to the other code
(e.g. 43 % of the float32 values within 6 ulps of a boundary at τ = 4, 8 bits). Levels are
``float32(s·2^(−q/τ))`` evaluated in float64.

Speed: no transcendental op runs per element. The top 16 bits of a non-negative float32
(exponent and 7 mantissa bits) select one of 2^16 buckets, each at most 0.4 % wide, so for τ <= 64
a bucket holds at most one boundary (in the normal float range): ``q`` = the bucket's code minus
one if ``x`` reaches the bucket's boundary. Subnormal buckets that hold several boundaries are
rare (only when ``t_{2^b−1} < 2^−126``) and are resolved by an exact binary search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from quantizers.errors import QuantizationError
from quantizers.functional.checks import check_tensor
from quantizers.functional.chunked import fake_quantize_chunks
from quantizers.spec import check_bits

#: Largest τ: keeps at most one rounding boundary per bucket of the lookup table.
MAX_TAU = 64.0

_BUCKET_SHIFT = 15  # bits below the bucket index in a float32's bit pattern
_NUM_BUCKETS = 1 << 16
_NO_BOUNDARY = torch.iinfo(torch.int32).max

#: Elements of one attention-row block while evaluating the AGQ objective.
_BLOCK_NUMEL = 1 << 20


@dataclass(frozen=True, eq=False)
class LogGrid:
    """Everything :func:`log_fake_quantize` needs for one ``(scale, tau, bits)``.

    Build with :meth:`build`. Attributes:
      scale, tau, bits: the quantizer's parameters.
      levels: ``float32 [2^b + 1]``, ``levels[q] = s·2^(−q/τ)`` and ``levels[2^b] = 0``.
      boundaries: ``float32 [2^b]`` ascending; the smallest float32 ``>= t_k`` for each k, so that
        ``x < t_k`` exactly when ``x < boundary``.
      bucket_code: ``int32 [2^16]``, the code of the first float32 of each bucket.
      bucket_boundary: ``int32 [2^16]``, the bit pattern of the boundary inside each bucket (at most
        one where it matters), or int32 max when there is none.
      dense_below: inputs below this value fall in buckets with several boundaries and are
        resolved by binary search (0.0 when there are none).
    """

    scale: float
    tau: float
    bits: int
    levels: torch.Tensor
    boundaries: torch.Tensor
    bucket_code: torch.Tensor
    bucket_boundary: torch.Tensor
    dense_below: float

    @classmethod
    def build(cls, scale: float, tau: float, bits: int) -> "LogGrid":
        """Tables for ``x̂ = s·2^(−q/τ)`` with ``bits``-bit codes.

        Arguments:
          scale: s, the largest level (finite, > 0).
          tau: τ, levels per octave (finite, in (0, 64]).
          bits: code width, 2 to 16 (2^b levels plus the zero code).
        """
        check_bits(bits)
        scale, tau = float(scale), float(tau)
        if not math.isfinite(scale) or not 0.0 < scale <= float(torch.finfo(torch.float32).max):
            raise QuantizationError(f"log quantizer scale must be finite, positive float32, got {scale}")
        if not math.isfinite(tau) or not 0.0 < tau <= MAX_TAU:
            raise QuantizationError(f"log quantizer tau must be in (0, {MAX_TAU}], got {tau}")
        codes = np.arange(2**bits, dtype=np.float64)
        levels = np.append(scale * np.exp2(-codes / tau), 0.0).astype(np.float32)
        boundaries = _float32_ceil(scale * np.exp2(-(codes + 0.5) / tau))[::-1].copy()
        bucket_code, bucket_boundary, dense_below = _bucket_tables(boundaries)
        return cls(
            scale=scale,
            tau=tau,
            bits=bits,
            levels=torch.from_numpy(levels),
            boundaries=torch.from_numpy(boundaries),
            bucket_code=bucket_code,
            bucket_boundary=bucket_boundary,
            dense_below=dense_below,
        )


def log_fake_quantize(x: torch.Tensor, grid: LogGrid) -> torch.Tensor:
    """Fake-quantize non-negative ``x`` on ``grid`` (see the module docstring).

    Computed in float32 chunk by chunk (``x``'s dtype is kept); gradients pass straight through.
    Raises :class:`QuantizationError` for empty, NaN/Inf or negative input.
    """
    check_tensor(x)
    tables = [t.to(x.device) for t in (grid.levels, grid.boundaries, grid.bucket_code, grid.bucket_boundary)]
    levels, boundaries, bucket_code, bucket_boundary = tables

    def kernel(chunk: torch.Tensor, out: torch.Tensor) -> None:
        lowest = float(chunk.amin())
        if lowest < 0.0:
            raise QuantizationError(f"log quantizer input must be non-negative, got a value {lowest}")
        bit_pattern = torch.abs(chunk).view(torch.int32)  # abs turns −0.0 into +0.0
        bucket = torch.bitwise_right_shift(bit_pattern, _BUCKET_SHIFT)
        code = torch.index_select(bucket_code, 0, bucket)
        reached = torch.ge(bit_pattern, torch.index_select(bucket_boundary, 0, bucket))
        code.sub_(reached.view(torch.uint8))
        torch.index_select(levels, 0, code, out=out)
        if lowest < grid.dense_below:
            small = chunk < grid.dense_below
            small_code = boundaries.numel() - torch.searchsorted(boundaries, chunk[small], right=True)
            out[small] = levels[small_code]

    return fake_quantize_chunks(x, kernel)


def attention_output_error(
    attn: torch.Tensor, v: torch.Tensor | None, grid: LogGrid, p: float = 2.4
) -> float:
    """Mean of ``|Â·V − A·V|^p`` over the attention output, ``Â`` = ``attn`` quantized on ``grid``
    and ``V`` in float. Computed as ``(Â − A)·V`` on blocks of rows (all heads at once, few large
    matmuls), so memory stays bounded.

    Arguments:
      attn: attention probabilities ``(..., N, M)``, non-negative.
      v: values ``(..., M, d)`` with the same leading dims; ``None`` measures ``mean |Â − A|^p``
        on the attention map itself.
      grid: the log grid.
      p: error exponent (PTQ4SAM uses 2.4).
    """
    if not math.isfinite(p) or p <= 0:
        raise QuantizationError(f"error exponent p must be finite and positive, got {p}")
    maps, values = _as_heads(attn, v)
    heads, n, m = maps.shape
    rows = max(1, _BLOCK_NUMEL // (heads * m))
    total = 0.0
    for start in range(0, n, rows):
        block = maps[:, start : start + rows]
        diff = log_fake_quantize(block, grid).sub_(block)
        err = diff if values is None else torch.bmm(diff, values)
        total += float(err.double().abs_().pow_(p).sum())  # float64: |err|^p overflows float32 for large values
    out_cols = m if values is None else values.shape[-1]
    return total / (heads * n * out_cols)


def agq_search(
    attn: torch.Tensor, v: torch.Tensor | None, bits: int, tau: float, p: float = 2.4
) -> tuple[float, float]:
    """Best scale for one τ on one batch: ``(s, error)``.

    ``s`` minimises :func:`attention_output_error` by bounded 1-D minimisation
    (``scipy.optimize.minimize_scalar``, method ``"bounded"``) over
    ``[min(0.1, 0.01·max(attn)), max(attn)]``; ``error`` is the objective at ``s``.
    """
    check_bits(bits)
    _as_heads(attn, v)
    top = float(attn.max())
    if top <= 0.0:
        raise QuantizationError("attention map is all zero: the log quantizer scale is undefined")
    result = minimize_scalar(
        lambda s: attention_output_error(attn, v, LogGrid.build(s, tau, bits), p),
        bounds=(min(0.1, 0.01 * top), top),
        method="bounded",
    )
    return float(result.x), float(result.fun)


def _float32_ceil(values: np.ndarray) -> np.ndarray:
    """The smallest float32 ``>=`` each float64 value."""
    rounded = values.astype(np.float32)
    below = rounded.astype(np.float64) < values
    return np.where(below, np.nextafter(rounded, np.float32(np.inf)), rounded)


def _bucket_tables(boundaries: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-bucket code, in-bucket boundary and the dense-bucket limit (see :class:`LogGrid`).

    Built with numpy: single-threaded, so a busy machine does not stall it in parallel regions.
    """
    patterns = boundaries.view(np.int32).astype(np.int64)
    starts = np.arange(_NUM_BUCKETS, dtype=np.int64) << _BUCKET_SHIFT
    above_start = np.searchsorted(patterns, starts, side="right")  # boundaries <= start
    in_bucket = np.searchsorted(patterns, starts + (1 << _BUCKET_SHIFT), side="left") - above_start
    code = (patterns.size - above_start).astype(np.int32)
    first = patterns[np.minimum(above_start, patterns.size - 1)]
    boundary = np.where(in_bucket > 0, first, _NO_BOUNDARY).astype(np.int32)
    dense = np.flatnonzero(in_bucket > 1)
    limit = 0.0
    if dense.size:
        limit = float(np.array([(dense[-1] + 1) << _BUCKET_SHIFT], dtype=np.int32).view(np.float32)[0])
    return torch.from_numpy(code), torch.from_numpy(boundary), limit


def _as_heads(attn: torch.Tensor, v: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate and flatten to ``(heads, N, M)`` and ``(heads, M, d)`` float32."""
    check_tensor(attn, "attention map")
    if attn.dim() < 2:
        raise QuantizationError(f"attention map must have at least 2 dims (..., N, M), got {tuple(attn.shape)}")
    heads = attn.detach().to(torch.float32).reshape(-1, *attn.shape[-2:])
    if v is None:
        return heads, None
    check_tensor(v, "attention values v")
    if v.dim() != attn.dim() or v.shape[:-2] != attn.shape[:-2] or v.shape[-2] != attn.shape[-1]:
        raise QuantizationError(
            f"v of shape {tuple(v.shape)} does not match attention map {tuple(attn.shape)}: "
            "expected (..., M, d) with the same leading dims and M = attn.shape[-1]"
        )
    return heads, v.detach().to(torch.float32).reshape(-1, *v.shape[-2:])
