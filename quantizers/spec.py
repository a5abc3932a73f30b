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

MIN_BITS, MAX_BITS = 2, 16

#: Options each observer accepts (name -> allowed option keys).
OBSERVER_OPTIONS: dict[str, frozenset[str]] = {
    "minmax": frozenset(),
    "avg_minmax": frozenset(),
    "ema_minmax": frozenset({"momentum"}),
    "percentile": frozenset({"percentile", "bins"}),
    "mse": frozenset({"p", "steps", "step"}),
    "kl": frozenset({"bins", "start_bin"}),
}

#: Options each quantizer kind accepts.
QUANTIZER_OPTIONS: dict[str, frozenset[str]] = {
    "uniform": frozenset(),
    "log": frozenset({"taus", "p", "scale"}),
    "twin_softmax": frozenset({"max_shift"}),
    "twin_gelu": frozenset({"gelu_min", "steps"}),
}

#: Options each calibration-time scale search accepts.
SEARCH_OPTIONS: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "hessian": frozenset({"alpha", "beta", "n", "rounds", "metric", "memory_budget", "max_rows"}),
}

GRANULARITY_KINDS = ("tensor", "channel", "group")


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
        if self.kind not in GRANULARITY_KINDS:
            raise QuantizationError(
                f"granularity kind must be one of {GRANULARITY_KINDS}, got {self.kind!r}"
            )
        if self.kind == "group" and (not isinstance(self.group_size, int) or self.group_size < 1):
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
      observer: statistics collector name (``minmax``, ``avg_minmax``, ``ema_minmax``,
        ``percentile``, ``mse``, ``kl``).
      observer_options: options of that observer (e.g. ``{"p": 2.4}`` for ``mse``).
      quantizer: value mapping (``uniform``, ``log``, ``twin_softmax``, ``twin_gelu``).
      quantizer_options: options of that quantizer (e.g. ``{"taus": [1, 2, 4]}`` for ``log``).
      search: calibration-time scale search (``none`` or ``hessian``).
      search_options: options of that search.
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
        _check_choice("observer", self.observer, self.observer_options, OBSERVER_OPTIONS)
        _check_choice("quantizer", self.quantizer, self.quantizer_options, QUANTIZER_OPTIONS)
        _check_choice("search", self.search, self.search_options, SEARCH_OPTIONS)
        for name in ("observer_options", "quantizer_options", "search_options"):
            object.__setattr__(self, name, dict(getattr(self, name)))

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


def _check_choice(
    what: str, name: str, options: Mapping[str, Any], table: Mapping[str, frozenset[str]]
) -> None:
    if name not in table:
        raise QuantizationError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    if not isinstance(options, Mapping):
        raise QuantizationError(f"{what}_options must be a mapping, got {options!r}")
    _reject_unknown(options, set(table[name]), f"{what} {name!r} option")
