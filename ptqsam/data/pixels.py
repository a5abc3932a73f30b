"""Decoded images as 8-bit RGB: the same picture, or a refusal, never a wrong image.

What each Pillow mode becomes:

- ``1``, ``L``, ``LA``, ``La``, ``P``, ``PA``, ``RGB``, ``RGBA``, ``RGBa``, ``RGBX``, ``CMYK``,
  ``YCbCr``, ``LAB``, ``HSV``: Pillow's own conversion to RGB (checked against the colour-space
  formulas in the tests). Alpha is dropped: the colour as stored (premultiplied modes are
  unpremultiplied first), as OpenCV and SAM's own demo read such files.
- ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit grey): ``round(v / 257)``, so 0..65535 maps
  onto 0..255 (Pillow's own conversion clips everything above 255 to white).
- ``I`` (32-bit integer grey, e.g. a 16-bit TIFF or PNG read by another decoder): read as 16-bit
  values; an image with a value outside [0, 65535] is refused.
- ``F`` (32-bit float grey): read as values in [0, 1], ``round(255 v)``; an image with a value
  outside [0, 1] (or NaN) is refused, as no scale is implied.

Any other mode is refused. A refusal raises :class:`UnsupportedImage`; datasets skip and count it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ptqsam.errors import DataError

#: modes whose conversion to RGB Pillow does exactly
PILLOW_RGB_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                              "LAB", "HSV"})
#: 16-bit grey modes
UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class UnsupportedImage(DataError):
    """An image whose mode or values have no faithful 8-bit RGB form."""


def rgb8(image: Image.Image) -> np.ndarray:
    """``image`` as uint8 RGB of shape (height, width, 3) (see the module docstring)."""
    mode = image.mode
    if mode == "La":  # Pillow has no La -> RGB conversion; unpremultiply first
        image = image.convert("LA")
    if mode in PILLOW_RGB_MODES:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if mode in UINT16_MODES:
        return _grey(np.asarray(image).astype(np.float64) / 257.0)
    if mode == "I":
        values = np.asarray(image).astype(np.float64)
        _check_range(values, 0.0, 65535.0, mode)
        return _grey(values / 257.0)
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        _check_range(values, 0.0, 1.0, mode)
        return _grey(values * 255.0)
    raise UnsupportedImage(f"image mode {mode!r} has no faithful 8-bit RGB form")


def _check_range(values: np.ndarray, low: float, high: float, mode: str) -> None:
    if values.size and not (np.isfinite(values).all() and values.min() >= low and values.max() <= high):
        raise UnsupportedImage(f"mode {mode!r} image with values outside [{low:g}, {high:g}]: its scale is unknown")


def _grey(levels: np.ndarray) -> np.ndarray:
    """Grey levels on 0..255 (float) -> uint8 RGB."""
    grey = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
