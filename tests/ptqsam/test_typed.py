"""Typed dataclass fields: values checked against their annotations and metadata bounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import pytest

from ptqsam.errors import ConfigError
from ptqsam.typed import check_fields


@dataclass(frozen=True)
class Toy:
    count: int = field(default=1, metadata={"min": 1})
    ratio: float = 0.5
    flag: bool = True
    name: str | None = None
    names: tuple[str, ...] = field(default=("a",), metadata={"choices": ("a", "b")})
    paths: Mapping[str, str] = field(default_factory=dict)
    anything: Any = None

    def __post_init__(self) -> None:
        check_fields(self, ConfigError, "toy")


def test_valid_values_pass():
    Toy(count=3, ratio=1, flag=False, name="x", names=["a", "b"], paths={"k": "v"}, anything=[object()])


@pytest.mark.parametrize("changes, message", [
    ({"count": True}, "toy count must be an integer, got True"),
    ({"count": 1.0}, "toy count must be an integer"),
    ({"count": 0}, "toy count must be >= 1, got 0"),
    ({"ratio": float("nan")}, "toy ratio must be a finite number"),
    ({"ratio": "0.5"}, "toy ratio must be a finite number"),
    ({"flag": "no"}, "toy flag must be true or false, got 'no'"),
    ({"flag": 1}, "toy flag must be true or false"),
    ({"name": 3}, "toy name must be a string or null"),
    ({"names": "a"}, "toy names must be a list of strings"),
    ({"names": ["a", 2]}, "toy names must be a list of strings"),
    ({"names": ["a", "c"]}, "toy names must be one of ['a', 'b'], got 'c'"),
    ({"paths": "x.pth"}, "toy paths must be a mapping of strings to strings"),
    ({"paths": {"k": None}}, "toy paths must be a mapping of strings to strings"),
])
def test_wrong_types_and_ranges_are_named(changes, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Toy(**changes)
