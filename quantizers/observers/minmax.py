"""MinMax observers: running, averaged over batches, and exponential moving average."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch

from quantizers.errors import QuantizationError
from quantizers.functional.checks import check_peak
from quantizers.functional.uniform import channel_axis, group_rows, qparams_from_minmax
from quantizers.observers.base import Observer
from quantizers.options import Options, check_number
from quantizers.registry import register_observer
from quantizers.spec import Granularity, QuantSpec


def batch_minmax(x: torch.Tensor, granularity: Granularity) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group ``(min, max)`` of one tensor under ``granularity`` (1-D, one entry per group)."""
    if granularity.kind == "tensor":
        lo, hi = torch.aminmax(x)
        return lo.reshape(1), hi.reshape(1)
    if granularity.kind == "channel":
        axis = channel_axis(x, granularity)
        dims = [d for d in range(x.dim()) if d != axis]
        if not dims:
            return x.clone(), x.clone()
        return x.amin(dim=dims), x.amax(dim=dims)
    lo, hi = torch.aminmax(group_rows(x, granularity), dim=1)
    return lo, hi


class _MinMaxState(Observer):
    """Per-group (min, max) buffers; subclasses say how a batch's range merges into them. A batch
    holding NaN/Inf raises (both propagate into its min or max)."""

    checks_values = True

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        self.register_buffer("min_val", torch.empty(0))
        self.register_buffer("max_val", torch.empty(0))

    def _summarize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self._batch_range(x)
        check_peak(torch.maximum(lo.abs().max(), hi.abs().max()), "observed tensor")
        return lo, hi

    def _absorb(self, summary: tuple[torch.Tensor, torch.Tensor]) -> None:
        lo, hi = summary
        if self.min_val.numel() == 0:
            self.min_val, self.max_val = lo, hi
            return
        if lo.shape != self.min_val.shape:
            raise QuantizationError(
                f"{type(self).__name__}: a batch has {lo.numel()} quantization groups, earlier batches had "
                f"{self.min_val.numel()}"
            )
        self.min_val, self.max_val = self._merge(lo, hi)

    def _batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The range one batch contributes (subclasses may choose another range)."""
        return batch_minmax(x, self.spec.granularity)

    @abstractmethod
    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ...

    def _calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self._range()
        return qparams_from_minmax(lo, hi, self.spec.bits, self.spec.symmetric, self.spec.signed)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val, self.max_val


@register_observer("minmax")
class MinMaxObserver(_MinMaxState):
    """Running min and max over every batch seen (``torch.ao`` MinMaxObserver semantics)."""

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)


@register_observer("avg_minmax")
class AvgMinMaxObserver(_MinMaxState):
    """Mean over batches of each batch's min and max (PTQ4SAM's default activation observer)."""

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val + lo, self.max_val + hi

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = float(self.num_batches)
        return self.min_val / n, self.max_val / n


@dataclass(frozen=True)
class EMAOptions(Options):
    """``momentum``: c of the moving average, in (0, 1] (torch: 0.01)."""

    momentum: float = 0.01

    def __post_init__(self) -> None:
        check_number(self.momentum, "ema_minmax option 'momentum'", lambda v: 0.0 < v <= 1.0, "in (0, 1]")


@register_observer("ema_minmax", EMAOptions)
class EMAMinMaxObserver(_MinMaxState):
    """Exponential moving average of min and max, ``m ← m + c (m_batch − m)`` (torch: c = 0.01).

    Options: :class:`EMAOptions`.
    """

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.options.momentum
        return self.min_val + c * (lo - self.min_val), self.max_val + c * (hi - self.max_val)
