"""The parameter cache: a weight is fake-quantized once, and again after anything it depends on changes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from quantizers.modules.base import Mode
from quantizers.modules.cache import DerivedCache
from quantizers.functional.uniform import round_ste
from quantizers.parts.rounding import Rounding
from quantizers.registry import build_quantizer
from quantizers.spec import Granularity, QuantSpec

PER_CHANNEL = QuantSpec(bits=4, symmetric=True, granularity=Granularity("channel", axis=0))


class CountingRounding(Rounding):
    """Round to nearest, counting its calls (a rounding part other than the default)."""

    calls = 0

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # noqa: D102
        CountingRounding.calls += 1
        return round_ste(v)


def _weight(seed: int = 0) -> nn.Parameter:
    return nn.Parameter(torch.randn(8, 16, generator=torch.Generator().manual_seed(seed)))


def _calibrated(weight: torch.Tensor, spec: QuantSpec = PER_CHANNEL):
    quantizer = build_quantizer(spec)
    quantizer.mode = Mode.OBSERVE
    quantizer(weight)
    quantizer.finalize()
    quantizer.mode = Mode.QUANTIZE
    return quantizer


def _fresh(quantizer, x: torch.Tensor) -> torch.Tensor:
    """The value computed from scratch (the functional kernel, no cache)."""
    return quantizer.fake_quantize(x.detach().clone())


def test_a_weight_is_quantized_once_while_nothing_changes() -> None:
    weight = _weight()
    quantizer = _calibrated(weight)
    with torch.no_grad():
        first = quantizer(weight)
        assert quantizer(weight) is first
    assert torch.equal(first, _fresh(quantizer, weight))


def test_an_in_place_change_of_the_weight_invalidates() -> None:
    weight = _weight()
    quantizer = _calibrated(weight)
    with torch.no_grad():
        first = quantizer(weight)
        weight.mul_(-0.5)
        second = quantizer(weight)
    assert second is not first
    assert torch.equal(second, _fresh(quantizer, weight))


def test_load_state_dict_of_the_layer_invalidates() -> None:
    layer = nn.Linear(16, 8)
    quantizer = _calibrated(layer.weight)
    with torch.no_grad():
        first = quantizer(layer.weight)
        layer.load_state_dict({"weight": torch.randn(8, 16), "bias": torch.zeros(8)})
        second = quantizer(layer.weight)
    assert second is not first and torch.equal(second, _fresh(quantizer, layer.weight))


def test_moving_the_weight_to_new_storage_invalidates() -> None:
    layer = nn.Linear(16, 8)
    quantizer = _calibrated(layer.weight)
    with torch.no_grad():
        first = quantizer(layer.weight)
        layer.to(torch.float64).to(torch.float32)  # same Parameter object, new data
        second = quantizer(layer.weight)
    assert second is not first and torch.equal(second, first)


def test_a_data_swap_is_seen_even_where_the_allocator_reuses_the_freed_memory() -> None:
    layer = nn.Linear(16, 8)
    quantizer = _calibrated(layer.weight)
    with torch.no_grad():
        for step in range(50):  # freed small blocks are handed out again: the old address would recur
            before = quantizer(layer.weight)
            layer.weight.data = layer.weight.data.double()  # frees the float32 data...
            layer.weight.data = layer.weight.data.float().neg_()  # ...which this new data may reuse
            after = quantizer(layer.weight)
            assert after is not before and torch.equal(after, _fresh(quantizer, layer.weight)), step


def test_the_qparams_cache_sees_a_data_swap_into_the_freed_memory() -> None:
    cache, scale = DerivedCache(), torch.full((1024,), 0.1)  # blocks this large are handed out again
    for step in range(50):
        first = cache.get((scale,), object, (-128, 127))
        assert cache.get((scale,), object, (-128, 127)) is first
        scale.data = scale.data.double()
        scale.data = scale.data.float()
        assert cache.get((scale,), object, (-128, 127)) is not first, step


def test_new_qparams_invalidate() -> None:
    weight = _weight()
    quantizer = _calibrated(weight)
    with torch.no_grad():
        first = quantizer(weight)
        quantizer.set_qparams(quantizer.scale * 2, quantizer.zero_point)
        after_set = quantizer(weight)
        assert not torch.equal(after_set, first) and torch.equal(after_set, _fresh(quantizer, weight))
        quantizer.scale.mul_(0.25)  # an in-place change of a buffer
        after_in_place = quantizer(weight)
    assert not torch.equal(after_in_place, after_set) and torch.equal(after_in_place, _fresh(quantizer, weight))


def test_recalibration_invalidates() -> None:
    weight = _weight()
    quantizer = _calibrated(weight)
    with torch.no_grad():
        first = quantizer(weight)
        quantizer.mode = Mode.OBSERVE
        quantizer(weight * 3)
        quantizer.finalize()
        quantizer.mode = Mode.QUANTIZE
        second = quantizer(weight)
    assert not torch.equal(second, first) and torch.equal(second, _fresh(quantizer, weight))


def test_views_of_a_weight_are_cached_by_their_geometry() -> None:
    weight = _weight()
    quantizer = _calibrated(weight.detach().T.contiguous())
    with torch.no_grad():
        first = quantizer(weight.T)
        assert quantizer(weight.T) is first  # a new view object of the same parameter
        assert torch.equal(first, _fresh(quantizer, weight.T))


def test_activations_and_gradient_mode_are_never_cached() -> None:
    weight = _weight()
    quantizer = _calibrated(weight)
    activation = weight.detach().clone()
    with torch.no_grad():
        assert quantizer(activation) is not quantizer(activation)
    with torch.enable_grad():
        out = quantizer(weight)
        assert out.requires_grad and quantizer(weight) is not out


@pytest.mark.parametrize("make_learnable", ["scale", "zero_point", "rounding"])
def test_learnable_qparams_or_another_rounding_bypass_the_cache(make_learnable: str) -> None:
    weight = _weight()
    quantizer = _calibrated(weight, QuantSpec(bits=4, symmetric=False, granularity=Granularity("channel", axis=0)))
    if make_learnable == "rounding":
        quantizer.rounding = CountingRounding()
    else:
        quantizer.learn(scale=make_learnable == "scale", zero_point=make_learnable == "zero_point")
    CountingRounding.calls = 0
    with torch.no_grad():
        first, second = quantizer(weight), quantizer(weight)
        assert first is not second and torch.equal(first, second)
        if make_learnable == "rounding":
            assert CountingRounding.calls == 2
        else:
            quantizer.scale.mul_(2) if make_learnable == "scale" else quantizer.zero_point.add_(1)
            assert not torch.equal(quantizer(weight), first)


def test_a_copied_quantizer_starts_with_an_empty_cache() -> None:
    layer = nn.Linear(16, 8)
    quantizer = _calibrated(layer.weight)
    with torch.no_grad():
        quantizer(layer.weight)
    twin_layer, twin = copy.deepcopy((layer, quantizer))
    with torch.no_grad():
        twin_layer.weight.mul_(2)
        assert torch.equal(twin(twin_layer.weight), _fresh(twin, twin_layer.weight))


@pytest.mark.parametrize("spec", [QuantSpec(bits=4, quantizer="twin_softmax"),
                                  QuantSpec(bits=4, quantizer="log", quantizer_options={"taus": [2]})])
def test_other_kinds_are_cached_and_invalidated_too(spec: QuantSpec) -> None:
    weight = nn.Parameter(torch.rand(8, 16, generator=torch.Generator().manual_seed(3)))
    quantizer = _calibrated(weight, spec)
    with torch.no_grad():
        first = quantizer(weight)
        assert quantizer(weight) is first
        weight.mul_(0.5)
        assert torch.equal(quantizer(weight), _fresh(quantizer, weight))


def test_state_made_in_inference_mode_is_compared_by_value() -> None:
    weight = _weight()
    quantizer = _calibrated(weight)
    with torch.inference_mode():
        quantizer.scale = quantizer.scale * 1.0  # an inference tensor: it has no version counter
        first = quantizer(weight)
        assert quantizer(weight) is first
        quantizer.scale.mul_(2)
        second = quantizer(weight)
    assert not torch.equal(first, second) and torch.equal(second, _fresh(quantizer, weight))
