"""Quantizer base: a module with a mode (off / observe / quantize) and its calibrated state in buffers."""

from __future__ import annotations

from abc import abstractmethod

from enum import Enum

import torch

from quantizers.errors import QuantizationError
from quantizers.functional.checks import check_tensor
from quantizers.spec import QuantSpec
from quantizers.state import LazyStateModule


class Mode(str, Enum):
    """What a quantizer does in ``forward``."""

    OFF = "off"  #: return the input untouched
    OBSERVE = "observe"  #: gather statistics, return the input untouched
    QUANTIZE = "quantize"  #: return the fake-quantized input


class Quantizer(LazyStateModule):
    """Fake-quantizer of one site.

    ``forward(x, *context)`` dispatches on :attr:`mode`. ``context`` carries tensors some
    quantizers need while observing (the log quantizer takes the attention's ``v``); it is never
    modified. After observing, :meth:`finalize` turns statistics into qparams (``calibrated``
    becomes true); quantizing before that raises :class:`QuantizationError`.

    Subclasses implement :meth:`observe`, :meth:`_finalize` and :meth:`fake_quantize`.

    Arguments:
      spec: the :class:`~quantizers.spec.QuantSpec` this quantizer implements.
    """

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.mode = Mode.OFF
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

    @property
    def is_calibrated(self) -> bool:
        return bool(self.calibrated)

    def forward(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        if self.mode is Mode.OFF:
            return x
        if self.mode is Mode.OBSERVE:
            check_tensor(x, "observed tensor")
            with torch.no_grad():
                self.observe(x.detach(), *(c.detach() for c in context))
            return x
        if not self.is_calibrated:
            raise QuantizationError(
                f"{type(self).__name__} is asked to quantize but was never calibrated "
                "(observe data and call finalize() first)"
            )
        check_tensor(x)
        return self.fake_quantize(x)

    def finalize(self) -> None:
        """Turn the observed statistics into qparams; afterwards the quantizer can quantize."""
        self._finalize()
        self.calibrated.fill_(True)

    @abstractmethod
    def observe(self, x: torch.Tensor, *context: torch.Tensor) -> None:
        ...

    @abstractmethod
    def _finalize(self) -> None:
        ...

    @abstractmethod
    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        ...

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, mode={self.mode.value}, calibrated={self.is_calibrated}"
