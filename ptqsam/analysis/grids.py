"""The values a calibrated quantizer can output (its grid), for drawing over a histogram."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ptqsam.errors import AnalysisError
from quantizers.modules.base import Quantizer
from quantizers.modules.log import LogQuantizer
from quantizers.modules.twin import TwinGeluQuantizer, TwinSoftmaxQuantizer
from quantizers.modules.uniform import UniformQuantizer


@dataclass(frozen=True, eq=False)
class GridLevels:
    """Representable values of one calibrated quantizer.

    Arguments:
      kind: ``"uniform"``, ``"log"`` or ``"twin"``.
      levels: named sets of representable values (float32, ascending): ``"levels"`` for a
        per-tensor uniform or a log quantizer (the log set holds the zero code's 0), ``"low range"``
        and ``"high range"`` for a twin quantizer; empty for a per-channel (or per-group) uniform
        quantizer, whose grid differs from channel to channel.
      clip: lowest and highest representable value (per channel: the widest over the channels).
      description: the parameters in one line (bits, Δ and z; τ and s; split and both Δ).
      split: twin only: inputs below it use the low range.
      log_axis: the grid is best seen on a logarithmic axis (log and post-softmax twin quantizers).
    """

    kind: str
    levels: dict[str, np.ndarray] = field(repr=False)
    clip: tuple[float, float]
    description: str
    split: float | None = None
    log_axis: bool = False


def grid_levels(quantizer: Quantizer) -> GridLevels:
    """The grid of a calibrated uniform, log or twin quantizer."""
    if not quantizer.is_calibrated:
        raise AnalysisError(f"{type(quantizer).__name__} is not calibrated: it has no grid yet")
    if isinstance(quantizer, UniformQuantizer):
        return _uniform(quantizer)
    if isinstance(quantizer, LogQuantizer):
        return _log(quantizer)
    if isinstance(quantizer, (TwinSoftmaxQuantizer, TwinGeluQuantizer)):
        return _twin(quantizer)
    raise AnalysisError(f"no grid is known for quantizer type {type(quantizer).__name__}")


def _uniform(quantizer: UniformQuantizer) -> GridLevels:
    qmin, qmax = quantizer.qrange
    scale = quantizer.scale.detach().cpu().numpy().astype(np.float32).reshape(-1)
    zero_point = quantizer.zero_point.detach().cpu().numpy().astype(np.int64).reshape(-1)
    # torch's fake_quantize computes (q − z)·Δ in float32
    lowest = (np.float32(qmin) - zero_point.astype(np.float32)) * scale
    highest = (np.float32(qmax) - zero_point.astype(np.float32)) * scale
    clip = (float(lowest.min()), float(highest.max()))
    bits = quantizer.spec.bits
    if scale.size > 1:
        groups = f"{scale.size} {quantizer.spec.granularity.kind}s"
        return GridLevels("uniform", {}, clip, f"uniform {bits}-bit, per {quantizer.spec.granularity.kind} ({groups})")
    codes = np.arange(qmin, qmax + 1, dtype=np.int64)
    levels = (codes - zero_point[0]).astype(np.float32) * scale[0]
    description = f"uniform {bits}-bit, Δ={scale[0]:.4g}, z={zero_point[0]}"
    return GridLevels("uniform", {"levels": levels}, clip, description)


def _log(quantizer: LogQuantizer) -> GridLevels:
    grid = quantizer.grid
    levels = np.sort(grid.levels.cpu().numpy())
    description = f"log {grid.bits}-bit, levels s·2^(−q/τ), τ={grid.tau:g}, s={grid.scale:.4g}"
    return GridLevels("log", {"levels": levels}, (0.0, float(levels[-1])), description, log_axis=True)


def _twin(quantizer: TwinSoftmaxQuantizer | TwinGeluQuantizer) -> GridLevels:
    grid = quantizer.grid
    index = np.arange(grid.qmax + 1, dtype=np.float32)
    low = np.sort(index * np.float32(grid.scale_low))
    # an input >= split gets index round(x/Δ_high) (half to even), so the high range starts there
    first_high = int(np.rint(np.float32(grid.split) * (np.float32(1.0) / np.float32(grid.scale_high))))
    high = index[min(first_high, grid.qmax):] * np.float32(grid.scale_high)
    levels = {"low range": low, "high range": high}
    clip = (float(min(low[0], high[0])), float(max(low[-1], high[-1])))
    description = (f"twin {grid.bits}-bit, split={grid.split:.4g}, "
                   f"Δ_low={abs(grid.scale_low):.4g}, Δ_high={grid.scale_high:.4g}")
    return GridLevels("twin", levels, clip, description, split=grid.split,
                      log_axis=isinstance(quantizer, TwinSoftmaxQuantizer))
