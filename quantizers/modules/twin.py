"""Twin-uniform quantizers (PTQ4ViT) for post-softmax and post-GELU activations."""

from __future__ import annotations

from abc import abstractmethod

import torch

from quantizers.errors import QuantizationError
from quantizers.functional.twin import GELU_MIN, Objective, TwinGrid, twin_errors, twin_fake_quantize
from quantizers.modules.base import Quantizer
from quantizers.spec import QuantSpec

DEFAULT_MAX_SHIFT = 19
DEFAULT_STEPS = 100


class _TwinSearchQuantizer(Quantizer):
    """Candidate grids scored on every observed batch; the scores are summed over batches and
    :meth:`finalize` keeps the candidate with the smallest sum (the first one on ties).

    ``objective`` (an attribute, default ``None`` = mean squared error) is
    ``objective(x_hat, x) -> error``; a scale search may plug in e.g. a Hessian-weighted metric.
    """

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

    def observe(self, x: torch.Tensor, *context: torch.Tensor) -> None:
        self.error_sums += twin_errors(x, self.candidates(x), self.objective)
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


class TwinSoftmaxQuantizer(_TwinSearchQuantizer):
    """Post-softmax twin-uniform quantizer: ``Δ_high = 1/2^(b−1)``, ``Δ_low = Δ_high/2^m`` with the
    shift m in ``0 … max_shift`` chosen by the summed error over batches.

    Options: ``max_shift`` (default 19).

    Arguments:
      spec: ``quantizer="twin_softmax"`` spec.
    """

    def __init__(self, spec: QuantSpec) -> None:
        max_shift = _check_count(spec.quantizer_options.get("max_shift", DEFAULT_MAX_SHIFT), "max_shift", 0)
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


class TwinGeluQuantizer(_TwinSearchQuantizer):
    """Post-GELU twin-uniform quantizer: negative range fixed, ``Δ− = |gelu_min|/2^(b−1)``; positive
    range ``Δ+`` searched.

    Candidates on a batch with maximum ``M`` are ``Δ+_i = (i/steps)·M/(2^(b−1) − 1)``,
    i = 1 … steps; their errors are summed over batches and :meth:`finalize` sets
    ``Δ+ = (i*/steps)·mean(M)/(2^(b−1) − 1)`` for the best i* (the per-candidate average of the
    batch scales, as AGQ averages its per-batch scales).

    Options: ``gelu_min`` (GELU's minimum value, default
    :data:`~quantizers.functional.twin.GELU_MIN`), ``steps`` (default 100).

    Arguments:
      spec: ``quantizer="twin_gelu"`` spec.
    """

    def __init__(self, spec: QuantSpec) -> None:
        options = spec.quantizer_options
        steps = _check_count(options.get("steps", DEFAULT_STEPS), "steps", 1)
        gelu_min = options.get("gelu_min", GELU_MIN)
        TwinGrid.gelu(spec.bits, 1.0, gelu_min)  # validates gelu_min
        super().__init__(spec, steps)
        self.steps, self.gelu_min = steps, float(gelu_min)
        self.register_buffer("max_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("scale_pos", torch.zeros((), dtype=torch.float64))

    @property
    def grid(self) -> TwinGrid:
        return TwinGrid.gelu(self.spec.bits, float(self.scale_pos), self.gelu_min)

    def candidates(self, x: torch.Tensor) -> list[TwinGrid]:
        return [TwinGrid.gelu(self.spec.bits, s, self.gelu_min) for s in self._positive_scales(_positive_max(x))]

    def observe(self, x: torch.Tensor, *context: torch.Tensor) -> None:
        super().observe(x, *context)
        self.max_sum += _positive_max(x)

    def _choose(self, best: int) -> None:
        mean_max = float(self.max_sum) / int(self.num_batches)
        self.scale_pos.fill_(self._positive_scales(mean_max)[best])

    def _positive_scales(self, top: float) -> list[float]:
        qmax = 2 ** (self.spec.bits - 1) - 1
        return [i / self.steps * top / qmax for i in range(1, self.steps + 1)]


def _positive_max(x: torch.Tensor) -> float:
    top = float(x.max())
    if top <= 0.0:
        raise QuantizationError("post-GELU input has no positive value: the positive range cannot be fitted")
    return top


def _check_count(value: object, name: str, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise QuantizationError(f"{name} must be an integer >= {lowest}, got {value!r}")
    return value
