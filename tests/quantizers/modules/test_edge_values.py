"""Every registered quantizer kind, with every granularity it implements (and, for the uniform kind,
every observer), on degenerate shapes and extreme values: a QuantizationError or correct finite
values, never non-finite qparams and never another exception."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from quantizers import Mode, QuantizationError, QuantSpec, build_quantizer
from quantizers.registry import OBSERVERS, QUANTIZERS

GRANULARITIES = {
    "tensor": {"kind": "tensor"},
    "channel": {"kind": "channel", "axis": -1},
    "group": {"kind": "group", "axis": -1, "group_size": 1},
}
SHAPES = [(), (1,), (1, 1), (5,), (3, 1), (1, 4), (2, 3), (2, 1, 3)]
F32 = np.finfo(np.float32)
#: values from every regime: zeros, denormals, the smallest normals, ordinary, the largest floats
MAGNITUDES = [0.0, float(F32.smallest_subnormal), 1e-44, float(F32.tiny), 1e-20, 1e-3, 0.5, 1.0, 3.0, 1e20,
              1e38, float(F32.max)]


def _specs() -> list[QuantSpec]:
    specs = []
    for kind in QUANTIZERS:
        cls = QUANTIZERS.get(kind).cls
        for granularity in cls.GRANULARITIES:
            for observer in (list(OBSERVERS) if kind == "uniform" else ["minmax"]):
                for symmetric in (True, False):
                    specs.append(QuantSpec(bits=4, symmetric=symmetric, granularity=GRANULARITIES[granularity],
                                           observer=observer, quantizer=kind))
    return specs


SPECS = _specs()


def _spec_id(spec: QuantSpec) -> str:
    return f"{spec.quantizer}-{spec.granularity.kind}-{spec.observer}-{'sym' if spec.symmetric else 'aff'}"


@st.composite
def edge_tensors(draw) -> np.ndarray:
    """A float32 array of a degenerate shape: all one value, a mix of magnitudes of both signs, or
    arbitrary float32 values (subnormals included)."""
    shape = draw(st.sampled_from(SHAPES))
    regime = draw(st.sampled_from(["constant", "magnitudes", "any"]))
    if regime == "constant":
        value = draw(st.sampled_from(MAGNITUDES)) * draw(st.sampled_from([1.0, -1.0]))
        return np.full(shape, value, dtype=np.float32)
    if regime == "magnitudes":
        values = st.builds(lambda m, s: np.float32(m * s), st.sampled_from(MAGNITUDES), st.sampled_from([1.0, -1.0]))
        return draw(arrays(np.float32, shape, elements=values))
    return draw(arrays(np.float32, shape, elements=st.floats(width=32, allow_nan=False, allow_infinity=False,
                                                             allow_subnormal=True)))


def _calibrate(spec: QuantSpec, x: torch.Tensor):
    quantizer = build_quantizer(spec)
    quantizer.mode = Mode.OBSERVE
    quantizer(x)
    quantizer.finalize()
    quantizer.mode = Mode.QUANTIZE
    return quantizer, quantizer(x)


def _non_finite_state(quantizer) -> list[str]:
    return [k for k, v in quantizer.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]


@pytest.mark.parametrize("spec", SPECS, ids=_spec_id)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=edge_tensors())
def test_edge_values_give_an_error_or_correct_finite_values(spec, data):
    x = torch.from_numpy(data)
    try:
        quantizer, y = _calibrate(spec, x)
    except QuantizationError:
        return  # a clear refusal (e.g. per-channel on a 0-D tensor, no positive post-GELU value)
    assert not _non_finite_state(quantizer)
    assert y.shape == x.shape and y.dtype == x.dtype and bool(torch.isfinite(y).all())
    if spec.quantizer == "uniform":
        _assert_on_grid(quantizer, x, y)


def _assert_on_grid(quantizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """Uniform: each value lands within half a step of itself clamped to its group's grid."""
    qmin, qmax = quantizer.qrange
    scale = quantizer.scale.double()
    zero = quantizer.zero_point.double()
    kind = quantizer.spec.granularity.kind
    shape = (1,) * x.dim() if kind == "tensor" else ((x.shape[-1],) if kind == "channel" else x.shape)
    scale, zero = scale.reshape(shape), zero.reshape(shape)
    clamped = torch.minimum(torch.maximum(x.double(), (qmin - zero) * scale), (qmax - zero) * scale)
    error = (y.double() - clamped).abs()
    assert bool((error <= scale * (0.5 + 1e-5) + 1e-45).all()), (x, y, scale, zero)


@pytest.mark.parametrize("spec", SPECS, ids=_spec_id)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["observe", "quantize"])
def test_nan_and_inf_are_refused(spec, bad, where):
    x = torch.tensor([[0.1, 0.5], [0.25, 0.75]])
    poisoned = x.clone()
    poisoned[0, 1] = bad
    quantizer = build_quantizer(spec)
    quantizer.mode = Mode.OBSERVE
    if where == "observe":
        with pytest.raises(QuantizationError, match="NaN or Inf"):
            quantizer(poisoned)
        assert not quantizer.is_calibrated
        return
    quantizer(x)
    quantizer.finalize()
    quantizer.mode = Mode.QUANTIZE
    with pytest.raises(QuantizationError, match="NaN or Inf"):
        quantizer(poisoned)
    assert not _non_finite_state(quantizer)


@pytest.mark.parametrize("kind", [k for k in QUANTIZERS if set(QUANTIZERS.get(k).cls.GRANULARITIES) != set(GRANULARITIES)])
def test_a_granularity_a_kind_does_not_implement_is_refused(kind):
    missing = next(g for g in GRANULARITIES if g not in QUANTIZERS.get(kind).cls.GRANULARITIES)
    with pytest.raises(QuantizationError, match="implements granularity"):
        QuantSpec(quantizer=kind, granularity=GRANULARITIES[missing])


def test_empty_and_out_of_range_axes_are_refused():
    quantizer = build_quantizer(QuantSpec(granularity={"kind": "channel", "axis": 0}))
    quantizer.mode = Mode.OBSERVE
    with pytest.raises(QuantizationError, match="0-D"):
        quantizer(torch.tensor(0.5))
    with pytest.raises(QuantizationError, match="empty"):
        quantizer(torch.empty(0, 3))
    wide = build_quantizer(QuantSpec(granularity={"kind": "channel", "axis": 5}))
    wide.mode = Mode.OBSERVE
    with pytest.raises(QuantizationError, match="out of range"):
        wide(torch.ones(2, 3))  # once wrapped silently onto axis 1
