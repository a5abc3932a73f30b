"""Hybrid log-uniform grid (HLUQ): the levels formula, and every value mapped to the nearest level
of its own region (the reference code collapses part of the uniform region)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantizers.errors import QuantizationError
from quantizers.functional.hybrid import hybrid_fake_quantize, hybrid_levels, hybrid_scales, hybrid_split


def test_levels_follow_the_formula():
    s_log, s_uni = hybrid_scales(8.0, 0.3, 0.25, 4)
    assert s_log == pytest.approx(2.4) and s_uni == pytest.approx(8.0 * 0.7 / (15 * 0.75))
    levels = hybrid_levels(s_log, s_uni, 4, 0.25)
    assert hybrid_split(4, 0.25) == (4, 12)
    expected = [0.0] + [s_log * 2.0 ** -k for k in (3, 2, 1, 0)] + [s_log + j * s_uni for j in range(1, 12)]
    assert levels.tolist() == pytest.approx(expected)
    assert len(set(levels.tolist())) == 16  # 2^b distinct values: s_log is both the top log and the first uniform level
    assert float(levels[-1]) < 8.0  # the top level lies slightly below the range, as the formula gives


@pytest.mark.parametrize("bits, rate", [(4, 0.3), (2, 0.125), (3, 1.0)])
def test_a_grid_rate_that_does_not_split_the_codes_is_refused(bits, rate):
    with pytest.raises(QuantizationError, match="grid rate"):
        hybrid_split(bits, rate)


def test_uniform_values_far_above_the_log_region_keep_their_value():
    # methods.md: the reference maps 4.5, 6 and 9 to m + s_log = 2.581 (whole-tensor zero mask)
    x = torch.tensor([-0.17, -0.1, 0.0, 0.5, 1.0, 2.5, 4.5, 6.0, 9.0])
    s_log, s_uni = hybrid_scales(9.17, 0.3, 0.25, 4)
    x_hat = hybrid_fake_quantize(x, torch.tensor(-0.17), torch.tensor(s_log), torch.tensor(s_uni), 4, 0.25)
    assert x_hat[-3:].tolist() == pytest.approx([4.2927, 6.0045, 8.8574], abs=1e-4)
    assert x_hat[:3].tolist() == pytest.approx([-0.17] * 3)  # at or below m: the zero level


def _region_levels(s_log: float, s_uni: float, bits: int, g: float) -> tuple[torch.Tensor, torch.Tensor]:
    log_codes, uni_codes = hybrid_split(bits, g)
    log = torch.tensor([0.0] + [s_log * 2.0 ** -k for k in range(log_codes)], dtype=torch.float64)
    uni = torch.tensor([s_log + j * s_uni for j in range(uni_codes)], dtype=torch.float64)
    return log, uni


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bits=st.sampled_from([3, 4, 6, 8]), g=st.sampled_from([0.125, 0.25, 0.5]),
       r=st.floats(0.05, 0.6), spread=st.floats(1e-2, 1e3), shift=st.floats(-10, 10))
def test_every_value_maps_to_the_nearest_level_of_its_own_region(seed, bits, g, r, spread, shift):
    generator = torch.Generator().manual_seed(seed)
    x = shift + spread * torch.rand(2000, generator=generator) ** 3 * 1.1 - 0.05 * spread
    s_log, s_uni = hybrid_scales(spread, r, g, bits)
    x_hat = hybrid_fake_quantize(x, torch.tensor(shift), torch.tensor(s_log), torch.tensor(s_uni), bits, g)
    u, u_hat = (x - torch.tensor(shift)).double(), (x_hat - torch.tensor(shift)).double()  # as computed inside
    log, uni = _region_levels(s_log, s_uni, bits, g)
    in_log = u <= torch.tensor(s_log, dtype=torch.float32).double()
    for mask, levels in ((in_log, log), (~in_log, uni)):
        distance = (u[mask, None] - levels[None, :]).abs()
        chosen = (u_hat[mask, None] - levels[None, :]).abs().min(dim=1).values
        tolerance = 1e-5 * (spread + abs(shift))
        assert bool((chosen <= tolerance).all())  # a level of its own region
        assert bool(((u_hat[mask] - u[mask]).abs() <= distance.min(dim=1).values + tolerance).all())  # the nearest


def test_the_scales_receive_straight_through_gradients():
    x = torch.linspace(0, 10, 101)
    s_log = torch.tensor(2.0, requires_grad=True)
    s_uni = torch.tensor(0.5, requires_grad=True)
    hybrid_fake_quantize(x, torch.tensor(0.0), s_log, s_uni, 4, 0.25).sum().backward()
    assert float(s_uni.grad) != 0.0  # LSQ-style through the uniform part
    assert float(s_log.grad) > 0.0  # from the values clipped at the top of the uniform grid
