"""Quantizer base: a module with a mode (off / observe / quantize) and its calibrated state in buffers."""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from enum import Enum
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from quantizers.errors import QuantizationError
from quantizers.functional.checks import check_tensor
from quantizers.levels import GridLevels
from quantizers.modules.cache import DerivedCache, ParameterCache, is_parameter
from quantizers.options import Options
from quantizers.spec import GRANULARITY_KINDS, QuantSpec
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

    Subclasses implement :meth:`observe`, :meth:`_finalize` and :meth:`fake_quantize`, and describe
    themselves with :meth:`levels` (the grid, for plots) and :meth:`summary` (one line). A kind is
    registered with :func:`~quantizers.registry.register_quantizer`, which sets :attr:`kind` and
    :attr:`Options`.

    QDrop (:attr:`drop_prob`, 0 by default): while quantizing, each element is left in float with
    this probability (drawn from :attr:`drop_generator`); :attr:`dropped_elements` counts them (a
    tensor on the quantizer's device once an element was drawn, so that counting reads nothing back).

    Speed: the fake-quantized value of a parameter (a weight) is cached while gradients are off
    and reused until the parameter or the quantizer's state changes
    (:class:`~quantizers.modules.cache.ParameterCache`); kinds with learnable state
    (:meth:`_cacheable`) are never cached. ``forward(x, overwrite=True)`` says the caller hands
    ``x`` over (a temporary nobody else reads): :meth:`fake_quantize_` may then write into it.

    Arguments:
      spec: the :class:`~quantizers.spec.QuantSpec` this quantizer implements.
    """

    kind: str = ""
    Options: type[Options] = Options
    #: granularity kinds the kind implements; a spec asking for another is refused when it is made
    GRANULARITIES: tuple[str, ...] = GRANULARITY_KINDS
    #: whether :meth:`fake_quantize` maps each element by the qparams alone (no statistic of the tensor
    #: at hand), so that a caller may quantize a tensor in parts (:func:`in_parts`); kinds opt in
    ELEMENTWISE: bool = False

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.mode = Mode.OFF
        self.drop_prob = 0.0
        self.drop_generator: torch.Generator | None = None
        self.dropped_elements = 0
        #: elements of the whole tensor while a caller quantizes it in parts (:func:`in_parts`)
        self.whole_numel: int | None = None
        #: while a list: observed batches are summarized into it instead of folded (:meth:`summarize`)
        self.deferred: list | None = None
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.parameter_cache = ParameterCache()
        self._calibrated_read = DerivedCache()

    @property
    def is_calibrated(self) -> bool:
        # read off the device once per change of the buffer, not at every quantized call
        return self._calibrated_read.get((self.calibrated,), lambda: bool(self.calibrated))

    def forward(self, x: torch.Tensor, *context: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
        if self.mode is Mode.OFF:
            return x
        if self.mode is Mode.OBSERVE:
            check_tensor(x, "observed tensor", finite=False)  # the observers' kernels check the values
            with torch.no_grad():
                args = (x.detach(), *(c.detach() for c in context))
                if self.deferred is None:
                    self.observe(*args)
                else:
                    self.deferred.append(self.summarize(*args))
            return x
        if not self.is_calibrated:
            raise QuantizationError(
                f"{type(self).__name__} is asked to quantize but was never calibrated "
                "(observe data and call finalize() first)"
            )
        check_tensor(x, finite=False)  # the kernels check the values
        x_hat = self._quantize(x, overwrite and self.drop_prob == 0.0)
        return self._drop(x, x_hat) if self.drop_prob > 0.0 else x_hat

    def _quantize(self, x: torch.Tensor, overwrite: bool) -> torch.Tensor:
        """``fake_quantize(x)``, from the parameter cache where it applies."""
        cached = ParameterCache.applies(x) and self._cacheable()
        if cached:
            x_hat = self.parameter_cache.get(x, self)
            if x_hat is not None:
                return x_hat
        if overwrite and not (torch.is_grad_enabled() and x.requires_grad) and not is_parameter(x):
            x_hat = self.fake_quantize_(x)
        else:
            x_hat = self.fake_quantize(x)
        if cached:
            self.parameter_cache.put(x, self, x_hat)
        return x_hat

    def _cacheable(self) -> bool:
        """Whether a parameter's result may be cached: not when the quantizer learns (holds parameters)."""
        return next(self.parameters(), None) is None

    def _drop(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """QDrop: each element is ``x`` with probability :attr:`drop_prob`, else ``x_hat``."""
        keep_float = torch.rand(x.shape, generator=self.drop_generator, device=x.device) < self.drop_prob
        self.dropped_elements = self.dropped_elements + keep_float.sum()  # stays on the device
        return torch.where(keep_float, x, x_hat)

    def finalize(self) -> None:
        """Turn the observed statistics into qparams; afterwards the quantizer can quantize.
        Qparams that come out NaN or Inf raise QuantizationError (the quantizer stays uncalibrated)."""
        self._finalize()
        self.check_finite()
        self.calibrated.fill_(True)

    def check_finite(self) -> None:
        """QuantizationError naming the parameters or buffers of this quantizer that hold NaN or Inf."""
        bad = [name for name, value in self.state_dict().items()
               if value.is_floating_point() and not bool(torch.isfinite(value).all())]
        if bad:
            raise QuantizationError(f"{type(self).__name__}: calibration produced non-finite {bad}")

    def observe(self, x: torch.Tensor, *context: torch.Tensor) -> None:
        """Fold one observed batch into the statistics: ``absorb(summarize(x, *context))``. A kind
        may implement this alone (it then cannot defer, see :meth:`splits`)."""
        self.absorb(self.summarize(x, *context))

    def summarize(self, x: torch.Tensor, *context: torch.Tensor) -> Any:
        """What one batch contributes to the statistics, computed without changing them (small:
        ranges, sums, errors). Folding the summaries of batches in their order with :meth:`absorb`
        gives exactly the state :meth:`observe` would, so summaries made elsewhere (e.g. in other
        processes) can be folded later in the one-process order."""
        raise QuantizationError(f"{type(self).__name__} observes batches only whole (it has no summarize())")

    def absorb(self, summary: Any) -> None:
        """Fold one batch's :meth:`summarize` result into the statistics."""
        raise QuantizationError(f"{type(self).__name__} observes batches only whole (it has no absorb())")

    def splits(self) -> bool:
        """Whether observation splits into small, state-independent summaries (:meth:`summarize`)."""
        return type(self).summarize is not Quantizer.summarize

    def merge(self, others: "list[Quantizer]") -> None:
        """Fold the statistics that copies of this quantizer observed on other data into this one
        (for kinds that do not :meth:`splits`); a kind that cannot raises QuantizationError."""
        raise QuantizationError(f"{type(self).__name__} cannot merge statistics observed elsewhere")

    @abstractmethod
    def _finalize(self) -> None:
        ...

    @abstractmethod
    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        ...

    def fake_quantize_(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`fake_quantize` of a tensor the caller hands over: kinds with an overwriting
        kernel write the result into ``x``; by default, the result is a new tensor."""
        return self.fake_quantize(x)

    def learn(self) -> list[nn.Parameter]:
        """Turn the calibrated parameters this kind can learn into ``nn.Parameter`` s (reconstruction)
        and return them; a kind with nothing to learn returns ``[]``."""
        return []

    def freeze(self) -> None:
        """Learned parameters back to buffers, keeping their values (after reconstruction)."""

    def milestones(self) -> tuple[float, ...]:
        """Fractions of a reconstruction's iterations (ascending, in [0, 1)) at which the
        reconstruction calls :meth:`at_milestone`; none by default."""
        return ()

    def at_milestone(self, index: int) -> None:
        """Called by reconstruction when it reaches ``milestones()[index]`` (every milestone is
        reached, in order). It may replace the learned parameters: the caller takes them again from
        :meth:`learn`."""
        raise QuantizationError(f"{type(self).__name__} has no milestone {index}")

    def parts(self) -> dict[str, str]:
        """The registered kinds of the swappable parts that differ from a freshly built quantizer
        (saved with the state, see :meth:`use_parts`)."""
        return {}

    def use_parts(self, parts: dict[str, str]) -> None:
        """Install parts of the given kinds (empty, ready for ``load_state_dict``)."""
        if parts:
            raise QuantizationError(f"{type(self).__name__} has no swappable parts, got {sorted(parts)}")

    def levels(self) -> GridLevels | None:
        """The calibrated grid, for drawing over a histogram; None when the kind cannot list it."""
        return None

    def summary(self) -> str:
        """One line: kind, bits, granularity and the calibrated parameters (for ``inspect``)."""
        text = f"{self.spec.quantizer} {self.spec.bits}b {self.spec.granularity.kind}"
        if not self.is_calibrated:
            return text + " (uncalibrated)"
        parameters = self._parameter_summary()
        return f"{text} {parameters}" if parameters else text

    def _parameter_summary(self) -> str:
        """The calibrated parameters as ``name=value`` pairs (subclasses override)."""
        return ""

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, mode={self.mode.value}, calibrated={self.is_calibrated}"


@contextlib.contextmanager
def overridden(objects: Iterable[Any], attribute: str, value: Any) -> Iterator[None]:
    """``attribute`` set to ``value`` on each of ``objects`` while the block runs; restored on exit."""
    objects = list(objects)
    saved = [getattr(o, attribute) for o in objects]
    try:
        for o in objects:
            setattr(o, attribute, value)
        yield
    finally:
        for o, previous in zip(objects, saved):
            setattr(o, attribute, previous)


def in_parts(quantizers: Iterable[Quantizer], numel: int | None) -> contextlib.AbstractContextManager:
    """While a caller quantizes a tensor of ``numel`` elements in parts (chunks of rows, say), each
    call's learned-step gradient counts the whole tensor (LSQ's N), as one call would; None: each
    call's own tensor. Restored on exit."""
    return overridden(quantizers, "whole_numel", numel)


def describe_values(name: str, value: torch.Tensor) -> str:
    """``name=v`` for one value, ``name=[min..max]`` for several (for summaries)."""
    flat = value.detach().flatten().float()
    if flat.numel() == 1:
        return f"{name}={float(flat[0]):.4g}"
    return f"{name}=[{float(flat.min()):.3g}..{float(flat.max()):.3g}]"
