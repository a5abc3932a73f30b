"""Learnable parts of the uniform quantizer (LSQ scale, swappable rounding) and QDrop in the base."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantizers import Granularity, Mode, QuantSpec, build_quantizer
from quantizers.errors import QuantizationError
from quantizers.functional.uniform import SCALE_EPS, fake_quantize, round_ste
from quantizers.parts.rounding import ROUNDINGS, NearestRounding, Rounding

SPECS = [
    QuantSpec(bits=4),
    QuantSpec(bits=8, symmetric=True),
    QuantSpec(bits=3, symmetric=True, granularity=Granularity("channel", 0)),
    QuantSpec(bits=6, granularity=Granularity("channel", 1)),
    QuantSpec(bits=5, granularity=Granularity("group", 1, 4)),
]


def _calibrated(spec: QuantSpec, x: torch.Tensor):
    quantizer = build_quantizer(spec)
    quantizer.observe(x)
    quantizer.finalize()
    return quantizer


@settings(max_examples=40, deadline=None)
@given(spec_index=st.integers(0, len(SPECS) - 1), seed=st.integers(0, 2**31 - 1), spread=st.floats(1e-3, 1e3))
def test_learnable_qparams_give_the_same_values_as_torch_op(spec_index, seed, spread):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 8, generator=generator) * spread + spread / 3
    quantizer = _calibrated(SPECS[spec_index], x)
    fixed = quantizer.fake_quantize(x)  # torch's fake_quantize op
    quantizer.learn(scale=True, zero_point=True)
    assert quantizer.learnable
    assert torch.equal(quantizer.fake_quantize(x), fixed)
    quantizer.freeze()
    assert not quantizer.learnable and quantizer.zero_point.dtype == torch.int32
    assert torch.equal(quantizer.fake_quantize(x), fixed)


def test_lsq_gradients_reach_the_scale_and_x_gradients_are_those_of_torch_op():
    x = torch.linspace(-3, 3, 101)
    quantizer = _calibrated(QuantSpec(bits=3, symmetric=True), x * 0.8)  # clips the ends of x
    reference = x.clone().requires_grad_(True)
    torch.fake_quantize_per_tensor_affine(reference, quantizer.scale.reshape(()), quantizer.zero_point.reshape(()),
                                          -4, 3).sum().backward()
    (scale,) = quantizer.learn(scale=True)
    assert isinstance(scale, torch.nn.Parameter)
    learnable = x.clone().requires_grad_(True)
    quantizer.fake_quantize(learnable).sum().backward()
    assert torch.equal(learnable.grad, reference.grad)  # the clipped straight-through estimator
    assert 0 < float(reference.grad.sum()) < x.numel()  # some values are clipped
    # LSQ: d x̂/dΔ = round(x/Δ) − x/Δ inside the range, qmin or qmax outside, times 1/sqrt(N·qmax)
    v = x / scale.detach()
    expected = torch.where(v.round() > 3, 3.0, torch.where(v.round() < -4, -4.0, v.round() - v)).sum()
    assert torch.allclose(scale.grad, expected.reshape(1) / (x.numel() * 3) ** 0.5, atol=1e-5)


def test_a_rounding_part_replaces_the_rounding():
    class Floor(Rounding):
        def forward(self, v):
            return torch.floor(v)

    x = torch.tensor([0.26, 0.74, -0.26])
    quantizer = _calibrated(QuantSpec(bits=8, symmetric=True), torch.tensor([-1.0, 1.0]))
    step = float(quantizer.scale)
    quantizer.rounding = Floor()
    expected = torch.floor(x * (1.0 / quantizer.scale)) * step
    assert torch.allclose(quantizer.fake_quantize(x), expected)
    assert ROUNDINGS.get("nearest").cls is NearestRounding


def test_a_step_that_takes_a_learned_scale_below_zero_leaves_the_floor_instead():
    x = torch.linspace(-3, 3, 101)
    quantizer = _calibrated(QuantSpec(bits=4), x)
    (scale,) = quantizer.learn(scale=True)
    optimizer = torch.optim.SGD([scale], lr=1.0)
    scale.grad = scale.detach() + 1.0  # one step to -1: floored, as by torch.ao's _LearnableFakeQuantize
    optimizer.step()
    assert float(scale.detach()) < 0
    out = quantizer.fake_quantize(x.clone().requires_grad_(True))
    assert float(scale.detach()) == SCALE_EPS and torch.isfinite(out).all()  # every value clipped onto a tiny grid
    qmin, qmax = quantizer.qrange
    expected = torch.fake_quantize_per_tensor_affine(x, SCALE_EPS, int(quantizer.zero_point), qmin, qmax)
    assert torch.equal(out.detach(), expected)
    out.square().sum().backward()
    assert scale.grad is not None and torch.isfinite(scale.grad).all()
    quantizer.freeze()
    assert torch.equal(quantizer.fake_quantize(x), expected)  # a valid frozen state


def test_differentiable_form_checks_its_qparams():
    with pytest.raises(QuantizationError, match="expected 3"):
        fake_quantize(torch.ones(3, 2), torch.ones(2), torch.zeros(2), 0, 255, Granularity("channel"), round_ste)
    with pytest.raises(QuantizationError, match="NaN"):
        fake_quantize(torch.tensor([float("nan")]), torch.ones(1), torch.zeros(1), 0, 255, rounding=round_ste)


def test_learn_needs_calibration_and_set_qparams_needs_frozen_qparams():
    quantizer = build_quantizer(QuantSpec())
    with pytest.raises(QuantizationError, match="calibrated"):
        quantizer.learn()
    quantizer = _calibrated(QuantSpec(), torch.randn(10))
    quantizer.learn()
    with pytest.raises(QuantizationError, match="freeze"):
        quantizer.set_qparams(torch.ones(1), torch.zeros(1))


def test_learnable_state_loads_into_a_fresh_quantizer():
    x = torch.randn(50)
    quantizer = _calibrated(QuantSpec(bits=4), x)
    (scale,) = quantizer.learn()
    with torch.no_grad():
        scale.mul_(1.1)
    fresh = build_quantizer(QuantSpec(bits=4))
    fresh.load_state_dict(quantizer.state_dict())
    assert torch.equal(fresh.fake_quantize(x), quantizer.fake_quantize(x).detach())


def test_qdrop_is_off_by_default_and_mixes_elementwise_with_its_probability():
    x = torch.linspace(-1, 1, 20_000)
    quantizer = _calibrated(QuantSpec(bits=2), x)
    quantizer.mode = Mode.QUANTIZE
    x_hat = quantizer(x)
    assert quantizer.drop_prob == 0.0 and quantizer.dropped_elements == 0
    assert torch.equal(x_hat, quantizer.fake_quantize(x))
    quantizer.drop_prob, quantizer.drop_generator = 0.3, torch.Generator().manual_seed(0)
    mixed = quantizer(x)
    from_float = (mixed == x) & (x_hat != x)
    from_quantized = mixed == x_hat
    assert bool((from_float | from_quantized).all())  # every element is x or x̂, never anything else
    share = quantizer.dropped_elements / x.numel()
    assert abs(share - 0.3) < 0.02
    again = copy.deepcopy(quantizer)
    again.drop_generator = torch.Generator().manual_seed(0)
    assert torch.equal(again(x), mixed)  # seeded: the same mask
