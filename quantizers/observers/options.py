"""Reading and validating an observer's numeric options from its spec."""

from __future__ import annotations

from typing import Callable

from quantizers.errors import QuantizationError
from quantizers.spec import QuantSpec


def numeric_option(
    spec: QuantSpec,
    name: str,
    default: float,
    valid: Callable[[float], bool],
    requirement: str,
    integer: bool = False,
) -> float:
    """``spec.observer_options[name]`` (or ``default``), checked by ``valid``.

    Arguments:
      spec: the spec whose ``observer_options`` hold the value.
      name: the option key.
      default: the value when the option is absent.
      valid: predicate the value must satisfy.
      requirement: what ``valid`` demands, in words, for the error message.
      integer: whether the option must be an integer.
    """
    value = spec.observer_options.get(name, default)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not valid(value):
        raise QuantizationError(f"{spec.observer} option {name!r} must be {requirement}, got {value!r}")
    return value
