"""UniformQuantizer: modes, calibration from every observer kind, set_qparams, state round trip."""

from __future__ import annotations

import copy

import pytest
import torch

from quantizers.errors import QuantizationError
from quantizers.functional.uniform import fake_quantize, grid_range
from quantizers.modules.base import Mode
from quantizers.registry import OBSERVERS, build_observer, build_quantizer
from quantizers.modules.uniform import UniformQuantizer
from quantizers.spec import Granularity, QuantSpec

KINDS = sorted(OBSERVERS)


def _data(seed: int, shape: tuple[int, ...] = (4, 64)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def _calibrated(spec: QuantSpec, batches: int = 3) -> UniformQuantizer:
    quantizer = build_quantizer(spec)
    quantizer.mode = Mode.OBSERVE
    for seed in range(batches):
        quantizer(_data(seed))
    quantizer.finalize()
    quantizer.mode = Mode.QUANTIZE
    return quantizer


def test_off_returns_the_same_tensor_object() -> None:
    quantizer = build_quantizer(QuantSpec())
    x = _data(0)
    assert quantizer.mode is Mode.OFF
    assert quantizer(x) is x
    assert int(quantizer.observer.num_batches) == 0


def test_observe_returns_the_input_unchanged_and_feeds_the_observer() -> None:
    quantizer = build_quantizer(QuantSpec())
    quantizer.mode = Mode.OBSERVE
    x = _data(1)
    before = x.clone()
    assert quantizer(x) is x
    assert torch.equal(x, before)
    assert int(quantizer.observer.num_batches) == 1


def test_quantize_before_finalize_raises_never_calibrated() -> None:
    quantizer = build_quantizer(QuantSpec())
    quantizer.mode = Mode.QUANTIZE
    with pytest.raises(QuantizationError, match="never calibrated"):
        quantizer(_data(2))


def test_finalize_before_observing_raises() -> None:
    with pytest.raises(QuantizationError, match="before any data"):
        build_quantizer(QuantSpec()).finalize()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("granularity", [Granularity("tensor"), Granularity("channel", 0)])
def test_finalize_from_each_observer_kind(kind: str, granularity: Granularity) -> None:
    spec = QuantSpec(bits=4, observer=kind, granularity=granularity)
    quantizer = _calibrated(spec)
    assert quantizer.is_calibrated
    reference = build_observer(spec)
    for seed in range(3):
        reference(_data(seed))
    scale, zp = reference.calculate_qparams()
    assert torch.equal(quantizer.scale, scale) and torch.equal(quantizer.zero_point, zp)
    x = _data(10)
    out = quantizer(x)
    assert torch.equal(out, fake_quantize(x, scale, zp, *grid_range(4, False), granularity))
    rows = out if granularity.kind == "channel" else out.reshape(1, -1)
    assert all(row.unique().numel() <= 16 for row in rows)  # on a 4-bit grid


def test_set_qparams_installs_a_search_result() -> None:
    quantizer = build_quantizer(QuantSpec(bits=8, symmetric=True))
    quantizer.set_qparams(torch.tensor(0.05), torch.tensor(0))
    quantizer.mode = Mode.QUANTIZE
    assert quantizer.is_calibrated
    x = _data(3)
    assert torch.equal(quantizer(x), torch.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127))


def test_set_qparams_with_the_wrong_count_fails_when_quantizing() -> None:
    quantizer = build_quantizer(QuantSpec(granularity=Granularity("channel", 0)))
    quantizer.set_qparams(torch.ones(3), torch.zeros(3))
    quantizer.mode = Mode.QUANTIZE
    with pytest.raises(QuantizationError, match="expected 4"):
        quantizer(_data(4))


