"""What a calibrated quantizer can output (its grid), as it describes itself for plots."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class GridLevels:
    """Representable values of one calibrated quantizer.

    Arguments:
      kind: the quantizer kind that drew the grid (``"uniform"``, ``"log"``, ``"twin"``, ...).
      levels: named sets of representable values (float32, ascending): ``"levels"`` for a
        per-tensor uniform or a log quantizer (the log set holds the zero code's 0), ``"low range"``
        and ``"high range"`` for a twin quantizer; empty for a per-channel (or per-group) uniform
        quantizer, whose grid differs from channel to channel.
      clip: lowest and highest representable value (per channel: the widest over the channels).
      description: the parameters in one line (bits, Δ and z; τ and s; split and both Δ).
      split: two-range grids only: inputs below it use the low range.
      log_axis: the grid is best seen on a logarithmic axis (log and post-softmax twin quantizers).
    """

    kind: str
    levels: dict[str, np.ndarray] = field(repr=False)
    clip: tuple[float, float]
    description: str
    split: float | None = None
    log_axis: bool = False
