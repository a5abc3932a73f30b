"""Channel-aware grouping (AHCPTQ's CAG): per-channel activation qparams that reconstruction merges,
step by step, into a few groups sharing one (scale, zero point) each."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from quantizers.errors import QuantizationError
from quantizers.functional.kmeans import kmeans
from quantizers.levels import GridLevels
from quantizers.modules.uniform import UniformQuantizer
from quantizers.options import Options, check_int
from quantizers.registry import register_quantizer
from quantizers.spec import QuantSpec


@dataclass(frozen=True)
class ChannelGroupOptions(Options):
    """``groups``: the final number of groups g (AHCPTQ: 4); ``milestones``: fractions of the
    reconstruction's iterations at which channels are regrouped (AHCPTQ: 0.2, 0.4, 0.6, 0.8), the
    i-th of n into ``g·2^(n−1−i)`` groups (32, 16, 8, 4); ``seed``: the k-means start."""

    groups: int = 4
    milestones: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.groups, "channel_groups option 'groups'", 1)
        check_int(self.seed, "channel_groups option 'seed'", 0)
        values = self.milestones
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise QuantizationError(f"channel_groups milestones must be a list of numbers, got {values!r}")
        fractions = tuple(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
                          for v in values)
        if not fractions or not all(0.0 <= f < 1.0 for f in fractions) or list(fractions) != sorted(set(fractions)):
            raise QuantizationError(f"channel_groups milestones must be increasing numbers in [0, 1), got {values!r}")
        object.__setattr__(self, "milestones", fractions)


@register_quantizer("channel_groups", ChannelGroupOptions)
class ChannelGroupQuantizer(UniformQuantizer):
    """A per-channel affine quantizer whose channels share ``(scale, zero_point)`` pairs by group:
    ``channel_group[c]`` names channel c's pair. Calibration gives every channel its own pair (its
    observer's per-channel qparams); at each milestone of a reconstruction, k-means over the
    channels' current ``(scale, zero_point)`` (raw values, as AHCPTQ's code clusters them) merges
    them into fewer groups, each taking its cluster's mean scale and rounded mean zero point, until
    ``groups`` remain. The learned scales are per group. Without a reconstruction (nothing calls
    the milestones) it stays a per-channel quantizer.

    Arguments:
      spec: ``quantizer="channel_groups"`` spec with per-channel granularity (the channel axis is
        usually -1: the features of a Linear's input).
    """

    GRANULARITIES = ("channel",)

    def __init__(self, spec: QuantSpec, observer=None) -> None:
        super().__init__(spec, observer)
        self.options = spec.quantizer_config
        self.register_buffer("channel_group", torch.empty(0, dtype=torch.int64))

    @property
    def num_groups(self) -> int:
        """How many (scale, zero_point) pairs the channels share now."""
        return self.scale.numel()

    def _finalize(self) -> None:
        super()._finalize()
        self.channel_group = torch.arange(self.scale.numel(), device=self.scale.device)

    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        super().set_qparams(scale, zero_point)
        self.channel_group = torch.arange(self.scale.numel(), device=self.scale.device)

    def group_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale[self.channel_group], self.zero_point[self.channel_group]

    def _qparam_sources(self) -> tuple[torch.Tensor, ...]:
        return self.scale, self.zero_point, self.channel_group

    def _lsq_factor(self, x: torch.Tensor, qmax: int) -> torch.Tensor:
        # a channel's entry is its group's scale, which quantizes every channel of the group (the
        # gather sums the channels' gradients into it: a per-channel N would scale it by √size)
        sizes = torch.bincount(self.channel_group, minlength=self.num_groups).to(torch.float32)
        return 1.0 / torch.sqrt(self._elements_per_scale(x) * sizes[self.channel_group] * qmax)

    def milestones(self) -> tuple[float, ...]:
        return self.options.milestones

    def at_milestone(self, index: int) -> None:
        count = len(self.options.milestones)
        if not 0 <= index < count:
            super().at_milestone(index)
        self.regroup(min(self.options.groups * 2 ** (count - 1 - index), self.channel_group.numel()))

    @torch.no_grad()
    def regroup(self, groups: int) -> None:
        """Cluster the channels' current pairs into ``groups`` groups (k-means, seeded); each group
        takes the mean scale and the rounded mean zero point of its channels. Learnable qparams stay
        learnable (as new parameters)."""
        if not self.is_calibrated:
            raise QuantizationError("regroup() needs calibrated qparams")
        scale, zero_point = self.group_qparams()
        features = torch.stack([scale.detach().double(), zero_point.detach().double()], dim=1)
        labels, centres = kmeans(features, groups, self.options.seed)
        qmin, qmax = self.qrange
        device = self.scale.device
        new = {"scale": centres[:, 0].float().to(device),
               "zero_point": torch.round(centres[:, 1]).clamp(qmin, qmax).to(device)}
        for name, value in new.items():
            if name in self._parameters:
                del self._parameters[name]
                setattr(self, name, nn.Parameter(value.float()))
            else:
                setattr(self, name, value.to(self._buffers[name].dtype))
        self.channel_group = labels.to(device)

    def levels(self) -> GridLevels:
        grid = super().levels()
        description = (f"uniform {self.spec.bits}-bit, {self.channel_group.numel()} channels in "
                       f"{self.num_groups} groups")
        return GridLevels(grid.kind, grid.levels, grid.clip, description)

    def _parameter_summary(self) -> str:
        return f"groups={self.num_groups} " + super()._parameter_summary()
