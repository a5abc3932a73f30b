"""Twin-uniform quantizers (PTQ4ViT) for post-softmax and post-GELU activations."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from quantizers.errors import QuantizationError
from quantizers.functional.checks import check_peak
from quantizers.functional.twin import GELU_MIN, Objective, TwinGrid, twin_errors, twin_fake_quantize
from quantizers.levels import GridLevels
from quantizers.modules.base import Quantizer
from quantizers.options import Options, check_int, check_number
from quantizers.registry import register_quantizer
from quantizers.spec import QuantSpec


@dataclass(frozen=True)
class TwinSoftmaxOptions(Options):
    """``max_shift``: the largest shift m tried, an integer >= 0 (default 19)."""

    max_shift: int = 19

    def __post_init__(self) -> None:
        check_int(self.max_shift, "max_shift", 0)


@dataclass(frozen=True)
class TwinGeluOptions(Options):
    """``gelu_min``: GELU's minimum value, negative (default :data:`GELU_MIN`); the positive step's
    candidates are ``Δ0·(alpha + i(beta − alpha)/steps)``, ``i = 0 … steps`` (defaults 0.01, 1.2, 100:
    PTQ4ViT's ``eq_alpha``, ``eq_beta``, ``eq_n``)."""

    gelu_min: float = GELU_MIN
    alpha: float = 0.01
    beta: float = 1.2
    steps: int = 100

    def __post_init__(self) -> None:
        check_number(self.gelu_min, "gelu_min", lambda v: v < 0.0, "a finite negative number")
        check_number(self.alpha, "alpha", lambda v: v > 0.0, "a finite positive number")
        check_number(self.beta, "beta", lambda v: v > self.alpha, f"a finite number above alpha ({self.alpha})")
        check_int(self.steps, "steps", 1)


class _TwinSearchQuantizer(Quantizer):
    """Candidate grids scored on every observed batch; the scores are summed over batches and
    :meth:`finalize` keeps the candidate with the smallest sum (the first one on ties).

    ``objective`` (an attribute, default ``None`` = mean squared error) is
    ``objective(x_hat, x) -> error``; a scale search may plug in e.g. a Hessian-weighted metric.
    """

    GRANULARITIES = ("tensor",)
    ELEMENTWISE = True

    #: whether the grid is best seen on a logarithmic axis
    log_axis = False

    def __init__(self, spec: QuantSpec, num_candidates: int) -> None:
        super().__init__(spec)
        self.objective: Objective | None = None
        self.register_buffer("error_sums", torch.zeros(num_candidates, dtype=torch.float64))
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.int64))

    @property
    @abstractmethod
    def grid(self) -> TwinGrid:
        """The calibrated grid."""
        ...

    @abstractmethod
    def candidates(self, x: torch.Tensor) -> list[TwinGrid]:
        """The grids scored on batch ``x``."""
        ...

    def summarize(self, x: torch.Tensor, *context: torch.Tensor) -> dict[str, torch.Tensor]:
        """The candidates' errors on the batch (float64)."""
        return {"errors": twin_errors(x, self.candidates(x), self.objective)}

    def absorb(self, summary: dict[str, torch.Tensor]) -> None:
        self.error_sums += summary["errors"].to(self.error_sums.device)
        self.num_batches += 1

    def _finalize(self) -> None:
        if int(self.num_batches) == 0:
            raise QuantizationError(f"{type(self).__name__}: finalize() called before any data was observed")
        self._choose(int(torch.argmin(self.error_sums)))

    @abstractmethod
    def _choose(self, best: int) -> None:
        ...

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        return twin_fake_quantize(x, self.grid)

    def fake_quantize_(self, x: torch.Tensor) -> torch.Tensor:
        return twin_fake_quantize(x, self.grid, overwrite=True)

    def levels(self) -> GridLevels:
        grid = self.grid
        index = np.arange(grid.qmax + 1, dtype=np.float32)
        low = np.sort(index * np.float32(grid.scale_low))
        # an input >= split gets index round(x/Δ_high) (half to even), so the high range starts there
        first_high = int(np.rint(np.float32(grid.split) * (np.float32(1.0) / np.float32(grid.scale_high))))
        high = index[min(first_high, grid.qmax):] * np.float32(grid.scale_high)
        clip = (float(min(low[0], high[0])), float(max(low[-1], high[-1])))
        description = (f"twin {grid.bits}-bit, split={grid.split:.4g}, "
                       f"Δ_low={abs(grid.scale_low):.4g}, Δ_high={grid.scale_high:.4g}")
        return GridLevels("twin", {"low range": low, "high range": high}, clip, description, split=grid.split,
                          log_axis=self.log_axis)

    def _parameter_summary(self) -> str:
        grid = self.grid
        return f"split={grid.split:.4g} scale_low={abs(grid.scale_low):.4g} scale_high={grid.scale_high:.4g}"


