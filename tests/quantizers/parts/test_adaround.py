"""AdaRound: the soft rounding starts at the float weight, hardens to grid values, and its
hardened rounding at the start is round-to-nearest."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantizers import Granularity, QuantSpec, build_quantizer
from quantizers.errors import QuantizationError
from quantizers.parts.adaround import (AdaRoundRounding, FixedRounding, initial_logits, rectified_sigmoid,
                                       rounding_regulariser)

CHANNEL = Granularity("channel", 0)


def _weight_quantizer(weight: torch.Tensor, bits: int, symmetric: bool):
    quantizer = build_quantizer(QuantSpec(bits=bits, symmetric=symmetric, granularity=CHANNEL))
    quantizer.observe(weight)
    quantizer.finalize()
    return quantizer


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bits=st.sampled_from([2, 3, 4, 8]), symmetric=st.booleans())
def test_soft_rounding_starts_at_the_float_weight_and_hardens_to_round_to_nearest(seed, bits, symmetric):
    weight = torch.randn(6, 10, generator=torch.Generator().manual_seed(seed))
    quantizer = _weight_quantizer(weight, bits, symmetric)
    nearest = quantizer.fake_quantize(weight)  # calibrated, round-to-nearest
    part = quantizer.start_adaround(weight)
    soft = quantizer.fake_quantize(weight)
    qmin, qmax = quantizer.qrange
    index = weight * (1.0 / quantizer.scale[:, None]) + quantizer.zero_point[:, None]
    inside = (index >= qmin) & (index <= qmax)  # the zero point's rounding may push the extremes out
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(soft[inside], weight[inside], rtol=0, atol=1e-5 * float(weight.abs().max()))
    quantizer.harden()
    assert isinstance(quantizer.rounding, FixedRounding)
    hard = quantizer.fake_quantize(weight)
    v = weight * (1.0 / quantizer.scale[:, None])
    tie = (v - torch.floor(v) - 0.5).abs() < 1e-6  # exact halves (the extremes of a symmetric grid):
    assert torch.equal(hard[~tie], nearest[~tie])  # h = [V >= 0] = [frac >= 0.5] rounds them up, not to even
    assert quantizer.parts() == {"rounding": "fixed"}
    assert part.logits.shape == (6, 10)


def test_hardened_rounding_gives_only_grid_values_after_learning():
    weight = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    quantizer = _weight_quantizer(weight, 3, symmetric=False)
    part = quantizer.start_adaround(weight)
    with torch.no_grad():
        part.logits.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(2))  # an arbitrary learned state
    quantizer.harden()
    hard = quantizer.fake_quantize(weight)
    scale, zero = quantizer.scale[:, None], quantizer.zero_point[:, None].float()
    codes = hard / scale + zero
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.min() >= 0 and codes.max() <= 7
    # every element is its floor or its floor + 1 on the grid (before clamping)
    v = weight * (1.0 / scale)
    offset = torch.clamp(torch.floor(v) + zero, 0, 7) - zero
    assert bool(((codes - zero - offset).round().abs() <= 1).all())


def test_rectified_sigmoid_inverts_and_regulariser_vanishes_at_hard_values():
    fraction = torch.linspace(0.0, 0.999, 50)
    torch.testing.assert_close(rectified_sigmoid(initial_logits(fraction)), fraction, rtol=0, atol=1e-6)
    assert float(rounding_regulariser(torch.tensor([0.0, 1.0, 1.0]), beta=5.0)) == 0.0
    assert float(rounding_regulariser(torch.tensor([0.5]), beta=2.0)) == pytest.approx(1.0)


def test_adaround_gradients_reach_the_logits_and_shapes_are_checked():
    weight = torch.randn(3, 5)
    quantizer = _weight_quantizer(weight, 4, symmetric=True)
    part = quantizer.start_adaround(weight)
    quantizer.fake_quantize(weight).square().sum().backward()
    assert part.logits.grad is not None and float(part.logits.grad.abs().sum()) > 0
    with pytest.raises(QuantizationError, match="set up for"):
        AdaRoundRounding(torch.zeros(2, 2))(torch.zeros(3, 3))
    with pytest.raises(QuantizationError, match="calibrated"):
        build_quantizer(QuantSpec(granularity=CHANNEL)).start_adaround(weight)


def test_a_hardened_rounding_saves_and_loads_with_the_quantizer():
    weight = torch.randn(5, 7)
    quantizer = _weight_quantizer(weight, 3, symmetric=True)
    quantizer.start_adaround(weight)
    with torch.no_grad():
        quantizer.rounding.logits.uniform_(-2, 2, generator=torch.Generator().manual_seed(0))
    quantizer.harden()
    fresh = build_quantizer(quantizer.spec)
    fresh.use_parts(quantizer.parts())
    fresh.load_state_dict(quantizer.state_dict())
    assert torch.equal(fresh.fake_quantize(weight), quantizer.fake_quantize(weight))