def test_straight_through_gradient_reaches_the_input() -> None:
    quantizer = _calibrated(QuantSpec(bits=8))
    x = _data(5).requires_grad_()
    quantizer(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # minmax range: nothing is clipped


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trips_into_a_fresh_quantizer(kind: str) -> None:
    spec = QuantSpec(bits=5, symmetric=kind == "kl", observer=kind, granularity=Granularity("channel", 0))
    original = _calibrated(spec)
    fresh = build_quantizer(spec)
    fresh.load_state_dict(original.state_dict())
    fresh.mode = Mode.QUANTIZE
    assert fresh.is_calibrated
    x = _data(20)
    assert torch.equal(fresh(x), original(x))
    assert all(torch.equal(a, b) for a, b in zip(fresh.observer.calculate_qparams(), original.observer.calculate_qparams()))


def test_state_dict_holds_qparams_and_observer_state() -> None:
    keys = set(_calibrated(QuantSpec()).state_dict())
    assert {"calibrated", "scale", "zero_point", "observer.num_batches", "observer.min_val", "observer.max_val"} <= keys


def test_bad_input_while_quantizing_raises() -> None:
    quantizer = _calibrated(QuantSpec())
    with pytest.raises(QuantizationError, match="NaN"):
        quantizer(torch.tensor([[float("nan")] * 64] * 4))


def test_qparam_values_are_checked_once_until_they_change(monkeypatch) -> None:
    import quantizers.functional.uniform as functional

    checks = []
    grid_ends = functional._grid_ends
    monkeypatch.setattr(functional, "_grid_ends", lambda *a: checks.append(1) or grid_ends(*a))
    quantizer = build_quantizer(QuantSpec(bits=8, symmetric=True))
    quantizer.set_qparams(torch.tensor(0.05), torch.tensor(0))
    quantizer.mode = Mode.QUANTIZE
    x = _data(5)
    first = quantizer(x)
    assert len(checks) == 1 and torch.equal(quantizer(x), first) and len(checks) == 1  # unchanged: not re-read
    with torch.no_grad():
        quantizer.scale.fill_(float("nan"))  # in place: the version counter moves
    with pytest.raises(QuantizationError, match="finite and positive"):
        quantizer(x)
    quantizer.scale = torch.tensor([-1.0])  # a new tensor
    with pytest.raises(QuantizationError, match="finite and positive"):
        quantizer(x)
    quantizer.set_qparams(torch.tensor(0.05), torch.tensor(0))
    quantizer(x)
    quantizer.scale.data = torch.tensor([0.0])  # swapped storage, same tensor and version counter
    with pytest.raises(QuantizationError, match="finite and positive"):
        quantizer(x)
    quantizer.set_qparams(torch.tensor(0.1), torch.tensor(0))
    assert torch.equal(quantizer(x), torch.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127))
    twin = copy.deepcopy(quantizer)  # its own tensors, checked on its own
    with torch.no_grad():
        twin.scale.fill_(float("inf"))
    with pytest.raises(QuantizationError, match="finite and positive"):
        twin(x)
    assert torch.equal(quantizer(x), torch.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127))
    with torch.inference_mode():  # inference tensors have no version counter: checked at every call
        quantizer.scale = torch.tensor([0.1])
    calls = len(checks)
    quantizer(x), quantizer(x)
    assert len(checks) == calls + 2


def test_the_calibrated_flag_follows_every_change_of_its_buffer() -> None:
    spec = QuantSpec()
    calibrated, fresh = _calibrated(spec), build_quantizer(spec)
    assert calibrated.is_calibrated and not fresh.is_calibrated  # read once each, then remembered
    fresh.load_state_dict(calibrated.state_dict())
    assert fresh.is_calibrated
    calibrated.load_state_dict(build_quantizer(spec).state_dict())
    assert not calibrated.is_calibrated
    fresh.calibrated.fill_(False)
    fresh.mode = Mode.QUANTIZE
    with pytest.raises(QuantizationError, match="never calibrated"):
        fresh(_data(0))
    fresh.calibrated = torch.ones((), dtype=torch.bool)  # a new buffer
    assert fresh.is_calibrated
