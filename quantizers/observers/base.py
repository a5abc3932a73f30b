"""Observer base: streaming statistics that yield ``(scale, zero_point)`` for a spec."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from quantizers.errors import QuantizationError
from quantizers.functional.checks import check_tensor
from quantizers.functional.uniform import grid_range
from quantizers.spec import QuantSpec
from quantizers.state import LazyStateModule


class Observer(LazyStateModule):
    """Sees tensors one batch at a time (``forward(x) -> x``) and never keeps them.

    Subclasses implement :meth:`_summarize` (what one detached float tensor contributes, without
    touching the state), :meth:`_absorb` (fold that into the buffers) and :meth:`_calculate_qparams`.
    State lives in buffers, so ``state_dict`` round-trips. A kind whose batches cannot be summarized
    apart from its state sets :attr:`splits` to False (its summary is then the batch itself) and may
    implement :meth:`merge` instead. A subclass whose statistics reveal NaN/Inf (a min and max do)
    sets :attr:`checks_values` and raises itself in :meth:`_summarize`, sparing the separate scan of
    the tensor.

    Arguments:
      spec: the quantization spec whose grid and granularity the qparams are for.
    """

    #: whether :meth:`_summarize` detects NaN/Inf itself
    checks_values = False

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.options = spec.observer_config  #: the validated options (the registered Options dataclass)
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.int64))

    @property
    def qrange(self) -> tuple[int, int]:
        return grid_range(self.spec.bits, self.spec.symmetric, self.spec.signed)

    #: summaries are small and independent of the state (see :meth:`summarize`)
    splits: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.absorb(self.summarize(x))
        return x

    def summarize(self, x: torch.Tensor) -> Any:
        """What batch ``x`` contributes; folding summaries with :meth:`absorb` in the batches' order
        gives exactly the state ``forward`` would."""
        check_tensor(x, "observed tensor", finite=not self.checks_values)
        with torch.no_grad():
            return self._summarize(x.detach() if x.dtype == torch.float32 else x.detach().float())

    def absorb(self, summary: Any) -> None:
        """Fold one batch's summary into the state."""
        with torch.no_grad():
            self._absorb(summary)
        self.num_batches += 1

    def merge(self, others: "list[Observer]") -> None:
        """Fold the state of copies that observed other data into this one (kinds that do not split)."""
        raise QuantizationError(f"{type(self).__name__} cannot merge statistics observed elsewhere")

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale float32, zero_point int32)``, one entry per quantization group."""
        if int(self.num_batches) == 0:
            raise QuantizationError(f"{type(self).__name__}: qparams requested before any data was observed")
        return self._calculate_qparams()

    @abstractmethod
    def _summarize(self, x: torch.Tensor) -> Any:
        ...

    @abstractmethod
    def _absorb(self, summary: Any) -> None:
        ...

    @abstractmethod
    def _calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        ...

    def extra_repr(self) -> str:
        g = self.spec.granularity
        return f"bits={self.spec.bits}, symmetric={self.spec.symmetric}, granularity={g.kind}"
