"""GPTQ's codes: on the grid of the quantizer, lower layer-output error than round-to-nearest on the
same inputs, block size and act-order only reorder exact arithmetic, RTN when inputs are
uncorrelated; the codes part saves and loads with the quantizer."""

from __future__ import annotations

import pytest
import torch

from quantizers import Granularity, Mode, QuantSpec, build_quantizer
from quantizers.errors import QuantizationError
from quantizers.functional.uniform import group_rows
from quantizers.search.gptq import GPTQOptions, gptq_codes

SPEC = QuantSpec(bits=4, granularity=Granularity("channel", 0), observer="minmax", search="gptq")


def _layer(seed: int = 0, rows: int = 24, columns: int = 40, samples: int = 400):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=generator) / columns ** 0.5 + torch.eye(columns)
    x = torch.randn(samples, columns, generator=generator) @ mixing  # correlated inputs, as real activations
    weight = torch.randn(rows, columns, generator=generator)
    quantizer = build_quantizer(SPEC)
    quantizer.observe(weight)
    quantizer.finalize()
    scale = quantizer.scale.double()[:, None].expand(rows, columns)
    zero = quantizer.zero_point.double()[:, None].expand(rows, columns)
    hessian = 2.0 * x.double().T @ x.double() / samples
    return x.double(), weight, quantizer, scale, zero, hessian


def _output_error(x, weight, codes, scale) -> float:
    return float((x @ weight.double().T - x @ (codes * scale).T).square().mean())


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lowers_the_output_error_against_round_to_nearest(act_order):
    x, weight, quantizer, scale, zero, hessian = _layer()
    qmin, qmax = quantizer.qrange
    codes = gptq_codes(weight, hessian, scale, zero, qmin, qmax, GPTQOptions(act_order=act_order))
    nearest = torch.clamp(torch.round(weight.double() / scale) + zero, qmin, qmax) - zero
    assert torch.equal(codes, torch.round(codes)) and bool(((codes + zero >= qmin) & (codes + zero <= qmax)).all())
    assert _output_error(x, weight, codes, scale) < 0.7 * _output_error(x, weight, nearest, scale)


def test_lazy_blocks_give_the_column_by_column_result():
    x, weight, quantizer, scale, zero, hessian = _layer(seed=1)
    qmin, qmax = quantizer.qrange
    results = [gptq_codes(weight, hessian, scale, zero, qmin, qmax, GPTQOptions(block_size=size))
               for size in (1, 7, 128)]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_uncorrelated_inputs_leave_nothing_to_compensate():
    _, weight, quantizer, scale, zero, _ = _layer(seed=2)
    qmin, qmax = quantizer.qrange
    hessian = torch.diag(torch.linspace(1.0, 3.0, weight.shape[1], dtype=torch.float64))
    codes = gptq_codes(weight, hessian, scale, zero, qmin, qmax)
    assert torch.equal(codes, torch.clamp(torch.round(weight.double() / scale) + zero, qmin, qmax) - zero)


def test_dead_inputs_get_zero_weight_and_bad_shapes_are_refused():
    x, weight, quantizer, scale, zero, hessian = _layer(seed=3)
    hessian[:, 5] = 0.0
    hessian[5, :] = 0.0
    codes = gptq_codes(weight, hessian, scale, zero, *quantizer.qrange)
    assert torch.equal(codes[:, 5], torch.zeros(weight.shape[0], dtype=torch.float64))
    with pytest.raises(QuantizationError, match="square H"):
        gptq_codes(weight, hessian[:3, :3], scale, zero, *quantizer.qrange)
    with pytest.raises(QuantizationError, match="uniform weight"):
        QuantSpec(quantizer="log", search="gptq").check_search()


def test_codes_set_on_the_quantizer_give_codes_times_scale_and_save_and_load():
    x, weight, quantizer, scale, zero, hessian = _layer(seed=4)
    codes = gptq_codes(weight, hessian, scale, zero, *quantizer.qrange)
    quantizer.set_codes(group_rows(codes, quantizer.spec.granularity))
    quantizer.mode = Mode.QUANTIZE
    assert torch.allclose(quantizer(weight).double(), codes * scale, atol=1e-6)
    fresh = build_quantizer(quantizer.spec)
    fresh.use_parts(quantizer.parts())
    fresh.load_state_dict(quantizer.state_dict())
    fresh.mode = Mode.QUANTIZE
    assert quantizer.parts() == {"rounding": "codes"} and torch.equal(fresh(weight), quantizer(weight))
    with pytest.raises(QuantizationError, match="codes"):
        fresh(weight[:, :3])


def _obs_codes(weight, hessian, scale, zero, qmin, qmax, damp, order):
    """GPTQ written as the optimal-brain-surgeon update with an explicit inverse (Frantar et al.,
    eq. 2-3): quantize column i, move the columns left by −err·H⁻¹[i, F]/H⁻¹[i, i], then remove i
    from H⁻¹ by Gaussian elimination. No Cholesky factor, no blocks."""
    w = weight.double().clone()
    h = hessian.double().clone()
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=torch.float64)
    inverse = torch.linalg.inv(h)
    codes = torch.zeros_like(w)
    left = list(order)
    while left:
        i = left.pop(0)
        code = torch.clamp(torch.round(w[:, i] / scale[:, i]) + zero[:, i], qmin, qmax) - zero[:, i]
        codes[:, i] = code
        error = (w[:, i] - code * scale[:, i]) / inverse[i, i]
        w[:, left] -= error[:, None] * inverse[i, left][None, :]
        inverse = inverse - inverse[:, i:i + 1] @ inverse[i:i + 1, :] / inverse[i, i]
    return codes


@pytest.mark.parametrize("act_order", [False, True])
def test_the_codes_are_those_of_the_direct_obs_update(act_order):
    x, weight, quantizer, scale, zero, hessian = _layer(seed=5, rows=16, columns=30)
    qmin, qmax = quantizer.qrange
    options = GPTQOptions(block_size=8, act_order=act_order)
    order = torch.argsort(torch.diag(hessian), descending=True).tolist() if act_order else range(30)
    expected = _obs_codes(weight, hessian, scale, zero, qmin, qmax, options.damp, order)
    codes = gptq_codes(weight, hessian, scale, zero, qmin, qmax, options)
    assert torch.equal(codes, expected)
    if act_order:  # the order matters: the other order gives other codes on this layer
        assert not torch.equal(codes, gptq_codes(weight, hessian, scale, zero, qmin, qmax, GPTQOptions(block_size=8)))