@register_quantizer("twin_softmax", TwinSoftmaxOptions)
class TwinSoftmaxQuantizer(_TwinSearchQuantizer):
    """Post-softmax twin-uniform quantizer: ``Δ_high = 1/2^(b−1)``, ``Δ_low = Δ_high/2^m`` with the
    shift m in ``0 … max_shift`` chosen by the summed error over batches.

    Options: :class:`TwinSoftmaxOptions`.

    Arguments:
      spec: ``quantizer="twin_softmax"`` spec.
    """

    log_axis = True

    def __init__(self, spec: QuantSpec) -> None:
        max_shift = spec.quantizer_config.max_shift
        TwinGrid.softmax(spec.bits, max_shift)  # validates max_shift against the float32 range
        super().__init__(spec, max_shift + 1)
        self.max_shift = max_shift
        self.register_buffer("shift", torch.zeros((), dtype=torch.int64))

    @property
    def grid(self) -> TwinGrid:
        return TwinGrid.softmax(self.spec.bits, int(self.shift))

    def candidates(self, x: torch.Tensor) -> list[TwinGrid]:
        return [TwinGrid.softmax(self.spec.bits, m) for m in range(self.max_shift + 1)]

    def _choose(self, best: int) -> None:
        self.shift.fill_(best)


@register_quantizer("twin_gelu", TwinGeluOptions)
class TwinGeluQuantizer(_TwinSearchQuantizer):
    """Post-GELU twin-uniform quantizer: negative range fixed, ending at GELU's minimum
    (:meth:`~quantizers.functional.twin.TwinGrid.gelu`); positive range ``Δ+`` searched.

    Candidates on a batch with maximum ``M`` are ``Δ+_i = f_i·Δ0`` with ``Δ0 = M/(2^(b−1) − 0.5)``
    and ``f_i = alpha + i(beta − alpha)/steps``, i = 0 … steps: PTQ4ViT's reference code
    (``quant_layers/linear.py``: ``PostGeluPTQSLBatchingQuantLinear._initialize_intervals`` sets
    ``a_interval = max/(a_qmax − 0.5)``, ``PTQSLBatchingQuantLinear.calibration_step2`` searches
    ``(eq_alpha + i(eq_beta − eq_alpha)/eq_n)·a_interval`` with 0.01, 1.2, 100 from
    ``configs/PTQ4ViT.py``), so the largest candidate is 1.2·Δ0. Errors are summed over batches and
    :meth:`finalize` sets ``Δ+ = f_i*·mean(M)/(2^(b−1) − 0.5)`` for the best i* (the per-candidate
    average of the batch scales, as AGQ averages its per-batch scales).

    Options: :class:`TwinGeluOptions`.

    Arguments:
      spec: ``quantizer="twin_gelu"`` spec.
    """

    def __init__(self, spec: QuantSpec) -> None:
        options = spec.quantizer_config
        super().__init__(spec, options.steps + 1)
        self.gelu_min = float(options.gelu_min)
        self.fractions = [options.alpha + i * (options.beta - options.alpha) / options.steps
                          for i in range(options.steps + 1)]
        self.register_buffer("max_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("scale_pos", torch.zeros((), dtype=torch.float64))

    @property
    def grid(self) -> TwinGrid:
        return TwinGrid.gelu(self.spec.bits, float(self.scale_pos), self.gelu_min)

    def candidates(self, x: torch.Tensor) -> list[TwinGrid]:
        return [TwinGrid.gelu(self.spec.bits, s, self.gelu_min) for s in self._positive_scales(_positive_max(x))]

    def summarize(self, x: torch.Tensor, *context: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**super().summarize(x, *context), "max": torch.tensor(_positive_max(x), dtype=torch.float64)}

    def absorb(self, summary: dict[str, torch.Tensor]) -> None:
        super().absorb(summary)
        self.max_sum += summary["max"].to(self.max_sum.device)

    def _choose(self, best: int) -> None:
        mean_max = float(self.max_sum) / int(self.num_batches)
        self.scale_pos.fill_(self._positive_scales(mean_max)[best])

    def _positive_scales(self, top: float) -> list[float]:
        initial = top / (2 ** (self.spec.bits - 1) - 0.5)
        return [f * initial for f in self.fractions]


def _positive_max(x: torch.Tensor) -> float:
    top = float(x.max())
    check_peak(top, "observed tensor")  # NaN and +Inf reach the max (-Inf is caught by twin_errors)
    if top <= 0.0:
        raise QuantizationError("post-GELU input has no positive value: the positive range cannot be fitted")
    return top
