"""The HLUQ quantizer: averaged range, (r, g) chosen by the following Linear's output error,
learnable scales, state round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quantizers import Mode, QuantSpec, build_quantizer
from quantizers.errors import QuantizationError
from quantizers.functional.hybrid import hybrid_fake_quantize, hybrid_scales

SPEC = QuantSpec(bits=4, quantizer="hluq")


def _batches(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [F.gelu(torch.randn(32, 24, generator=generator) * 2) for _ in range(3)]


def test_the_grid_with_the_lowest_linear_output_error_is_chosen():
    generator = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(8, 24, generator=generator), torch.randn(8, generator=generator)
    batches = _batches()
    quantizer = build_quantizer(SPEC)
    for x in batches:
        quantizer.observe(x)
    for x in batches:
        quantizer.score_grids(x, weight, bias)
    quantizer.finalize()
    shift = sum(float(x.min()) for x in batches) / 3  # running average of per-batch minima
    value_range = sum(float(x.max()) for x in batches) / 3 - shift
    errors = {}
    for r, g in quantizer.candidates:  # independent brute force
        s_log, s_uni = hybrid_scales(value_range, r, g, 4)
        errors[(r, g)] = sum(float((F.linear(hybrid_fake_quantize(x, torch.tensor(shift), torch.tensor(s_log),
                                                                    torch.tensor(s_uni), 4, g), weight, bias)
                                     - F.linear(x, weight, bias)).square().mean()) for x in batches)
    best = min(errors, key=errors.get)
    assert (float(quantizer.range_rate), float(quantizer.grid_rate)) == pytest.approx(best)
    assert float(quantizer.shift) == pytest.approx(shift, rel=1e-6)
    assert float(quantizer.scale_log) == pytest.approx(value_range * best[0], rel=1e-5)
    assert len(quantizer.candidates) == 9


def test_without_a_linear_the_grid_with_the_lowest_own_error_is_chosen_and_low_bits_drop_impossible_rates():
    quantizer = build_quantizer(SPEC)
    x = _batches()[0]
    quantizer.observe(x)
    quantizer.finalize()
    shift, value_range = float(x.min()), float(x.max() - x.min())
    errors = {}
    for r, g in quantizer.candidates:
        s_log, s_uni = hybrid_scales(value_range, r, g, 4)
        x_hat = hybrid_fake_quantize(x, torch.tensor(shift), torch.tensor(s_log), torch.tensor(s_uni), 4, g)
        errors[(r, g)] = float((x_hat - x).square().mean())
    assert (float(quantizer.range_rate), float(quantizer.grid_rate)) == pytest.approx(min(errors, key=errors.get))
    assert {g for _, g in build_quantizer(QuantSpec(bits=2, quantizer="hluq")).candidates} == {0.25, 0.5}
    with pytest.raises(QuantizationError, match="no grid rate"):
        build_quantizer(QuantSpec(bits=2, quantizer="hluq", quantizer_options={"grid_rates": [0.125]}))
    with pytest.raises(QuantizationError, match="range_rates"):
        QuantSpec(quantizer="hluq", quantizer_options={"range_rates": [1.5]})
    with pytest.raises(QuantizationError, match="granularity"):
        QuantSpec(quantizer="hluq", granularity="channel")


def test_learned_scales_keep_the_values_and_save_and_load():
    quantizer = build_quantizer(SPEC)
    x = _batches()[0]
    quantizer.observe(x)
    quantizer.score_grids(x)
    quantizer.finalize()
    quantizer.mode = Mode.QUANTIZE
    fixed = quantizer(x)
    params = quantizer.learn()
    assert [p.shape for p in params] == [torch.Size([]), torch.Size([])]
    learned = quantizer(x)
    assert torch.equal(learned, fixed)
    learned.square().sum().backward()
    assert params[1].grad is not None and float(params[1].grad) != 0.0
    with torch.no_grad():
        params[1].mul_(1.1)
    quantizer.freeze()
    assert not list(quantizer.parameters())
    fresh = build_quantizer(SPEC)
    fresh.load_state_dict(quantizer.state_dict())
    fresh.mode = Mode.QUANTIZE
    assert torch.equal(fresh(x), quantizer(x)) and not torch.equal(fresh(x), fixed)
    assert fresh.levels().levels["levels"].size == 16 and "s_log" in fresh.summary()
