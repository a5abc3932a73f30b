"""Options of a registered part: frozen dataclasses built from plain mappings, validated on creation.

Every quantizer kind, observer and scale search declares one :class:`Options` subclass; a
:class:`~quantizers.spec.QuantSpec` keeps the plain mapping (for YAML) and builds the dataclass when
it is created, so an unknown key or an impossible value fails there, naming the part and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, TypeVar

from quantizers.errors import QuantizationError

OptionsT = TypeVar("OptionsT", bound="Options")


@dataclass(frozen=True)
class Options:
    """Base of the options dataclasses (no options at all)."""

    @classmethod
    def from_mapping(cls: type[OptionsT], data: Mapping[str, Any], what: str) -> OptionsT:
        """Build from ``data``; ``what`` names the owner in errors (e.g. ``"observer 'mse'"``)."""
        if not isinstance(data, Mapping):
            raise QuantizationError(f"{what} options must be a mapping, got {data!r}")
        known = sorted(f.name for f in fields(cls))
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise QuantizationError(f"unknown {what} option key(s) {unknown}; known keys: {known}")
        return cls(**data)


def check_int(value: Any, name: str, lowest: int, highest: float = math.inf) -> int:
    """``value`` if it is an integer in ``[lowest, highest]`` (bool excluded), else raise naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
        bound = f">= {lowest}" if highest == math.inf else f"in [{lowest}, {highest}]"
        raise QuantizationError(f"{name} must be an integer {bound}, got {value!r}")
    return value


def check_number(value: Any, name: str, valid: Callable[[float], bool], requirement: str) -> float:
    """``float(value)`` if it is a finite int/float satisfying ``valid``, else raise naming it."""
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not math.isfinite(number) or not valid(number):
        raise QuantizationError(f"{name} must be {requirement}, got {value!r}")
    return number
