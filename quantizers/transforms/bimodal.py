"""Bimodal sign fold (PTQ4SAM "BIG"): detect a two-peaked activation, fold per-channel signs.

When each channel of a key projection's output sits around ``+μ`` or ``−μ``, the tensor is bimodal
and a per-tensor quantizer wastes half its grid on the gap. Multiplying output channel ``c`` of both
the query and key projections by ``γ_c = sign(mean K[..., c])`` moves every channel to the positive
side and leaves ``q·k = Σ_c γ_c² q_c k_c`` unchanged, per head too. Detection, signs and folding are
independent functions; which observer then quantizes K is not decided here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import find_peaks
from scipy.stats import gaussian_kde
from torch import nn

from quantizers.errors import QuantizationError
from quantizers.functional.checks import check_tensor
from quantizers.options import check_int, check_number


@dataclass(frozen=True)
class BimodalConfig:
    """How :func:`detect_bimodal` decides (defaults: PTQ4SAM's).

    Arguments:
      grid_points: points between min and max where the density is evaluated.
      height_fraction: a peak must reach this fraction of the summed density.
      min_distance: minimum distance between peaks, in grid points.
      max_values: at most this many values (drawn without replacement) feed the KDE.
      seed: seed of that draw.
    """

    grid_points: int = 128
    height_fraction: float = 0.01
    min_distance: int = 32
    max_values: int = 20000
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.grid_points, "grid_points", 3)
        for name in ("min_distance", "max_values"):
            check_int(getattr(self, name), name, 1)
        check_int(self.seed, "seed", 0)
        check_number(self.height_fraction, "height_fraction", lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


@dataclass(frozen=True, eq=False)
class BimodalResult:
    """Outcome of :func:`detect_bimodal`.

    Arguments:
      is_bimodal: exactly two peaks were found.
      peaks: the values at which the peaks lie, ascending.
      grid: the evaluation points (float64 array), for plotting.
      density: the KDE at ``grid``.
    """

    is_bimodal: bool
    peaks: tuple[float, ...]
    grid: np.ndarray
    density: np.ndarray


def detect_bimodal(x: torch.Tensor, config: BimodalConfig = BimodalConfig(),
                   value_range: tuple[float, float] | None = None) -> BimodalResult:
    """Gaussian KDE of the flattened values of ``x`` and its peaks; bimodal iff exactly two peaks.

    The density is evaluated at ``grid_points`` points from the smallest to the largest value:
    those of all of ``x`` (not of the KDE's sample: the grid's ends set what ``min_distance``
    means), or ``value_range`` when ``x`` is itself a sample of the data. Peaks need height
    ``>= height_fraction · Σ density`` and ``min_distance`` grid points between them.
    Deterministic for a given ``config.seed``.
    """
    check_tensor(x, "tensor to test for bimodality")
    values = x.detach().reshape(-1).to(torch.float64)
    low, high = value_range if value_range is not None else (float(values.min()), float(values.max()))
    if values.numel() > config.max_values:
        generator = torch.Generator().manual_seed(config.seed)
        values = values[torch.randperm(values.numel(), generator=generator)[: config.max_values]]
    values = values.cpu().numpy()
    if values.size < 2 or values.min() == values.max():
        raise QuantizationError("bimodality needs at least two distinct values (the sample is constant)")
    if not low <= values.min() <= values.max() <= high:
        raise QuantizationError(f"value_range {value_range} does not hold the values ({values.min()} … {values.max()})")
    grid = np.linspace(low, high, config.grid_points)
    density = gaussian_kde(values)(grid)
    peaks, _ = find_peaks(density, height=config.height_fraction * density.sum(), distance=config.min_distance)
    return BimodalResult(len(peaks) == 2, tuple(float(v) for v in grid[peaks]), grid, density)


def channel_signs(k: torch.Tensor, channel_axis: int = -1) -> torch.Tensor:
    """``γ_c = sign(mean of k over every axis but channel_axis)`` as float32 ±1; a zero mean gives +1."""
    check_tensor(k, "key tensor")
    if not -k.dim() <= channel_axis < k.dim():
        raise QuantizationError(f"channel_axis {channel_axis} is out of range for a {k.dim()}-D tensor")
    axis = channel_axis % k.dim()
    dims = [d for d in range(k.dim()) if d != axis]
    mean = k.detach().float().mean(dim=dims) if dims else k.detach().float()
    return torch.where(mean < 0, -1.0, 1.0)


@torch.no_grad()
def fold_signs(q_proj: nn.Linear, k_proj: nn.Linear, signs: torch.Tensor) -> None:
    """In place: ``W ← diag(γ) W``, ``b ← γ ⊙ b`` for both projections (attention logits unchanged).

    Arguments:
      q_proj, k_proj: float ``nn.Linear`` producing queries and keys (same ``out_features``).
      signs: ``γ``, one ±1 per output channel (see :func:`channel_signs`).
    """
    for proj in (q_proj, k_proj):
        if not isinstance(proj, nn.Linear) or not proj.weight.is_floating_point():
            raise QuantizationError(f"fold_signs needs float nn.Linear projections, got {type(proj).__name__}")
    if signs.shape != (k_proj.out_features,) or q_proj.out_features != k_proj.out_features:
        raise QuantizationError(
            f"need one sign per channel: signs {tuple(signs.shape)}, q_proj out {q_proj.out_features}, "
            f"k_proj out {k_proj.out_features}"
        )
    if not bool(((signs == 1) | (signs == -1)).all()):
        raise QuantizationError("signs must all be +1 or -1 (a 0 would zero a channel)")
    for proj in (q_proj, k_proj):
        gamma = signs.to(device=proj.weight.device, dtype=proj.weight.dtype)
        proj.weight.mul_(gamma[:, None])
        if proj.bias is not None:
            proj.bias.mul_(gamma)


__all__ = ["BimodalConfig", "BimodalResult", "channel_signs", "detect_bimodal", "fold_signs"]
