"""Quantization specs: frozen dataclasses that round-trip through plain dicts and YAML.

A :class:`QuantSpec` says everything needed to build a quantizer: bit-width, symmetric or affine,
granularity, which observer gathers statistics, which quantizer kind maps values to the grid, and an
optional scale search run at calibration. Unknown keys and impossible values raise
:class:`~quantizers.errors.QuantizationError` naming them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import yaml

from quantizers.errors import QuantizationError
from quantizers.options import Options, check_int

MIN_BITS, MAX_BITS = 2, 16

GRANULARITY_KINDS = ("tensor", "channel", "group")
#: torch tensors have at most this many dimensions
MAX_DIMS = 64


def check_bits(bits: Any) -> int:
    """Return ``bits`` if it is an int in [2, 16], else raise naming the value."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise QuantizationError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return bits


@dataclass(frozen=True)
class Granularity:
    """Which elements share one (scale, zero_point).

    Arguments:
      kind: ``"tensor"`` (one pair), ``"channel"`` (one per index along ``axis``) or ``"group"``
        (one per ``group_size`` consecutive elements along ``axis``, per slice of the other dims).
      axis: the channel / grouping axis (negative values count from the end).
      group_size: elements per group (``"group"`` only).
    """

    kind: str = "tensor"
    axis: int = 0
    group_size: int = 0

    def __post_init__(self) -> None:
        check_int(self.axis, "granularity axis", -MAX_DIMS, MAX_DIMS - 1)
        if self.kind not in GRANULARITY_KINDS:
            raise QuantizationError(
                f"granularity kind must be one of {GRANULARITY_KINDS}, got {self.kind!r}"
            )
        if self.kind == "group" and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                     or self.group_size < 1):
            raise QuantizationError(f"group granularity needs group_size >= 1, got {self.group_size!r}")
        if self.kind != "group" and self.group_size:
            raise QuantizationError(f"group_size is only meaningful for group granularity, not {self.kind!r}")

    @classmethod
    def from_value(cls, value: str | Mapping[str, Any] | "Granularity") -> "Granularity":
        """Build from ``"tensor"``, ``"channel"``, or a dict such as ``{"kind": "group", ...}``."""
        if isinstance(value, Granularity):
            return value
        if isinstance(value, str):
            return cls(kind=value)
        if isinstance(value, Mapping):
            _reject_unknown(value, {f.name for f in fields(cls)}, "granularity")
            return cls(**value)
        raise QuantizationError(f"granularity must be a string or a mapping, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "axis": self.axis}
        if self.kind == "group":
            out["group_size"] = self.group_size
        return out


PER_TENSOR = Granularity("tensor")


@dataclass(frozen=True)
class QuantSpec:
    """How one site is quantized.

    Arguments:
      bits: bit-width, 2 to 16.
      symmetric: zero point fixed at 0 (symmetric) or fitted (affine, unsigned grid [0, 2^b - 1]).
      signed: for symmetric specs, a signed grid [-2^(b-1), 2^(b-1) - 1]; unsigned gives
        [0, 2^b - 1] (non-negative data such as post-softmax or post-ReLU).
      granularity: see :class:`Granularity`.
      observer: a registered observer (``minmax``, ``avg_minmax``, ``ema_minmax``,
        ``percentile``, ``mse``, ``kl``; see :data:`quantizers.registry.OBSERVERS`).
      observer_options: options of that observer (e.g. ``{"p": 2.4}`` for ``mse``).
      quantizer: a registered quantizer kind (``uniform``, ``log``, ``twin_softmax``,
        ``twin_gelu``; see :data:`quantizers.registry.QUANTIZERS`).
      quantizer_options: options of that quantizer (e.g. ``{"taus": [1, 2, 4]}`` for ``log``).
      search: a registered calibration-time scale search (``none`` or ``hessian``).
      search_options: options of that search.

    Names and options are checked against the registries when the spec is created (unknown names,
    unknown option keys and impossible option values raise); :meth:`check_search` says whether the
    search can search this spec's grid.
    """

    bits: int = 8
    symmetric: bool = False
    signed: bool = True
    granularity: Granularity = PER_TENSOR
    observer: str = "minmax"
    observer_options: Mapping[str, Any] = field(default_factory=dict)
    quantizer: str = "uniform"
    quantizer_options: Mapping[str, Any] = field(default_factory=dict)
    search: str = "none"
    search_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_bits(self.bits)
        for name in ("symmetric", "signed"):
            if not isinstance(getattr(self, name), bool):
                raise QuantizationError(f"{name} must be true or false, got {getattr(self, name)!r}")
        object.__setattr__(self, "granularity", Granularity.from_value(self.granularity))
        for name in ("observer_options", "quantizer_options", "search_options"):
            if not isinstance(getattr(self, name), Mapping):
                raise QuantizationError(f"{name} must be a mapping, got {getattr(self, name)!r}")
            object.__setattr__(self, name, dict(getattr(self, name)))
        self.observer_config, self.quantizer_config, self.search_config  # noqa: B018 - validates them
        supported = _registries().QUANTIZERS.get(self.quantizer).cls.GRANULARITIES
        if self.granularity.kind not in supported:
            raise QuantizationError(f"quantizer {self.quantizer!r} implements granularity {list(supported)}, "
                                    f"not {self.granularity.kind!r}")

    def check_search(self) -> None:
        """Raise unless the scale search can search this spec's grid (e.g. the Hessian-guided search
        only searches signed symmetric uniform grids). Recipes call it for every rule."""
        _registries().SEARCHES.get(self.search).cls.check_spec(self)

    @property
    def observer_config(self) -> Options:
        """The observer's validated options (its registered :class:`Options` dataclass)."""
        return _registries().OBSERVERS.options(self.observer, self.observer_options)

    @property
    def quantizer_config(self) -> Options:
        """The quantizer kind's validated options."""
        return _registries().QUANTIZERS.options(self.quantizer, self.quantizer_options)

    @property
    def search_config(self) -> Options:
        """The scale search's validated options."""
        return _registries().SEARCHES.options(self.search, self.search_options)

    def replace(self, **changes: Any) -> "QuantSpec":
        """A copy with some fields changed (validated like a new spec)."""
        return QuantSpec.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (only built-in types), the inverse of :meth:`from_dict`."""
        return {
            "bits": self.bits,
            "symmetric": self.symmetric,
            "signed": self.signed,
            "granularity": self.granularity.to_dict(),
            "observer": self.observer,
            "observer_options": _plain(self.observer_options),
            "quantizer": self.quantizer,
            "quantizer_options": _plain(self.quantizer_options),
            "search": self.search,
            "search_options": _plain(self.search_options),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QuantSpec":
        """Build from a dict; unknown keys raise :class:`QuantizationError` naming them."""
        if not isinstance(data, Mapping):
            raise QuantizationError(f"a quant spec must be a mapping, got {type(data).__name__}")
        _reject_unknown(data, {f.name for f in fields(cls)}, "quant spec")
        return cls(**data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "QuantSpec":
        return cls.from_dict(yaml.safe_load(text))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _reject_unknown(data: Mapping[str, Any], known: set[str], what: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise QuantizationError(f"unknown {what} key(s) {unknown}; known keys: {sorted(known)}")


def _registries():
    """The registry module (imported late: the registered parts import this module)."""
    from quantizers import registry

    return registry
