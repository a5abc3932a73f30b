"""Validating JSON input (annotations, detections, results): readers and checks that name the file
and the entry at fault."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ptqsam.errors import DataError


def read_json(path: Path, what: str) -> Any:
    """Parse the JSON file ``path``; a missing or non-JSON file raises DataError naming it."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{what} {path} is not valid JSON: {err}") from err


def is_int(value: Any) -> bool:
    """True for Python/numpy integers (bool excluded)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for finite ints and floats (bool excluded)."""
    return (is_int(value) or isinstance(value, (float, np.floating))) and math.isfinite(value)


BOX_EXPECTED = "a list of 4 finite numbers [x, y, w, h]"


def is_box(value: Any) -> bool:
    """True for a COCO box: a list of 4 finite numbers."""
    return isinstance(value, list) and len(value) == 4 and all(map(is_number, value))


class EntryChecker:
    """Raises DataError naming the file and the entry for a malformed field.

    Arguments:
      prefix: what the message starts with, e.g. ``"malformed annotations file PATH"``.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def fail(self, where: str, problem: str) -> None:
        """Raise DataError for ``where`` (an entry) with ``problem``."""
        raise DataError(f"{self.prefix}: {where}: {problem}")

    def list_of_dicts(self, data: dict, key: str) -> list[dict]:
        if key not in data:
            self.fail("top level", f"missing key {key!r}")
        entries = data[key]
        if not isinstance(entries, list):
            self.fail(key, f"must be a list, got {type(entries).__name__}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                self.fail(f"{key}[{i}]", f"must be an object, got {type(entry).__name__}")
        return entries

    def require(self, entry: dict, where: str, key: str, test: Callable[[Any], bool], expected: str) -> Any:
        """``entry[key]`` if present and passing ``test``, else raise saying it must be ``expected``."""
        if key not in entry:
            self.fail(where, f"missing key {key!r}")
        if not test(entry[key]):
            self.fail(where, f"{key!r} must be {expected}, got {entry[key]!r:.80}")
        return entry[key]

    def unique_ids(self, entries: list[dict], key: str) -> None:
        seen: set[int] = set()
        for i, entry in enumerate(entries):
            if entry["id"] in seen:
                self.fail(f"{key}[{i}]", f"duplicate id {entry['id']}")
            seen.add(entry["id"])
