"""Hybrid log-uniform quantizer (AHCPTQ's HLUQ) for post-GELU / post-ReLU activations."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quantizers.errors import QuantizationError
from quantizers.functional.checks import check_peak, check_tensor
from quantizers.functional.hybrid import hybrid_fake_quantize, hybrid_levels, hybrid_scales, hybrid_split
from quantizers.functional.uniform import SCALE_EPS
from quantizers.levels import GridLevels
from quantizers.modules.base import Quantizer
from quantizers.options import Options
from quantizers.registry import register_quantizer
from quantizers.spec import QuantSpec

SCALES = ("scale_log", "scale_uni")
#: while observing, candidates are scored on at most about this many evenly spaced elements per batch
SELF_SCORED = 1 << 16


@dataclass(frozen=True)
class HybridOptions(Options):
    """``range_rates``: candidate r, the share of the range under the log grid (AHCPTQ: 0.1, 0.3,
    0.5); ``grid_rates``: candidate g, the share of the codes in the log grid (1/8, 1/4, 1/2).
    Each in (0, 1)."""

    range_rates: tuple[float, ...] = (0.1, 0.3, 0.5)
    grid_rates: tuple[float, ...] = (0.125, 0.25, 0.5)

    def __post_init__(self) -> None:
        for name in ("range_rates", "grid_rates"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                raise QuantizationError(f"hluq {name} must be a list of numbers, got {values!r}")
            rates = tuple(_rate(v, name) for v in values)
            if not rates:
                raise QuantizationError(f"hluq {name} must list at least one value")
            object.__setattr__(self, name, rates)


@register_quantizer("hluq", HybridOptions)
class HybridLogUniformQuantizer(Quantizer):
    """Log grid below ``s_log``, uniform grid above, on ``x − m`` (see
    :mod:`quantizers.functional.hybrid`); per tensor.

    Calibration: observing keeps the running averages of each batch's minimum (``m``) and maximum,
    and scores every candidate ``(r, g)`` on the batch itself (evenly spaced elements, at most about
    :data:`SELF_SCORED`) with the range averaged so far.
    :meth:`score_grids` scores them again once the range is complete, by the error of the following
    linear layer's output when its weight is given (AHCPTQ's criterion; a calibration pass does
    it); :meth:`finalize` keeps the candidate with the lowest summed error, from
    :meth:`score_grids` when it ran, else from observing. ``s_log`` and ``s_uni`` can be learned
    (:meth:`learn`, reconstruction); ``m`` and ``g`` stay fixed.

    Options (:class:`HybridOptions`): ``range_rates``, ``grid_rates``. Candidates whose ``g`` does
    not split ``2^b`` codes into whole parts at this bit-width are left out.

    Arguments:
      spec: ``quantizer="hluq"`` spec, per tensor.
    """

    GRANULARITIES = ("tensor",)
    ELEMENTWISE = True

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        options = spec.quantizer_config
        self.candidates = [(r, g) for g in options.grid_rates if _splits(spec.bits, g) for r in options.range_rates]
        if not self.candidates:
            raise QuantizationError(f"hluq: no grid rate in {list(options.grid_rates)} splits {2 ** spec.bits} codes "
                                    "into whole log and uniform parts")
        for name in ("min_sum", "max_sum"):
            self.register_buffer(name, torch.zeros((), dtype=torch.float64))
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.int64))
        self.register_buffer("self_errors", torch.zeros(len(self.candidates), dtype=torch.float64))
        self.register_buffer("grid_errors", torch.zeros(len(self.candidates), dtype=torch.float64))
        self.register_buffer("scored_batches", torch.zeros((), dtype=torch.int64))
        for name in ("shift", "range_rate", "grid_rate", *SCALES):
            self.register_buffer(name, torch.zeros(()))

    def summarize(self, x: torch.Tensor, *context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's min and max (NaN or Inf raises) and the elements its candidates are scored
        on (:data:`SELF_SCORED` of them; scored by :meth:`absorb` with the range averaged so far)."""
        lo, hi = torch.aminmax(x.float())
        check_peak(torch.maximum(lo.abs(), hi.abs()), "observed tensor")
        flat = x.reshape(-1)
        return lo, hi, flat[:: max(1, flat.numel() // SELF_SCORED)].clone()

    def absorb(self, summary: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        lo, hi, scored = summary
        self.min_sum += lo.double()
        self.max_sum += hi.double()
        self.num_batches += 1
        self.self_errors += self._errors(scored)

    def observed_range(self) -> tuple[float, float]:
        """``(m, range)``: the averaged minimum and the averaged maximum minus it."""
        batches = int(self.num_batches)
        if batches == 0:
            raise QuantizationError("hluq: no data was observed")
        low, high = float(self.min_sum) / batches, float(self.max_sum) / batches
        return low, max(high - low, SCALE_EPS)

    @torch.no_grad()
    def score_grids(self, x: torch.Tensor, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None) -> None:
        """Add each candidate's error on batch ``x`` (with the observed ``m`` and range): the mean
        squared error of ``F.linear(x̂, weight, bias)`` against ``F.linear(x, weight, bias)``, or of
        ``x̂`` against ``x`` without a weight."""
        self.grid_errors += self._errors(x, weight, bias)
        self.scored_batches += 1

    def _errors(self, x: torch.Tensor, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        shift, value_range = self.observed_range()
        x = x.detach().float()
        layer = (lambda t: t) if weight is None else \
            (lambda t: F.linear(t, weight.float(), None if bias is None else bias.float()))
        reference = layer(x)
        errors = torch.zeros(len(self.candidates), dtype=torch.float64, device=self.grid_errors.device)
        for i, (r, g) in enumerate(self.candidates):
            s_log, s_uni = hybrid_scales(value_range, r, g, self.spec.bits)
            x_hat = hybrid_fake_quantize(x, torch.tensor(shift), torch.tensor(s_log), torch.tensor(s_uni),
                                         self.spec.bits, g)
            errors[i] = (layer(x_hat) - reference).double().square().mean()
        return errors

    def _finalize(self) -> None:
        shift, value_range = self.observed_range()
        errors = self.grid_errors if int(self.scored_batches) else self.self_errors
        r, g = self.candidates[int(torch.argmin(errors))]
        s_log, s_uni = hybrid_scales(value_range, r, g, self.spec.bits)
        for name, value in (("shift", shift), ("range_rate", r), ("grid_rate", g), ("scale_log", s_log),
                            ("scale_uni", s_uni)):
            getattr(self, name).fill_(value)

    def learn(self) -> list[nn.Parameter]:
        """``s_log`` and ``s_uni`` as parameters (AHCPTQ learns both in reconstruction, without
        LSQ's gradient scale)."""
        if not self.is_calibrated:
            raise QuantizationError("hluq learn() needs a calibrated quantizer")
        for name in SCALES:
            if name not in self._parameters:
                value = self._buffers.pop(name).detach().clone()
                setattr(self, name, nn.Parameter(value))
        return [self._parameters[name] for name in SCALES]

    def freeze(self) -> None:
        for name in SCALES:
            if name in self._parameters:
                self.register_buffer(name, _positive(self._parameters.pop(name).detach()).clone())

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x)  # its kernel does not check the values
        # a learned scale is kept positive (a large learning rate could push it through 0)
        return hybrid_fake_quantize(x, self.shift, _positive(self.scale_log), _positive(self.scale_uni),
                                    self.spec.bits, float(self.grid_rate))

    def levels(self) -> GridLevels:
        u_levels = hybrid_levels(float(self.scale_log), float(self.scale_uni), self.spec.bits, float(self.grid_rate))
        levels = (u_levels + float(self.shift)).numpy().astype(np.float32)
        description = (f"hybrid log-uniform {self.spec.bits}-bit, m={float(self.shift):.4g}, "
                       f"s_log={float(self.scale_log):.4g}, s_uni={float(self.scale_uni):.4g}, "
                       f"g={float(self.grid_rate):g}")
        return GridLevels("hluq", {"levels": levels}, (float(levels[0]), float(levels[-1])), description)

    def _parameter_summary(self) -> str:
        return (f"m={float(self.shift):.4g} r={float(self.range_rate):g} g={float(self.grid_rate):g} "
                f"s_log={float(self.scale_log):.4g} s_uni={float(self.scale_uni):.4g}")


def _positive(scale: torch.Tensor) -> torch.Tensor:
    return torch.clamp(scale, min=SCALE_EPS)


def _splits(bits: int, grid_rate: float) -> bool:
    try:
        hybrid_split(bits, grid_rate)
    except QuantizationError:
        return False
    return True


def _rate(value: object, name: str) -> float:
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and 0.0 < number < 1.0):
        raise QuantizationError(f"hluq {name} must hold numbers in (0, 1), got {value!r}")
    return number
