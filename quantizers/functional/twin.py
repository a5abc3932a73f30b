"""Twin-uniform quantization (PTQ4ViT): two uniform ranges, one flag bit. Pure tensor functions.

A b-bit code is a flag bit (the top bit) and a (b−1)-bit index ``i`` in ``[0, 2^(b−1) − 1]``.
The ranges are disjoint (the paper's form): ``x < split`` uses the low range,
``x̂ = clamp(round(x/Δ_low), 0, 2^(b−1) − 1)·Δ_low`` (flag 0); ``x >= split`` uses the high range
with ``Δ_high`` (flag 1). Rounding is half to even and ``x/Δ`` is computed as ``x·(1/Δ)`` in
float32, exactly like ``torch.fake_quantize_per_tensor_affine``, so each range matches that op.

Post-softmax (:meth:`TwinGrid.softmax`): ``Δ_high = 1/2^(b−1)`` fixed, ``Δ_low = Δ_high/2^m``,
``split = 2^(b−1)·Δ_low = 2^−m``. PTQ4ViT's reference code lets the two clamps overlap, so values
above the split get the split added (0.3 → 0.362 at m = 4, 8 bits); that bug is not reproduced.

Post-GELU (:meth:`TwinGrid.gelu`): ``split = 0``; negative inputs use a mirrored range with
``Δ_low = −|GELU_MIN|/(2^(b−1) − 1)`` (a negative step: index ``clamp(round(x/Δ_low))`` counts down
from 0, its last level is GELU's minimum), non-negative inputs use ``Δ_high = Δ+``, which is searched.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from quantizers.errors import QuantizationError
from quantizers.functional.checks import check_peak, check_tensor
from quantizers.functional.chunked import ROUND_MAGIC, fake_quantize_chunks, iter_chunks, map_chunks, straight_through
from quantizers.functional.fused import FusedKernel, constant
from quantizers.spec import check_bits

#: GELU's minimum value: min of x·Φ(x), reached at x = −0.7517915246935641 (root of the
#: derivative Φ(x) + x·φ(x), scipy.optimize.brentq, xtol 1e-15). PTQ4ViT uses 0.16997124254703522.
GELU_MIN = -0.16997120747990366

#: ``objective(x_hat, x) -> error`` (smaller is better), e.g. a Hessian-weighted distance.
Objective = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | float"]

_MAX_EXPONENT = 126  # Δ_low = 2^−(m + b − 1) stays a normal float32
_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass(frozen=True)
class TwinGrid:
    """Two uniform (b−1)-bit ranges split at ``split`` (see the module docstring).

    Arguments:
      bits: code width (flag bit included), 2 to 16.
      split: inputs ``< split`` use the low range, the others the high range.
      scale_low: Δ_low; negative mirrors the low range onto the negative axis (post-GELU).
      scale_high: Δ_high, positive.

    The scales are stored rounded to float32, the precision they are applied in.
    """

    bits: int
    split: float
    scale_low: float
    scale_high: float

    def __post_init__(self) -> None:
        check_bits(self.bits)
        for name in ("split", "scale_low", "scale_high"):
            raw = getattr(self, name)
            value = float(np.float32(raw)) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else math.nan
            if not math.isfinite(value):
                raise QuantizationError(f"twin grid {name} must be a finite float32, got {getattr(self, name)}")
            object.__setattr__(self, name, value)
        if self.scale_high <= 0.0 or self.scale_low == 0.0:
            raise QuantizationError(
                f"twin grid scales must be non-zero (scale_high positive), got {self.scale_low}, {self.scale_high}"
            )

    @property
    def qmax(self) -> int:
        """Largest index of either range, ``2^(b−1) − 1``."""
        return 2 ** (self.bits - 1) - 1

    @classmethod
    def softmax(cls, bits: int, shift: int) -> "TwinGrid":
        """Post-softmax grid: ``Δ_high = 1/2^(b−1)``, ``Δ_low = Δ_high/2^shift``, split ``2^−shift``."""
        check_bits(bits)
        largest = _MAX_EXPONENT - bits + 1
        if isinstance(shift, bool) or not isinstance(shift, int) or not 0 <= shift <= largest:
            raise QuantizationError(f"twin softmax shift must be an integer in [0, {largest}], got {shift!r}")
        scale_high = 2.0 ** -(bits - 1)
        return cls(bits=bits, split=2.0**-shift, scale_low=scale_high * 2.0**-shift, scale_high=scale_high)

    @classmethod
    def gelu(cls, bits: int, scale_pos: float, gelu_min: float = GELU_MIN) -> "TwinGrid":
        """Post-GELU grid: negative range ``Δ− = |gelu_min|/(2^(b−1) − 1)``, positive range ``Δ+ = scale_pos``.

        The negative range ends at ``gelu_min``, as in PTQ4ViT's reference code
        (``quant_layers/linear.py``, ``PostGeluPTQSLBatchingQuantLinear``: ``a_neg_interval =
        0.16997124254703522/a_qmax`` with ``a_qmax = 2^(b−1)`` and ``clamp(−a_qmax, 0)``, so its last
        negative level is −0.16997). Here the negative index has b−1 bits (``0 … 2^(b−1) − 1``, the
        paper's disjoint form with a flag bit), so the same end point needs ``Δ− = |gelu_min|/(2^(b−1) − 1)``.
        """
        check_bits(bits)
        if isinstance(gelu_min, bool) or not isinstance(gelu_min, (int, float)) or not -math.inf < gelu_min < 0.0:
            raise QuantizationError(f"gelu_min must be a finite negative number, got {gelu_min}")
        return cls(bits=bits, split=0.0, scale_low=gelu_min / (2 ** (bits - 1) - 1), scale_high=float(scale_pos))


def twin_fake_quantize(x: torch.Tensor, grid: TwinGrid, overwrite: bool = False) -> torch.Tensor:
    """Fake-quantize ``x`` on ``grid``; computed in float32 (``x``'s dtype is kept), gradients pass
    straight through. Large float32 tensors take a fused kernel, the others a chunked one (same
    values). ``overwrite=True`` says the caller hands ``x`` over: the result may be written into it."""
    scales, inverses = _scale_tables(grid, x.device)
    if _fused_twin.wants(x):
        check_tensor(x, finite=False)
        out = x.detach() if overwrite and not x.requires_grad else torch.empty_like(x)
        peak = _fused_twin(x.detach().view(-1), out.view(-1), constant((grid.split, 0.0, grid.qmax), x.device),
                           scales, inverses)
        check_peak(peak, deferrable=True)
        return straight_through(x, out)
    check_tensor(x)

    def kernel(chunk: torch.Tensor, out: torch.Tensor) -> None:
        index, high = _index(chunk, grid, inverses)
        torch.mul(index, torch.where(high, scales[1], scales[0]), out=out)

    return fake_quantize_chunks(x, kernel)


def _twin(x: torch.Tensor, out: torch.Tensor, split_range: torch.Tensor, scales: torch.Tensor,
          inverses: torch.Tensor) -> torch.Tensor:
    """Fused kernel: ``out`` = ``x`` on the twin grid (``split_range = [split, 0, qmax]``); returns
    max |x|."""
    peak = torch.amax(torch.abs(x))  # read before ``out`` (which may be ``x``) is written
    high = x >= split_range[0]
    index = torch.round(torch.clamp(torch.where(high, inverses[1], inverses[0]) * x, split_range[1], split_range[2]))
    out.copy_(index * torch.where(high, scales[1], scales[0]))
    return peak


_fused_twin = FusedKernel(_twin)


def twin_encode(x: torch.Tensor, grid: TwinGrid) -> torch.Tensor:
    """Integer codes (int32): flag bit ``2^(b−1)`` for the high range, plus the index."""
    check_tensor(x)
    _, inverses = _scale_tables(grid, x.device)

    def kernel(chunk: torch.Tensor, out: torch.Tensor) -> None:
        index, high = _index(chunk, grid, inverses)
        torch.add(index.to(torch.int32), high.to(torch.int32), alpha=grid.qmax + 1, out=out)

    return map_chunks(x.detach().to(torch.float32), kernel, torch.int32)


def twin_decode(codes: torch.Tensor, grid: TwinGrid) -> torch.Tensor:
    """Float32 values of :func:`twin_encode` codes: exactly the :func:`twin_fake_quantize` values."""
    if not isinstance(codes, torch.Tensor) or codes.dtype not in _INTEGER_DTYPES:
        raise QuantizationError(f"twin codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes))}")
    if codes.numel() == 0:
        raise QuantizationError(f"twin codes are empty (shape {tuple(codes.shape)})")
    lowest, highest = torch.aminmax(codes)
    if int(lowest) < 0 or int(highest) > 2 * grid.qmax + 1:
        raise QuantizationError(f"twin codes must lie in [0, {2 * grid.qmax + 1}], got [{int(lowest)}, {int(highest)}]")
    scales, _ = _scale_tables(grid, codes.device)

    def kernel(chunk: torch.Tensor, out: torch.Tensor) -> None:
        index = torch.bitwise_and(chunk, grid.qmax).to(torch.float32)
        high = torch.bitwise_right_shift(chunk, grid.bits - 1).to(torch.bool)
        torch.mul(index, torch.where(high, scales[1], scales[0]), out=out)

    return map_chunks(codes.to(torch.int32), kernel, torch.float32)


def twin_errors(x: torch.Tensor, grids: Sequence[TwinGrid], objective: Objective | None = None) -> torch.Tensor:
    """Error of ``x`` fake-quantized on each grid: float64 ``[len(grids)]``.

    Arguments:
      x: the observed tensor.
      grids: the candidates.
      objective: ``objective(x_hat, x) -> error`` called on the whole tensor per candidate; ``None``
        uses the mean squared error, computed chunk by chunk (no full-size temporaries).
    """
    check_tensor(x)
    if not grids:
        raise QuantizationError("twin_errors needs at least one candidate grid")
    if objective is not None:
        values = [_objective_value(objective, twin_fake_quantize(x, g), x) for g in grids]
        return torch.tensor(values, dtype=torch.float64, device=x.device)
    tables = [_scale_tables(g, x.device) for g in grids]
    sums = [0.0] * len(grids)
    for chunk in iter_chunks(x.detach().to(torch.float32)):
        for j, (grid, (scales, inverses)) in enumerate(zip(grids, tables)):
            index, high = _index(chunk, grid, inverses)
            diff = index.mul_(torch.where(high, scales[1], scales[0])).sub_(chunk)
            sums[j] += float(torch.linalg.vector_norm(diff, dtype=torch.float64)) ** 2  # no float32 overflow
    return torch.tensor(sums, dtype=torch.float64, device=x.device) / x.numel()


@functools.lru_cache(maxsize=256)
def _scale_tables(grid: TwinGrid, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``[Δ_low, Δ_high]`` and their float32 reciprocals (as torch's fake_quantize computes them)."""
    scales = torch.tensor([grid.scale_low, grid.scale_high], dtype=torch.float32, device=device)
    return scales, torch.ones((), dtype=torch.float32, device=device) / scales


def _index(chunk: torch.Tensor, grid: TwinGrid, inverses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per element: the (b−1)-bit index as float32 and whether the high range is used."""
    high = torch.ge(chunk, grid.split)
    index = torch.where(high, inverses[1], inverses[0]).mul_(chunk).clamp_(0, grid.qmax)
    return index.add_(ROUND_MAGIC).sub_(ROUND_MAGIC), high


def _objective_value(objective: Objective, x_hat: torch.Tensor, x: torch.Tensor) -> float:
    value = float(objective(x_hat, x))
    if not math.isfinite(value):
        raise QuantizationError(f"twin search objective returned a non-finite error {value}")
    return value
