"""Log quantizer with an adaptive base (PTQ4SAM AGQ) for post-softmax attention."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from quantizers.errors import QuantizationError
from quantizers.functional.log import (MAX_TAU, LogGrid, agq_searches, attention_output_error, log_fake_quantize,
                                       sample_rows)
from quantizers.levels import GridLevels
from quantizers.modules.base import Quantizer
from quantizers.modules.cache import DerivedCache
from quantizers.options import Options, check_int
from quantizers.registry import register_quantizer
from quantizers.spec import QuantSpec


@dataclass(frozen=True)
class LogOptions(Options):
    """``taus``: candidate τ values, each in (0, 64] (default 1, 2, 4); ``p``: error exponent
    (default 2.4); ``scale``: a fixed s (no search), or None; ``search_numel``: the most map elements
    an objective evaluation of the search reads: a larger stack of maps is searched on a sample of
    its query rows, the same number from each map, stratified by row maximum (see
    :func:`~quantizers.functional.log.sample_rows` and :func:`~quantizers.functional.log.row_sample`;
    e.g. 2^21 samples SAM-B's 12×4096×4096 global maps at 42 rows per head and its 300 windowed
    196×196 maps at 35 rows each), or None (default) for every row. A sample's objective ripples
    with the grid's phase by more than the full objective varies near its minimum, so s may move by
    several percent (``experiments/benchmarks/bench_agq.py`` measures it)."""

    taus: tuple[float, ...] = (1.0, 2.0, 4.0)
    p: float = 2.4
    scale: float | None = None
    search_numel: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.taus, (str, bytes)) or not hasattr(self.taus, "__iter__"):
            raise QuantizationError(f"log quantizer taus must be a list of numbers, got {self.taus!r}")
        object.__setattr__(self, "taus", tuple(_positive(t, "tau", MAX_TAU) for t in self.taus))
        if not self.taus:
            raise QuantizationError("log quantizer taus must list at least one value")
        object.__setattr__(self, "p", _positive(self.p, "p"))
        if self.scale is not None:
            object.__setattr__(self, "scale", _positive(self.scale, "scale"))
        if self.search_numel is not None:
            check_int(self.search_numel, "log quantizer search_numel", 1)


@register_quantizer("log", LogOptions)
class LogQuantizer(Quantizer):
    """``x̂ = s·2^(−q/τ)`` (see :mod:`quantizers.functional.log`) with τ and s calibrated by AGQ.

    Per observed batch ``forward(attn, v)`` and for each τ, the scale minimising the attention
    output error ``mean |Â·V − A·V|^p`` is found by bounded 1-D search
    (:func:`~quantizers.functional.log.agq_search`, on a row sample when the maps hold more than
    ``search_numel`` elements); the per-τ best scale and error are summed.
    :meth:`finalize` picks τ = argmin of the summed errors and s = that τ's mean best scale.
    Without ``v`` (a batch observed as ``forward(attn)``) the error is measured on the attention
    map itself, ``mean |Â − A|^p``.

    Options (:class:`LogOptions`):
      taus: candidate τ values (default ``[1, 2, 4]``).
      p: error exponent (default 2.4).
      scale: a fixed s (no search; data then only chooses τ). With a single τ and a fixed scale,
        :meth:`finalize` needs no data (FQ-ViT log2 is ``taus=[1], scale=1``).
      search_numel: search maps larger than this many elements on a row sample (default: every row).

    Arguments:
      spec: ``quantizer="log"`` spec; ``bits`` is the code width (2^b levels plus the zero code).
    """

    GRANULARITIES = ("tensor",)
    ELEMENTWISE = True

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        options = spec.quantizer_config
        self.taus, self.p, self.fixed_scale = options.taus, options.p, options.scale
        self.search_numel = options.search_numel
        self.register_buffer("scale", torch.zeros((), dtype=torch.float64))
        self.register_buffer("tau", torch.zeros((), dtype=torch.float64))
        self.register_buffer("scale_sums", torch.zeros(len(self.taus), dtype=torch.float64))
        self.register_buffer("error_sums", torch.zeros(len(self.taus), dtype=torch.float64))
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.int64))
        self._grid = DerivedCache()

    @property
    def grid(self) -> LogGrid:
        """The calibrated grid (its lookup tables are rebuilt only when s or τ change)."""
        return self._grid.get((self.scale, self.tau), self._build_grid, (self.spec.bits,))

    def _build_grid(self) -> LogGrid:
        return LogGrid.build(float(self.scale.detach()), float(self.tau), self.spec.bits)

    def summarize(self, x: torch.Tensor, *context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per τ, the batch's best scale and its error (float64, one entry per τ)."""
        v = context[0] if context else None
        if self.fixed_scale is None:
            found = agq_searches(x, v, self.spec.bits, self.taus, self.p, sample_rows(x.shape, self.search_numel))
        else:
            found = [(self.fixed_scale, attention_output_error(x, v, LogGrid.build(self.fixed_scale, tau, self.spec.bits),
                                                               self.p)) for tau in self.taus]
        scales = [torch.as_tensor(scale, dtype=torch.float64).reshape(()) for scale, _ in found]
        errors = [torch.as_tensor(error, dtype=torch.float64).reshape(()) for _, error in found]
        return torch.stack(scales), torch.stack(errors)

    def absorb(self, summary: tuple[torch.Tensor, torch.Tensor]) -> None:
        scales, errors = summary
        self.scale_sums += scales.to(self.scale_sums.device)
        self.error_sums += errors.to(self.error_sums.device)
        self.num_batches += 1

    def _finalize(self) -> None:
        batches = int(self.num_batches)
        if batches == 0:
            if self.fixed_scale is None or len(self.taus) > 1:
                raise QuantizationError("LogQuantizer: finalize() called before any data was observed")
            self.scale.fill_(self.fixed_scale)
            self.tau.fill_(self.taus[0])
            return
        best = int(torch.argmin(self.error_sums))
        self.tau.fill_(self.taus[best])
        self.scale.copy_(self.scale_sums[best] / batches)

    def learn(self) -> list[nn.Parameter]:
        """Learn s (τ stays as calibrated), as PTQ4SAM-L does. Through the rounding's
        straight-through path ``∂x̂/∂s = 0`` inside the grid; only values above s (clipped to
        the level s) pass gradient to it, so s moves little."""
        if not self.is_calibrated:
            raise QuantizationError("LogQuantizer.learn() needs a calibrated scale")
        if "scale" not in self._parameters:
            value = self.scale.detach().clone()
            del self._buffers["scale"]
            self.scale = nn.Parameter(value)
        return [self._parameters["scale"]]

    def freeze(self) -> None:
        if "scale" in self._parameters:
            self.register_buffer("scale", self._parameters.pop("scale").detach().clone())

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        out = log_fake_quantize(x, self.grid)
        if "scale" in self._parameters:  # zero-valued term carrying ∂x̂/∂s = 1 where x > s
            s = self._parameters["scale"]
            out = out + (s - s.detach()).to(out.dtype) * (x.detach() > float(s.detach())).to(out.dtype)
        return out

    def fake_quantize_(self, x: torch.Tensor) -> torch.Tensor:
        if "scale" in self._parameters:  # the learned s needs the gradient term of fake_quantize
            return self.fake_quantize(x)
        return log_fake_quantize(x, self.grid, overwrite=True)

    def levels(self) -> GridLevels:
        grid = self.grid
        levels = np.sort(grid.levels.cpu().numpy())
        description = f"log {grid.bits}-bit, levels s·2^(−q/τ), τ={grid.tau:g}, s={grid.scale:.4g}"
        return GridLevels("log", {"levels": levels}, (0.0, float(levels[-1])), description, log_axis=True)

    def _parameter_summary(self) -> str:
        return f"tau={float(self.tau):g} scale={float(self.scale):.4g}"

    def extra_repr(self) -> str:
        state = f", tau={float(self.tau):g}, scale={float(self.scale):.6g}" if self.is_calibrated else ""
        return f"{super().extra_repr()}, taus={list(self.taus)}{state}"


def _positive(value: object, name: str, upper: float = math.inf) -> float:
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and 0.0 < number <= upper):
        raise QuantizationError(f"log quantizer {name} must be a finite number in (0, {upper}], got {value!r}")
    return number
