"""Bit-width labels: ``"W4A8"`` means 4-bit weights and 8-bit activations."""

from __future__ import annotations

import re
from typing import Any, Iterable

from ptqsam.errors import RecipeError
from quantizers import QuantizationError
from quantizers.spec import check_bits

_LABEL = re.compile(r"w(\d+)a(\d+)", re.IGNORECASE)


def parse_bits(text: str) -> tuple[int, int]:
    """``"W4A8" -> (4, 8)`` (case-insensitive); bad formats or impossible bits raise RecipeError.

    >>> from ptqsam import parse_bits
    >>> parse_bits("W4A8")
    (4, 8)
    """
    match = _LABEL.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise RecipeError(f"bit-widths must look like 'W8A8', got {text!r}")
    return check_bit_width(int(match[1]), "weight bits"), check_bit_width(int(match[2]), "activation bits")


def parse_bits_list(text: str) -> list[tuple[int, int]]:
    """A comma list of labels (``"W4A4,W8A8"``, as ``--bits`` takes) as bits; empty items are skipped.

    >>> parse_bits_list("W4A4, W8A8")
    [(4, 4), (8, 8)]
    """
    return [parse_bits(label) for label in text.split(",") if label.strip()]


def check_bit_width(bits: Any, what: str) -> int:
    """``bits`` if it is a possible bit-width, else RecipeError naming ``what``."""
    try:
        return check_bits(bits)
    except QuantizationError as error:
        raise RecipeError(f"{what}: {error}") from None


def bits_label(w_bits: int, a_bits: int) -> str:
    """``(4, 8) -> "W4A8"``.

    >>> from ptqsam import bits_label
    >>> bits_label(4, 8)
    'W4A8'
    """
    return f"W{w_bits}A{a_bits}"


def normal_bits(text: str) -> str:
    """The canonical label of ``text`` (``" w4a4 " -> "W4A4"``)."""
    return bits_label(*parse_bits(text))


def bits_order(labels: Iterable[str]) -> list[str]:
    """The distinct canonical labels ordered by (weight, activation) bits: W4A4 < W6A6 < W8A4 < W8A8."""
    return sorted({normal_bits(label) for label in labels}, key=parse_bits)
