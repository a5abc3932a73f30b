"""Uniform (symmetric or affine) fake-quantizer driven by a swappable observer, with learnable parts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from quantizers.errors import QuantizationError
from quantizers.functional.uniform import (SCALE_EPS, check_qparams, fake_quantize, fake_quantize_checked, grad_scale,
                                           group_rows, num_groups, round_ste)
from quantizers.levels import GridLevels
from quantizers.modules.base import Quantizer, describe_values
from quantizers.modules.cache import DerivedCache
from quantizers.observers.base import Observer
from quantizers.parts.adaround import AdaRoundRounding
from quantizers.parts.codes import CodeRounding
from quantizers.parts.rounding import ROUNDINGS, NearestRounding, Rounding
from quantizers.registry import build_observer, register_quantizer
from quantizers.spec import QuantSpec

QPARAMS = ("scale", "zero_point")


@register_quantizer("uniform")
class UniformQuantizer(Quantizer):
    """``x̂ = (clamp(round(x/Δ) + z, qmin, qmax) − z)·Δ`` with ``(Δ, z)`` from its observer, or set
    directly by a scale search (:meth:`set_qparams`).

    Learnable parts (for reconstruction): :meth:`learn` turns the scale (and optionally the zero
    point) into ``nn.Parameter`` s (LSQ, whose gradient is scaled by ``1/sqrt(N·qmax)``, N the
    elements per scale, as LSQ and PTQ4SAM do); :attr:`rounding` is a swappable
    :class:`~quantizers.parts.rounding.Rounding` part (nearest by default; :meth:`start_adaround`
    installs AdaRound's soft rounding, :meth:`harden` its hard choice); :meth:`freeze` turns the
    qparams back into buffers. With fixed qparams and nearest rounding the
    values are those of torch's fake-quantize op; otherwise the same arithmetic runs in autograd ops
    (:func:`~quantizers.functional.uniform.fake_quantize` with a rounding).

    Arguments:
      spec: bits, grid, granularity and observer.
      observer: the statistics collector; built from ``spec`` when omitted.
    """

    ELEMENTWISE = True

    def __init__(self, spec: QuantSpec, observer: Observer | None = None) -> None:
        super().__init__(spec)
        self.observer = observer if observer is not None else build_observer(spec)
        self.rounding: Rounding = NearestRounding()
        self.register_buffer("scale", torch.empty(0))
        self.register_buffer("zero_point", torch.empty(0, dtype=torch.int32))
        self.checked_qparams = DerivedCache()

    @property
    def qrange(self) -> tuple[int, int]:
        return self.observer.qrange

    @property
    def learnable(self) -> bool:
        """Whether a qparam is an ``nn.Parameter`` (see :meth:`learn`)."""
        return any(name in self._parameters for name in QPARAMS)

    def observe(self, x: torch.Tensor, *context: torch.Tensor) -> None:
        self.observer(x)

    def summarize(self, x: torch.Tensor, *context: torch.Tensor) -> Any:
        return self.observer.summarize(x)

    def absorb(self, summary: Any) -> None:
        self.observer.absorb(summary)

    def splits(self) -> bool:
        return self.observer.splits

    def merge(self, others: "list[Quantizer]") -> None:
        self.observer.merge([other.observer for other in others])  # type: ignore[attr-defined]

    def _finalize(self) -> None:
        self.scale, self.zero_point = self.observer.calculate_qparams()

    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Install qparams found elsewhere (e.g. by a scale search) and mark calibrated."""
        if self.learnable:
            raise QuantizationError("set_qparams on learnable qparams: call freeze() first")
        self.scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1).clone()
        self.zero_point = torch.as_tensor(zero_point).reshape(-1).to(torch.int32).clone()
        self.check_finite()
        self.calibrated.fill_(True)

    def learn(self, scale: bool = True, zero_point: bool = False) -> list[nn.Parameter]:
        """Turn the calibrated scale (and zero point, as a float) into parameters; returns them.
        The zero point, once learnable, is rounded with a straight-through gradient."""
        if not self.is_calibrated:
            raise QuantizationError("learn() needs calibrated qparams to start from")
        made = []
        for name, wanted in (("scale", scale), ("zero_point", zero_point)):
            if wanted and name not in self._parameters:
                value = getattr(self, name).detach().float().clone()
                del self._buffers[name]
                setattr(self, name, nn.Parameter(value))
            if name in self._parameters:
                made.append(self._parameters[name])
        return made

    def freeze(self) -> None:
        """Qparams back to buffers (the zero point rounded to int32); the values are kept."""
        for name in QPARAMS:
            if name in self._parameters:
                value = self._parameters.pop(name).detach().clone()
                if name == "zero_point":
                    value = torch.round(value).to(torch.int32)
                self.register_buffer(name, value)

    def start_adaround(self, weight: torch.Tensor) -> AdaRoundRounding:
        """Install AdaRound's soft rounding for ``weight`` (its ``h`` starts at ``frac(W/Δ)``, so the
        soft-rounded weight starts equal to ``weight``); the qparams stay fixed. Returns the part."""
        if not self.is_calibrated:
            raise QuantizationError("AdaRound needs calibrated qparams to start from")
        rows = group_rows(weight.detach().float(), self.spec.granularity)
        self.rounding = AdaRoundRounding(rows * (1.0 / self.scale.detach().reshape(-1, 1).float()))
        return self.rounding

    def parts(self) -> dict[str, str]:
        return {} if isinstance(self.rounding, NearestRounding) else {"rounding": self.rounding.kind}

    def use_parts(self, parts: dict[str, str]) -> None:
        unknown = sorted(set(parts) - {"rounding"})
        if unknown:
            raise QuantizationError(f"a uniform quantizer has no part {unknown}")
        if "rounding" in parts:
            self.rounding = ROUNDINGS.get(parts["rounding"]).cls()

    def harden(self) -> None:
        """Replace a soft AdaRound rounding by the hard rounding it chose (no-op otherwise)."""
        if isinstance(self.rounding, AdaRoundRounding):
            self.rounding = self.rounding.hardened()

    def set_codes(self, codes: torch.Tensor) -> None:
        """Fix every element's integer code relative to the zero point (chosen elsewhere, e.g. by
        GPTQ), laid out as the quantizer's rows; the qparams stay as they are."""
        if not self.is_calibrated:
            raise QuantizationError("set_codes needs calibrated qparams")
        self.rounding = CodeRounding(codes)

    def group_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` with one entry per quantization group of the granularity (a
        subclass may share one pair between several groups)."""
        return self.scale, self.zero_point

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self._fake_quantize(x, overwrite=False)

    def fake_quantize_(self, x: torch.Tensor) -> torch.Tensor:
        return self._fake_quantize(x, overwrite=True)

    def _fake_quantize(self, x: torch.Tensor, overwrite: bool) -> torch.Tensor:
        learned_scale = self._parameters.get("scale")
        if learned_scale is not None:
            # as torch.ao's _LearnableFakeQuantize: an optimizer step that takes a learned scale to 0
            # or below leaves no grid, so it is floored (untracked, so no autograd graph is disturbed)
            learned_scale.data.clamp_(min=SCALE_EPS)
        qmin, qmax = self.qrange
        scale, zero_point = self.group_qparams()
        if self._fixed:
            checked = self.checked_qparams.get(self._qparam_sources(),
                                               lambda: check_qparams(scale, zero_point, qmin, qmax), (qmin, qmax))
            return fake_quantize_checked(x, checked, self.spec.granularity, overwrite)
        if "scale" in self._parameters:  # LSQ gradient scale 1/sqrt(N·qmax), N = elements per scale
            scale = grad_scale(scale, self._lsq_factor(x, qmax))
        if "zero_point" in self._parameters:
            zero_point = round_ste(zero_point)
        return fake_quantize(x, scale, zero_point, qmin, qmax, self.spec.granularity, self.rounding)

    def _qparam_sources(self) -> tuple[torch.Tensor, ...]:
        """The tensors :meth:`group_qparams` is made from: while none of them changes, the qparam
        values checked at one call need no check at the next."""
        return self.scale, self.zero_point

    def _elements_per_scale(self, x: torch.Tensor) -> float:
        """LSQ's N: the elements each learned scale quantizes (of the whole tensor when ``x`` is a
        chunk of it)."""
        return (self.whole_numel or x.numel()) / num_groups(x, self.spec.granularity)

    def _lsq_factor(self, x: torch.Tensor, qmax: int) -> float | torch.Tensor:
        """LSQ's gradient scale ``1/sqrt(N·qmax)`` of each entry of :meth:`group_qparams`'s scale."""
        return 1.0 / math.sqrt(self._elements_per_scale(x) * qmax)

    @property
    def _fixed(self) -> bool:
        """Fixed qparams and nearest rounding: torch's op (or the fused kernel) computes the values."""
        return not self.learnable and isinstance(self.rounding, NearestRounding)

    def _cacheable(self) -> bool:
        return self._fixed and super()._cacheable()

    def levels(self) -> GridLevels:
        qmin, qmax = self.qrange
        scale = self.scale.detach().cpu().numpy().astype(np.float32).reshape(-1)
        zero_point = np.round(self.zero_point.detach().cpu().numpy()).astype(np.int64).reshape(-1)
        # torch's fake_quantize computes (q − z)·Δ in float32
        lowest = (np.float32(qmin) - zero_point.astype(np.float32)) * scale
        highest = (np.float32(qmax) - zero_point.astype(np.float32)) * scale
        clip = (float(lowest.min()), float(highest.max()))
        bits, kind = self.spec.bits, self.spec.granularity.kind
        if scale.size > 1:
            return GridLevels("uniform", {}, clip, f"uniform {bits}-bit, per {kind} ({scale.size} {kind}s)")
        codes = np.arange(qmin, qmax + 1, dtype=np.int64)
        levels = (codes - zero_point[0]).astype(np.float32) * scale[0]
        return GridLevels("uniform", {"levels": levels}, clip, f"uniform {bits}-bit, Δ={scale[0]:.4g}, z={zero_point[0]}")

    def _parameter_summary(self) -> str:
        return " ".join(describe_values(name, getattr(self, name)) for name in QPARAMS)
