"""Uniform (symmetric or affine) fake-quantizer driven by a swappable observer."""

from __future__ import annotations

import torch

from quantizers.functional.uniform import fake_quantize
from quantizers.modules.base import Quantizer
from quantizers.observers.base import Observer
from quantizers.spec import QuantSpec


class UniformQuantizer(Quantizer):
    """``x̂ = (clamp(round(x/Δ) + z, qmin, qmax) − z)·Δ`` with ``(Δ, z)`` from its observer, or set
    directly by a scale search (:meth:`set_qparams`).

    Arguments:
      spec: bits, grid, granularity and observer.
      observer: the statistics collector; built from ``spec`` when omitted.
    """

    def __init__(self, spec: QuantSpec, observer: Observer | None = None) -> None:
        super().__init__(spec)
        from quantizers.modules.factory import build_observer  # the factory imports this module

        self.observer = observer if observer is not None else build_observer(spec)
        self.register_buffer("scale", torch.empty(0))
        self.register_buffer("zero_point", torch.empty(0, dtype=torch.int32))

    @property
    def qrange(self) -> tuple[int, int]:
        return self.observer.qrange

    def observe(self, x: torch.Tensor, *context: torch.Tensor) -> None:
        self.observer(x)

    def _finalize(self) -> None:
        self.scale, self.zero_point = self.observer.calculate_qparams()

    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Install qparams found elsewhere (e.g. by a scale search) and mark calibrated."""
        self.scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1).clone()
        self.zero_point = torch.as_tensor(zero_point).reshape(-1).to(torch.int32).clone()
        self.calibrated.fill_(True)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        qmin, qmax = self.qrange
        return fake_quantize(x, self.scale, self.zero_point, qmin, qmax, self.spec.granularity)
