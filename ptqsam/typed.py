"""Typed fields: a dataclass's values checked against its own annotations when it is created.

:func:`check_fields` compares every field of a dataclass instance with its type annotation
(``int``, ``float``, ``bool``, ``str``, ``X | None``, ``tuple[X, ...]``, ``Mapping[K, V]``, a
class, ``Any``) and with the bounds in its field metadata (``min``: lowest value; ``choices``:
allowed values, of the field or of each element of a tuple). A YAML ``quantize_encoder: "no"``, a
``bits: 8`` or an ``out: [a, b]`` is then an error naming the field, not a value silently read
another way. ``bool`` is never accepted as a number, nor a number as a ``bool``.
"""

from __future__ import annotations

import collections.abc
import math
import types
import typing
from dataclasses import fields
from typing import Any, Mapping

from ptqsam.errors import ConfigError, PtqsamError


def check_fields(obj: Any, error: type[PtqsamError], what: str) -> None:
    """Raise ``error`` naming the first field of the dataclass ``obj`` whose value does not have
    its annotated type or lies outside its metadata bounds (``what`` starts the message)."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value, expected = getattr(obj, f.name), hints[f.name]
        if not conforms(value, expected):
            raise error(f"{what} {f.name} must be {describe(expected)}, got {_show(value)}")
        low, high, choices = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("choices")
        if low is not None and value is not None and value < low:
            raise error(f"{what} {f.name} must be >= {low}, got {_show(value)}")
        if high is not None and value is not None and value > high:
            raise error(f"{what} {f.name} must be <= {high}, got {_show(value)}")
        if choices is not None and value is not None:
            bad = [v for v in (value if isinstance(value, (list, tuple)) else [value]) if v not in choices]
            if bad:
                raise error(f"{what} {f.name} must be one of {list(choices)}, got {_show(bad[0])}")


def conforms(value: Any, expected: Any) -> bool:
    """Whether ``value`` has the type ``expected`` (an annotation, see the module docstring)."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, arg) for arg in args)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(conforms(v, args[0]) for v in value)
    if origin in (collections.abc.Mapping, dict):
        return isinstance(value, collections.abc.Mapping) and all(
            conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
    return isinstance(value, expected)


def describe(expected: Any) -> str:
    """Words for an annotation: ``"an integer"``, ``"a list of strings"``, ``"a string or null"``."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is tuple:
        return f"a list of {_plural(args[0])}"
    if origin in (collections.abc.Mapping, dict):
        return f"a mapping of {_plural(args[0])} to {_plural(args[1])}"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(
        expected, f"a {getattr(expected, '__name__', expected)}")


def _plural(expected: Any) -> str:
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(
        expected, describe(expected))


def _show(value: Any) -> str:
    text = repr(value)
    return f"{text[:77]}..." if len(text) > 80 else text


def reject_unknown_keys(data: Any, cls: type, what: str, error: type[PtqsamError] = ConfigError) -> None:
    """Raise ``error`` unless ``data`` is a mapping whose keys are all fields of dataclass ``cls``."""
    if not isinstance(data, Mapping):
        raise error(f"{what} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"unknown {what} key(s) {unknown}; known keys: {sorted(known)}")
