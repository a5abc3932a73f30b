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

Speed: no transcendental op runs per element. The top bits of a non-negative float32 (its exponent
and the top ``m`` mantissa bits) select a bucket at most ``2^−m`` wide (relative), ``m`` the fewest
bits (1 to 7) that keep at most one boundary per bucket in the normal float range (``m`` = 3 for
τ = 4: 2,048 buckets, tables that stay in L1), so ``q`` = the bucket's code minus one if ``x``
reaches the bucket's boundary. Subnormal buckets that hold several boundaries (only when
``t_{2^b−1} < 2^−126``) are resolved by an exact binary search. Large float32 tensors take a fused
kernel (:mod:`quantizers.functional.fused`), the others a chunked one; all give the same values.
For τ in {1, 2, 4, 8} the fused kernel needs no table at all: the boundaries repeat from binade to
binade, so integer arithmetic on the exponent and τ comparisons of the mantissa give the code
(:class:`Binades`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from quantizers.errors import QuantizationError
from quantizers.functional.checks import check_peak, check_tensor
from quantizers.functional.chunked import fake_quantize_chunks, straight_through
from quantizers.functional.fused import FusedKernel, constant
from quantizers.spec import check_bits

#: Largest τ: keeps at most one rounding boundary per bucket of the lookup table.
MAX_TAU = 64.0

_MANTISSA_BITS = range(1, 8)  # bucket widths tried, coarsest first (7 bits suit every τ <= 64)
_NO_BOUNDARY = torch.iinfo(torch.int32).max

#: Elements of one attention-row block while evaluating the AGQ objective.
_BLOCK_NUMEL = 1 << 20

#: Where a sampled search stops, relative to ``max(attn)``: its estimate of the objective moves the
#: minimum by more than this (the exhaustive search keeps scipy's default, 1e-5 absolute).
SAMPLED_XATOL = 1e-3

#: Fewest query rows per map a sampled search keeps (the strongest row and three drawn ones).
MIN_SAMPLE_ROWS = 4


@dataclass(frozen=True, eq=False)
class LogGrid:
    """Everything :func:`log_fake_quantize` needs for one ``(scale, tau, bits)``.

    Build with :meth:`build`. Attributes:
      scale, tau, bits: the quantizer's parameters.
      levels: ``float32 [2^b + 1]``, ``levels[q] = s·2^(−q/τ)`` and ``levels[2^b] = 0``.
      boundaries: ``float32 [2^b]`` ascending; the smallest float32 ``>= t_k`` for each k, so that
        ``x < t_k`` exactly when ``x < boundary``.
      shift: a float32's bucket is its bit pattern shifted right by ``shift`` (23 − m).
      bucket_code: ``int32 [2^(31 − shift)]``, the code of the first float32 of each bucket.
      bucket_boundary: ``int32 [2^(31 − shift)]``, the bit pattern of the boundary inside each bucket
        (at most one where it matters), or int32 max when there is none.
      dense_below: inputs below this value fall in buckets with several boundaries and are
        resolved by binary search (0.0 when there are none).
      binades: for τ in {1, 2, 4, 8}, the boundaries of one binade, which every normal binade
        repeats (see :class:`Binades`); None otherwise.
    """

    scale: float
    tau: float
    bits: int
    levels: torch.Tensor
    boundaries: torch.Tensor
    shift: int
    bucket_code: torch.Tensor
    bucket_boundary: torch.Tensor
    dense_below: float
    binades: "Binades | None" = None
    _on_device: dict = field(default_factory=dict, repr=False)

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
        shift, bucket_code, bucket_boundary, dense_below = _bucket_tables(boundaries)
        binades = Binades.build(boundaries, levels, tau)
        return cls(
            scale=scale,
            tau=tau,
            bits=bits,
            levels=torch.from_numpy(levels),
            boundaries=torch.from_numpy(boundaries),
            shift=shift,
            bucket_code=bucket_code,
            bucket_boundary=bucket_boundary,
            dense_below=dense_below,
            binades=binades,
        )

    def binade_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(thresholds, level_patterns, [start, τ, 2^b, log2 τ])`` of :attr:`binades` on ``device``."""
        key = ("binades", str(device))
        if key not in self._on_device:
            b = self.binades
            ints = torch.tensor([b.start, 1 << b.tau_shift, 2**self.bits, b.tau_shift], dtype=torch.int32)
            self._on_device[key] = tuple(t.to(device) for t in (b.thresholds, b.level_patterns, ints))
        return self._on_device[key]

    def tables(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """``(levels, boundaries, bucket_code, bucket_boundary)`` on ``device`` (copied once)."""
        key = str(device)
        if key not in self._on_device:
            tables = (self.levels, self.boundaries, self.bucket_code, self.bucket_boundary)
            self._on_device[key] = tuple(t.to(device) for t in tables)
        return self._on_device[key]


@dataclass(frozen=True)
class Binades:
    """The rounding boundaries of a log grid with τ = 2^j ≤ 8, by binade.

    ``t_{k+τ} = t_k / 2`` exactly in float32 (in the normal range), so every binade holds the
    same τ boundary mantissas. A normal ``x`` with exponent field ``e`` and mantissa ``m`` lies
    below the boundaries ``k < start − τ·e + #{j : m < thresholds[j]}``, so its code is that count
    clamped to ``[0, 2^b]``, in integer arithmetic; its level ``s·2^(−q/τ)`` is ``level_patterns[q
    mod τ]`` with ``q div τ`` taken off the exponent field while the result stays normal. Nonzero
    inputs below ``exact_from`` (subnormal, or with a level outside the normal range) are resolved
    exactly afterwards.
    """

    start: int
    thresholds: torch.Tensor  # int32 [8]: the boundary mantissas of a binade, then zeros (never above m)
    level_patterns: torch.Tensor  # int32 [8]: bit patterns of s·2^(−r/τ), r < τ
    tau_shift: int
    exact_from: float

    @classmethod
    def build(cls, boundaries: np.ndarray, levels: np.ndarray, tau: float) -> "Binades | None":
        """From a grid's ascending float32 ``boundaries`` and ``levels``; None when τ is not 1, 2, 4
        or 8 or no binade holds τ normal boundaries."""
        if tau not in (1.0, 2.0, 4.0, 8.0):
            return None
        period, codes = int(tau), boundaries.size
        patterns = boundaries[::-1].view(np.int32).astype(np.int64)  # t_0 > t_1 > ...
        exponents = patterns >> 23
        later = np.flatnonzero(exponents < exponents[0])
        if not later.size or later[0] + period > codes or exponents[later[0]] < 1:
            return None
        first, exponent = int(later[0]), int(exponents[later[0]])
        if np.any(exponents[first : first + period] != exponent):
            return None
        thresholds, level_patterns = np.zeros(8, np.int32), np.zeros(8, np.int32)
        thresholds[:period] = patterns[first : first + period] & 0x7FFFFF
        level_patterns[:period] = levels[:period].view(np.int32)
        q = np.arange(codes)
        computed_exponent = (level_patterns[q % period].astype(np.int64) >> 23) - q // period
        outside = np.flatnonzero(computed_exponent < 1)
        if outside.size and outside[0] == 0:
            return None
        exact_from = max(_SMALLEST_NORMAL, float(boundaries[::-1][outside[0] - 1]) if outside.size else 0.0)
        return cls(first + period * exponent, torch.from_numpy(thresholds), torch.from_numpy(level_patterns),
                   period.bit_length() - 1, exact_from)


def log_fake_quantize(x: torch.Tensor, grid: LogGrid, overwrite: bool = False) -> torch.Tensor:
    """Fake-quantize non-negative ``x`` on ``grid`` (see the module docstring).

    Computed in float32 (``x``'s dtype is kept); gradients pass straight through. ``overwrite=True``
    says the caller hands ``x`` over: the result may be written into it (use the result).
    Raises :class:`QuantizationError` for empty, NaN/Inf or negative input.
    """
    binades = grid.binades is not None and _fused_log_binades.wants(x)
    if binades or _fused_log.wants(x):
        check_tensor(x, finite=False)
        out = x.detach() if overwrite and not x.requires_grad else torch.empty_like(x)
        (_log_binades_fused if binades else _log_fused)(x.detach(), grid, out)
        return straight_through(x, out)
    check_tensor(x)
    levels, boundaries, bucket_code, bucket_boundary = grid.tables(x.device)

    def kernel(chunk: torch.Tensor, out: torch.Tensor) -> None:
        lowest = float(chunk.amin())
        _check_non_negative(lowest)
        bit_pattern = torch.abs(chunk).view(torch.int32)  # abs turns −0.0 into +0.0
        bucket = torch.bitwise_right_shift(bit_pattern, grid.shift)
        code = torch.index_select(bucket_code, 0, bucket)
        reached = torch.ge(bit_pattern, torch.index_select(bucket_boundary, 0, bucket))
        code.sub_(reached.view(torch.uint8))
        torch.index_select(levels, 0, code, out=out)
        if lowest < grid.dense_below:
            small = chunk < grid.dense_below
            out[small] = _dense_levels(chunk[small], grid, levels, boundaries)

    return fake_quantize_chunks(x, kernel)


def _log(x: torch.Tensor, out: torch.Tensor, levels: torch.Tensor, bucket_code: torch.Tensor,
         bucket_boundary: torch.Tensor, shift: torch.Tensor, dense_below: torch.Tensor) -> torch.Tensor:
    """Fused kernel: ``out`` = the level of each ``x`` by bucket lookup, ``−x`` where
    ``x < dense_below`` (resolved afterwards); returns ``[max |x|, min x]``."""
    stats = torch.stack([torch.amax(torch.abs(x)), torch.amin(x)])  # before ``out`` (maybe ``x``) is written
    bit_pattern = torch.abs(x).view(torch.int32)
    bucket = torch.bitwise_right_shift(bit_pattern, shift)
    code = bucket_code[bucket] - (bit_pattern >= bucket_boundary[bucket]).to(torch.int32)
    out.copy_(torch.where(x < dense_below, -x, levels[code]))
    return stats


_fused_log = FusedKernel(_log)


def _log_fused(x: torch.Tensor, grid: LogGrid, out: torch.Tensor) -> None:
    levels, boundaries, bucket_code, bucket_boundary = grid.tables(x.device)
    shift = torch.full((), grid.shift, dtype=torch.int32, device=x.device)
    stats = _fused_log(x.view(-1), out.view(-1), levels, bucket_code, bucket_boundary, shift,
                       constant((grid.dense_below,), x.device)[0])
    peak, lowest = stats.tolist()
    check_peak(peak)
    _check_non_negative(lowest)
    if lowest < grid.dense_below:  # the kernel left −x there: sign bit set, unlike every level
        small = torch.signbit(out)
        out[small] = _dense_levels(-out[small], grid, levels, boundaries)


def _log_binades(x: torch.Tensor, out: torch.Tensor, thresholds: torch.Tensor, level_patterns: torch.Tensor,
                 ints: torch.Tensor) -> torch.Tensor:
    """Fused kernel on bit patterns (int32 views of float32 ``x`` and ``out``), see :class:`Binades`
    (``thresholds`` and ``level_patterns``: the τ entries of one period); ``ints = [start, τ, 2^b,
    log2 τ]``. Writes the level's pattern, 0 for the zero code, ``x`` with its sign bit set where
    the exact fix-up must decide. Returns ``[max pattern of |x|, min x as int32 (0 for ±0), min
    pattern of the nonzero |x|]``."""
    pattern = torch.bitwise_and(x, 0x7FFFFFFF)
    stats = torch.stack([torch.amax(pattern), torch.amin(torch.where(pattern == 0, 0, x)),
                         torch.amin(torch.where(pattern == 0, 0x7FFFFFFF, pattern))])
    exponent = torch.bitwise_right_shift(pattern, 23)
    mantissa = torch.bitwise_and(pattern, 0x7FFFFF)
    code = ints[0] - ints[1] * exponent
    for j in range(thresholds.shape[0]):
        code = code + (mantissa < thresholds[j]).to(torch.int32)
    code = torch.minimum(torch.clamp(code, min=0), ints[2])
    octaves = torch.bitwise_right_shift(code, ints[3])
    step = torch.bitwise_and(code, ints[1] - 1)
    base = level_patterns[-1]
    for r in range(level_patterns.shape[0] - 2, -1, -1):
        base = torch.where(step == r, level_patterns[r], base)
    marked = torch.bitwise_or(pattern, -(2**31))
    normal = torch.bitwise_right_shift(base, 23) > octaves  # the level's exponent field stays >= 1
    level = torch.where(code == ints[2], 0, torch.where(normal, base - torch.bitwise_left_shift(octaves, 23), marked))
    out.copy_(torch.where(exponent == 0, torch.where(pattern == 0, 0, marked), level))  # subnormal x: marked
    return stats


_fused_log_binades = FusedKernel(_log_binades)


def _log_binades_fused(x: torch.Tensor, grid: LogGrid, out: torch.Tensor) -> None:
    binades = grid.binades
    thresholds, level_patterns, ints = grid.binade_tables(x.device)
    period = 1 << binades.tau_shift  # one graph per period: no comparisons with the padding
    stats = _fused_log_binades(x.view(-1).view(torch.int32), out.view(-1).view(torch.int32), thresholds[:period],
                               level_patterns[:period], ints)
    peak, lowest, smallest = (float(v) for v in np.array(stats.tolist(), dtype=np.int32).view(np.float32))
    check_peak(peak)
    _check_non_negative(lowest)
    if smallest < binades.exact_from:  # marked elements: sign bit set, unlike every level
        small = torch.signbit(out)
        levels, boundaries = grid.tables(x.device)[:2]
        out[small] = _dense_levels(-out[small], grid, levels, boundaries)


def _dense_levels(values: torch.Tensor, grid: LogGrid, levels: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """Exact levels of inputs in buckets with several boundaries, by binary search."""
    return levels[boundaries.numel() - torch.searchsorted(boundaries, values, right=True)]


def _check_non_negative(lowest: float) -> None:
    if lowest < 0.0:
        raise QuantizationError(f"log quantizer input must be non-negative, got a value {lowest}")


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
    _check_p(p)
    maps, values = _as_heads(attn, v)
    return _output_error(maps, values, None, grid, p)


def agq_search(
    attn: torch.Tensor, v: torch.Tensor | None, bits: int, tau: float, p: float = 2.4,
    max_rows: int | None = None,
) -> tuple[float, float]:
    """Best scale for one τ on one batch: ``(s, error)``.

    ``s`` minimises :func:`attention_output_error` by bounded 1-D minimisation
    (``scipy.optimize.minimize_scalar``, method ``"bounded"``) over
    ``[min(0.1, 0.01·max(attn)), max(attn)]``; ``error`` is the objective at ``s``.

    ``max_rows`` (per head; None: all) evaluates the objective on a sample of the query rows
    stratified by row maximum (see :func:`row_sample`); every τ is scored on the same rows, each
    evaluation costs ``max_rows/N`` of the full one, and the search stops at
    :data:`SAMPLED_XATOL` of ``max(attn)``. :func:`sample_rows` sizes ``max_rows`` to a budget.
    """
    return agq_searches(attn, v, bits, (tau,), p, max_rows)[0]


def agq_searches(
    attn: torch.Tensor, v: torch.Tensor | None, bits: int, taus: Sequence[float], p: float = 2.4,
    max_rows: int | None = None,
) -> list[tuple[float, float]]:
    """:func:`agq_search` for each of ``taus`` on one batch (validated and sampled once)."""
    check_bits(bits)
    _check_p(p)
    maps, values = _as_heads(attn, v)
    top = float(maps.max())
    if top <= 0.0:
        raise QuantizationError("attention map is all zero: the log quantizer scale is undefined")
    sample, weights = row_sample(maps, max_rows)
    found = []
    for tau in taus:
        result = minimize_scalar(
            lambda s: _output_error(sample, values, weights, LogGrid.build(s, tau, bits), p),
            bounds=(min(0.1, 0.01 * top), top),
            method="bounded",
            options=None if weights is None else {"xatol": SAMPLED_XATOL * top},
        )
        found.append((float(result.x), float(result.fun)))
    return found


def sample_rows(shape: Sequence[int], max_numel: int | None) -> int | None:
    """Query rows per map that keep a search of maps of ``shape`` ``(..., N, M)`` within about
    ``max_numel`` elements per objective evaluation (at least :data:`MIN_SAMPLE_ROWS`); None when
    every row fits (or ``max_numel`` is None)."""
    if max_numel is None or math.prod(shape) <= max_numel:
        return None
    maps = math.prod(shape[:-2])
    return max(MIN_SAMPLE_ROWS, max_numel // (maps * shape[-1]))


def row_sample(maps: torch.Tensor, max_rows: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``max_rows`` query rows of each head of ``maps`` ``(heads, N, M)`` and the number of rows
    each stands for (``None``: all rows, unweighted).

    Rows are ranked by their maximum (a scale below a row's maximum clips it, so the peaked rows
    carry most of the objective's dependence on s). The ``max_rows // 4`` highest are kept, each
    for itself; the others are sampled systematically along the ranking (every k-th row from the
    middle of the first step), each standing for the rows of its step: a stratified sample by
    row maximum, deterministic, the same for every τ.
    """
    heads, n, m = maps.shape
    if max_rows is None or max_rows >= n:
        return maps, None
    strong = max_rows // 4
    drawn = max_rows - strong
    order = maps.amax(dim=2).argsort(dim=1, descending=True, stable=True)
    step = (n - strong) / drawn
    picks = strong + (step * (torch.arange(drawn, dtype=torch.float64) + 0.5)).long().clamp_(max=n - 1)
    chosen = torch.cat([order[:, :strong], order[:, picks.to(maps.device)]], dim=1)
    sample = maps.gather(1, chosen.unsqueeze(-1).expand(-1, -1, m))
    weights = torch.full((max_rows,), step, dtype=torch.float64, device=maps.device)
    weights[:strong] = 1.0
    return sample, weights


def _output_error(maps: torch.Tensor, values: torch.Tensor | None, weights: torch.Tensor | None, grid: LogGrid,
                  p: float) -> float:
    """:func:`attention_output_error` of validated ``(heads, N, M)`` maps; with ``weights`` (one
    per row, summing to the rows they stand for), the weighted mean."""
    heads, n, m = maps.shape
    total = 0.0
    for group, rows in _blocks(heads, n, m):
        block = maps[group, rows]
        diff = log_fake_quantize(block, grid).sub_(block)
        # float64: |err|^p overflows float32 for large values
        err = (diff if values is None else torch.bmm(diff, values[group])).double().abs_().pow_(p)
        if weights is None:
            total += float(err.sum())
        else:
            total += float(err.sum(dim=2).mul_(weights[rows]).sum())
    out_cols = m if values is None else values.shape[-1]
    represented = n if weights is None else float(weights.sum())
    return total / (heads * represented * out_cols)


def _blocks(heads: int, n: int, m: int) -> Iterator[tuple[slice, slice]]:
    """``(heads, rows)`` slices of about :data:`_BLOCK_NUMEL` elements that are contiguous in a
    contiguous ``(heads, n, m)`` tensor (so they take the fused kernel): groups of whole heads
    when a head is smaller than a block, else blocks of rows within one head."""
    per_head = n * m
    if per_head <= _BLOCK_NUMEL:
        group = _BLOCK_NUMEL // per_head
        for start in range(0, heads, group):
            yield slice(start, start + group), slice(None)
        return
    rows = max(1, _BLOCK_NUMEL // m)
    for head in range(heads):
        for start in range(0, n, rows):
            yield slice(head, head + 1), slice(start, start + rows)


def _check_p(p: float) -> None:
    if not math.isfinite(p) or p <= 0:
        raise QuantizationError(f"error exponent p must be finite and positive, got {p}")


def _float32_ceil(values: np.ndarray) -> np.ndarray:
    """The smallest float32 ``>=`` each float64 value."""
    rounded = values.astype(np.float32)
    below = rounded.astype(np.float64) < values
    return np.where(below, np.nextafter(rounded, np.float32(np.inf)), rounded)


def _bucket_tables(boundaries: np.ndarray) -> tuple[int, torch.Tensor, torch.Tensor, float]:
    """Shift, per-bucket code and in-bucket boundary, and the dense-bucket limit (see
    :class:`LogGrid`), for the coarsest buckets whose dense limit is that of the finest.

    Built with numpy: single-threaded, so a busy machine does not stall it in parallel regions.
    """
    finest = _tables_for(boundaries, 23 - _MANTISSA_BITS[-1])
    for mantissa_bits in _MANTISSA_BITS:
        tables = finest if mantissa_bits == _MANTISSA_BITS[-1] else _tables_for(boundaries, 23 - mantissa_bits)
        if tables[3] <= max(finest[3], _SMALLEST_NORMAL):
            return tables
    return finest


_SMALLEST_NORMAL = float(torch.finfo(torch.float32).tiny)


def _tables_for(boundaries: np.ndarray, shift: int) -> tuple[int, torch.Tensor, torch.Tensor, float]:
    patterns = boundaries.view(np.int32).astype(np.int64)
    starts = np.arange(1 << (31 - shift), dtype=np.int64) << shift
    above_start = np.searchsorted(patterns, starts, side="right")  # boundaries <= start
    in_bucket = np.searchsorted(patterns, starts + (1 << shift), side="left") - above_start
    code = (patterns.size - above_start).astype(np.int32)
    first = patterns[np.minimum(above_start, patterns.size - 1)]
    boundary = np.where(in_bucket > 0, first, _NO_BOUNDARY).astype(np.int32)
    dense = np.flatnonzero(in_bucket > 1)
    limit = 0.0
    if dense.size:
        limit = float(np.array([min((dense[-1] + 1) << shift, 0x7F800000)], dtype=np.int32).view(np.float32)[0])
    return shift, torch.from_numpy(code), torch.from_numpy(boundary), limit


def _as_heads(attn: torch.Tensor, v: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate and flatten to ``(heads, N, M)`` and ``(heads, M, d)`` float32."""
    check_tensor(attn, "attention map")
    if attn.dim() < 2:
        raise QuantizationError(f"attention map must have at least 2 dims (..., N, M), got {tuple(attn.shape)}")
    heads = attn.detach().to(torch.float32).reshape(-1, *attn.shape[-2:]).contiguous()
    if v is None:
        return heads, None
    check_tensor(v, "attention values v")
    if v.dim() != attn.dim() or v.shape[:-2] != attn.shape[:-2] or v.shape[-2] != attn.shape[-1]:
        raise QuantizationError(
            f"v of shape {tuple(v.shape)} does not match attention map {tuple(attn.shape)}: "
            "expected (..., M, d) with the same leading dims and M = attn.shape[-1]"
        )
    return heads, v.detach().to(torch.float32).reshape(-1, *v.shape[-2:])
