"""MSE / OMSE observer: the clipping range that minimises the ``L_p`` quantization error."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantizers.functional.fused import FusedKernel, constant
from quantizers.functional.uniform import group_rows, qparams_from_minmax
from quantizers.observers.blocks import row_blocks
from quantizers.observers.minmax import AvgMinMaxObserver, batch_minmax
from quantizers.options import Options, check_int, check_number
from quantizers.registry import register_observer


def candidate_errors(
    rows: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor,
    qmin: int,
    qmax: int,
    p: float,
) -> torch.Tensor:
    """``Σ |x − x̂|^p`` per candidate and row (float64, ``(candidates, groups)``).

    Large float32 inputs take one fused kernel for all candidates (the rows are read from cache, the
    quantized copies never exist); the others are read in bounded blocks, one candidate at a time.
    The two sum in different orders, so their errors agree to float32 rounding (a candidate whose
    error ties another's to that precision may be picked by one and not the other).

    Arguments:
      rows: ``(groups, elements)`` data.
      scales, zero_points: ``(candidates, groups)`` qparams to try.
      qmin, qmax: the integer grid.
      p: the error exponent.
    """
    if _fused_errors.wants(rows, passes=scales.shape[0]):
        step = scales.to(rows.device, torch.float32).unsqueeze(-1)
        inverse = torch.ones((), dtype=torch.float32, device=rows.device) / step
        zero = zero_points.to(rows.device, torch.float32).unsqueeze(-1)
        return _fused_errors(rows, inverse, step, zero, constant((qmin, qmax, p), rows.device)).double()
    errors = torch.zeros(scales.shape, dtype=torch.float64, device=rows.device)
    for groups, block in row_blocks(rows):
        for k in range(scales.shape[0]):
            error = torch.fake_quantize_per_channel_affine(
                block, scales[k, groups], zero_points[k, groups], 0, qmin, qmax
            ).sub_(block)
            errors[k, groups] += torch.linalg.vector_norm(error, ord=p, dim=1).double() ** p
    return errors


def _errors(rows: torch.Tensor, inverse: torch.Tensor, step: torch.Tensor, zero: torch.Tensor,
            grid_p: torch.Tensor) -> torch.Tensor:
    """Fused kernel: ``Σ |x − x̂|^p`` for every candidate (``(c, groups, 1)`` qparams) and row;
    ``x̂`` is torch's fake-quantize arithmetic, ``grid_p = [qmin, qmax, p]``."""
    index = torch.clamp(torch.round(rows * inverse) + zero, grid_p[0], grid_p[1])
    return torch.sum(torch.exp2(grid_p[2] * torch.log2(torch.abs((index - zero) * step - rows))), dim=-1)


_fused_errors = FusedKernel(_errors)


@dataclass(frozen=True)
class MSEOptions(Options):
    """``p``: error exponent (> 0; PTQ4SAM uses 2.4); ``steps``: candidates (>= 1); ``step``: shrink
    per candidate, in (0, 1/(steps − 1)) so every candidate range stays positive."""

    p: float = 2.0
    steps: int = 100
    step: float = 0.01

    def __post_init__(self) -> None:
        check_number(self.p, "mse option 'p'", lambda v: v > 0, "a positive number")
        check_int(self.steps, "mse option 'steps'", 1)
        check_number(self.step, "mse option 'step'", lambda v: 0 < v and v * (self.steps - 1) < 1,
                     "in (0, 1/(steps - 1))")


@register_observer("mse", MSEOptions)
class MSEObserver(AvgMinMaxObserver):
    """Per batch and group, the range ``[min·f, max·f]`` with ``f = 1 − step·i`` (``i < steps``)
    minimising mean ``|x − x̂|^p``; qparams come from the mean over batches of those ranges.

    Min and max shrink by the same factor (symmetric specs thereby shrink ``max |x|``). Averaging
    the per-batch optimum keeps two numbers per group whatever the number of batches; the optimum
    of the pooled data is not computed. Candidates are evaluated block by block
    (:func:`~quantizers.observers.blocks.row_blocks`), so temporaries stay small on large tensors.

    Arguments:
      spec: the spec; options :class:`MSEOptions` (``p`` default 2.0, ``steps`` 100, ``step`` 0.01).
    """

    @property
    def factors(self) -> torch.Tensor:
        """Shrink factors ``1 − step·i`` of the candidate ranges (float32, largest first)."""
        return 1.0 - self.options.step * torch.arange(self.options.steps, dtype=torch.float32)

    def _batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = batch_minmax(x, self.spec.granularity)
        factors = self.factors.to(x.device).unsqueeze(1)
        scales, zero_points = qparams_from_minmax(
            lo * factors, hi * factors, self.spec.bits, self.spec.symmetric, self.spec.signed
        )
        qmin, qmax = self.qrange
        errors = candidate_errors(group_rows(x, self.spec.granularity), scales, zero_points, qmin, qmax, self.options.p)
        best = factors[errors.argmin(0), 0]
        return lo * best, hi * best
