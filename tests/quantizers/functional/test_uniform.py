"""Uniform fake quantization against torch's fused kernels and observers, plus grid properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.ao.quantization as tq
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from quantizers.errors import QuantizationError
from quantizers.functional.uniform import (
    SCALE_EPS,
    check_qparams,
    fake_quantize,
    fake_quantize_checked,
    grid_range,
    qparams_from_minmax,
    quant_range,
)
from quantizers.spec import Granularity

#: every test runs on the eager and on the fused kernels (see tests/quantizers/conftest.py)
pytestmark = pytest.mark.usefixtures("kernel_path")

BITS = [2, 3, 4, 6, 8, 11, 16]
SETTINGS = settings(max_examples=40, deadline=None)


def _random(shape: tuple[int, ...], seed: int, spread: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * spread + 0.5


def _torch_observer_args(bits: int, symmetric: bool, per_channel: bool) -> dict:
    """torch.ao observer arguments with our grid: qint8/quint8 up to 8 bits, qint32 beyond."""
    qmin, qmax = grid_range(bits, symmetric)
    if symmetric:
        dtype = torch.qint8 if bits <= 8 else torch.qint32
        scheme = torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric
    else:
        dtype = torch.quint8 if bits <= 8 else torch.qint32
        scheme = torch.per_channel_affine if per_channel else torch.per_tensor_affine
    return {"dtype": dtype, "qscheme": scheme, "quant_min": qmin, "quant_max": qmax}


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric,signed", [(True, True), (True, False), (False, True)])
def test_per_tensor_equals_torch_kernel(bits: int, symmetric: bool, signed: bool) -> None:
    x = _random((7, 33), seed=bits)
    qmin, qmax = grid_range(bits, symmetric, signed)
    scale, zp = qparams_from_minmax(x.min(), x.max() * 0.7, bits, symmetric, signed)
    expected = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), qmin, qmax)
    assert torch.equal(fake_quantize(x, scale, zp, qmin, qmax), expected)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("symmetric,signed", [(True, True), (True, False), (False, True)])
def test_per_channel_equals_torch_kernel(bits: int, axis: int, symmetric: bool, signed: bool) -> None:
    x = _random((4, 5, 6), seed=100 + bits)
    qmin, qmax = grid_range(bits, symmetric, signed)
    dims = [d for d in range(3) if d != axis % 3]
    scale, zp = qparams_from_minmax(x.amin(dims), x.amax(dims) * 0.8, bits, symmetric, signed)
    expected = torch.fake_quantize_per_channel_affine(x, scale, zp, axis % 3, qmin, qmax)
    out = fake_quantize(x, scale, zp, qmin, qmax, Granularity("channel", axis))
    assert torch.equal(out, expected)


@pytest.mark.parametrize("axis,group_size", [(0, 2), (1, 3), (-1, 5), (2, 10)])
def test_per_group_equals_loop_over_groups(axis: int, group_size: int) -> None:
    x = _random((4, 6, 10), seed=7)
    granularity = Granularity("group", axis, group_size)
    moved = x.movedim(axis, -1)
    groups = moved.reshape(-1, group_size)
    qmin, qmax = grid_range(4, False)
    scale, zp = qparams_from_minmax(groups.amin(1), groups.amax(1), 4, False)
    reference = torch.stack(
        [
            torch.fake_quantize_per_tensor_affine(row, float(s), int(z), qmin, qmax)
            for row, s, z in zip(groups, scale, zp)
        ]
    )
    reference = reference.reshape(moved.shape).movedim(-1, axis)
    assert torch.equal(fake_quantize(x, scale, zp, qmin, qmax, granularity), reference)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_compute_in_float32_and_cast_back(dtype: torch.dtype) -> None:
    x = _random((50,), seed=3).to(dtype)
    out = fake_quantize(x, torch.tensor(0.05), torch.tensor(3), 0, 255)
    assert out.dtype == dtype
    expected = torch.fake_quantize_per_tensor_affine(x.float(), 0.05, 3, 0, 255).to(dtype)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_qparams_equal_torch_minmax_observer(bits: int, symmetric: bool) -> None:
    for seed, shift in [(0, 0.0), (1, 5.0), (2, -5.0)]:  # mixed-sign, all-positive, all-negative data
        x = _random((300,), seed=seed, spread=2.0) + shift
        observer = tq.MinMaxObserver(**_torch_observer_args(bits, symmetric, per_channel=False))
        observer(x)
        ref_scale, ref_zp = observer.calculate_qparams()
        scale, zp = qparams_from_minmax(x.min(), x.max(), bits, symmetric)
        assert torch.equal(scale.reshape(1), ref_scale)
        assert torch.equal(zp.reshape(1), ref_zp.to(torch.int32))


@pytest.mark.parametrize("bits", [2, 4, 8, 12])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [0, 2])
def test_qparams_equal_torch_per_channel_observer(bits: int, symmetric: bool, axis: int) -> None:
    x = _random((6, 3, 8), seed=bits + axis)
    x.select(axis, 1).zero_()  # an all-zero channel exercises the eps floor
    observer = tq.PerChannelMinMaxObserver(ch_axis=axis, **_torch_observer_args(bits, symmetric, per_channel=True))
    observer(x)
    ref_scale, ref_zp = observer.calculate_qparams()
    dims = [d for d in range(3) if d != axis]
    scale, zp = qparams_from_minmax(x.amin(dims), x.amax(dims), bits, symmetric)
    assert torch.equal(scale, ref_scale)
    assert torch.equal(zp, ref_zp.to(torch.int32))
    assert float(scale[1]) == SCALE_EPS


def test_symmetric_unsigned_qparams_use_the_whole_unsigned_grid() -> None:
    # torch.ao has no oracle for this grid (its symmetric quint8 puts the zero point at 128).
    scale, zp = qparams_from_minmax(torch.tensor([-1.0, 0.0]), torch.tensor([2.55, 5.1]), 8, True, signed=False)
    assert torch.allclose(scale, torch.tensor([0.01, 0.02]))
    assert torch.equal(zp, torch.zeros(2, dtype=torch.int32))


def test_straight_through_gradient_is_one_inside_and_zero_outside() -> None:
    scale, zp, qmin, qmax = 0.1, 3, 0, 15  # representable range [-0.3, 1.2]
    inside = torch.tensor([-0.29, -0.1, 0.0, 0.33, 0.9, 1.19])
    outside = torch.tensor([-5.0, -0.5, 1.3, 4.0])
    x = torch.cat([inside, outside]).requires_grad_()
    fake_quantize(x, torch.tensor(scale), torch.tensor(zp), qmin, qmax).backward(torch.full((10,), 2.0))
    assert torch.equal(x.grad, torch.cat([torch.full((6,), 2.0), torch.zeros(4)]))


def test_per_channel_gradient_follows_each_channel_range() -> None:
    x = torch.tensor([[0.5, 2.0], [0.5, 2.0]], requires_grad=True)
    scale = torch.tensor([0.01, 0.1])  # channel 0 clips at 1.27, channel 1 at 12.7
    fake_quantize(x, scale, torch.zeros(2, dtype=torch.int32), -128, 127, Granularity("channel", 0)).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))


grid_params = st.tuples(
    st.integers(2, 16),
    st.booleans(),
    st.floats(1e-3, 10.0),
    st.floats(0.0, 1.0),
)


@SETTINGS
@given(params=grid_params, codes=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40))
def test_grid_values_come_back_unchanged(params, codes) -> None:
    bits, symmetric, scale, zp_fraction = params
    qmin, qmax = grid_range(bits, symmetric)
    zp = 0 if symmetric else int(round(qmin + zp_fraction * (qmax - qmin)))
    q = torch.tensor([round(qmin + c * (qmax - qmin)) for c in codes], dtype=torch.float32)
    x = (q - zp) * torch.tensor(scale, dtype=torch.float32)
    out = fake_quantize(x, torch.tensor(scale), torch.tensor(zp), qmin, qmax)
    assert torch.equal(out, x)


@SETTINGS
@given(
    params=grid_params,
    positions=arrays(np.float32, st.integers(1, 60), elements=st.floats(0.0, 1.0, width=32)),
)
def test_error_inside_the_clip_range_is_at_most_half_a_step(params, positions) -> None:
    bits, symmetric, scale, zp_fraction = params
    qmin, qmax = grid_range(bits, symmetric)
    zp = 0 if symmetric else int(round(qmin + zp_fraction * (qmax - qmin)))
    low, high = (qmin - zp) * scale, (qmax - zp) * scale
    x = torch.from_numpy(low + positions.astype(np.float64) * (high - low)).float().clamp(low, high)
    out = fake_quantize(x, torch.tensor(scale), torch.tensor(zp), qmin, qmax)
    slack = 1e-6 * max(abs(low), abs(high))  # float32 rounding of x / scale on large grids
    assert float((out - x).abs().max()) <= scale / 2 + slack


@SETTINGS
@given(
    bits=st.integers(2, 15),
    symmetric=st.booleans(),
    scale=st.floats(1e-2, 10.0),
    zp_fraction=st.floats(0.0, 1.0),
    values=arrays(np.float32, st.integers(1, 60), elements=st.floats(-1e3, 1e3, width=32)),
)
def test_error_never_grows_with_bits_on_nested_grids(bits, symmetric, scale, zp_fraction, values) -> None:
    # Fake quantization returns the nearest point of its grid (round, then clamp, on an arithmetic
    # progression). Halving the scale (and doubling the zero point) when adding a bit gives a grid
    # that contains the old one, so no element can end up farther away. Scales from the same range
    # (amax / (2^(b-1) - 1/2), as qparams_from_minmax gives) are NOT nested, and there an element's
    # error can grow with the bit-width, so this is the form of the property that is true.
    qmin, qmax = grid_range(bits, symmetric)
    zp = 0 if symmetric else int(round(qmin + zp_fraction * (qmax - qmin)))
    wider_min, wider_max = grid_range(bits + 1, symmetric)
    x = torch.from_numpy(values)
    coarse = fake_quantize(x, torch.tensor(scale), torch.tensor(zp), qmin, qmax)
    fine = fake_quantize(x, torch.tensor(scale / 2), torch.tensor(2 * zp), wider_min, wider_max)
    slack = 1e-6 * (1.0 + float(x.abs().max()))  # float32 rounding near a midpoint
    assert bool(((fine - x).abs() <= (coarse - x).abs() + slack).all())


@pytest.mark.parametrize("bits", [1, 17, 0, -3])
def test_bits_outside_2_to_16_raise(bits: int) -> None:
    with pytest.raises(QuantizationError, match="bits"):
        quant_range(bits, True)
    with pytest.raises(QuantizationError, match="bits"):
        qparams_from_minmax(torch.tensor(0.0), torch.tensor(1.0), bits, False)


@pytest.mark.parametrize(
    "x,message",
    [
        (torch.empty(0), "empty"),
        (torch.tensor([1.0, float("nan")]), "NaN"),
        (torch.tensor([float("inf"), 0.0]), "Inf"),
        (torch.tensor([1, 2]), "floating"),
    ],
)
def test_bad_inputs_raise(x: torch.Tensor, message: str) -> None:
    with pytest.raises(QuantizationError, match=message):
        fake_quantize(x, torch.tensor(0.1), torch.tensor(0), -128, 127)


def test_wrong_number_of_qparams_raises() -> None:
    x = torch.randn(3, 4)
    with pytest.raises(QuantizationError, match="expected 3"):
        fake_quantize(x, torch.ones(4), torch.zeros(4), -8, 7, Granularity("channel", 0))
    with pytest.raises(QuantizationError, match="expected 1"):
        fake_quantize(x, torch.ones(2), torch.zeros(2), -8, 7)
    with pytest.raises(QuantizationError, match="divisible"):
        fake_quantize(x, torch.ones(4), torch.zeros(4), -8, 7, Granularity("group", 1, 3))


@pytest.mark.parametrize("granularity", [Granularity("tensor"), Granularity("channel", 1), Granularity("group", 1, 4)])
def test_checked_qparams_quantize_as_fake_quantize_and_are_reused(granularity: Granularity) -> None:
    x = _random((4, 8, 2048), seed=3)  # large enough for the fused kernel where it is on
    groups = {"tensor": 1, "channel": 8, "group": 4 * 2 * 2048}[granularity.kind]
    scale = torch.rand(groups, generator=torch.Generator().manual_seed(4)) * 0.1 + 0.01
    zero_point = torch.randint(-3, 4, (groups,), generator=torch.Generator().manual_seed(5), dtype=torch.int32)
    checked = check_qparams(scale, zero_point, -8, 7)
    expected = fake_quantize(x, scale, zero_point, -8, 7, granularity)
    assert torch.equal(fake_quantize_checked(x, checked, granularity), expected)
    assert torch.equal(fake_quantize_checked(x.clone(), checked, granularity, overwrite=True), expected)
    assert checked.kernel_args((1, -1, 1)) is checked.kernel_args((1, -1, 1))  # derived once
    wrong = check_qparams(torch.ones(2 * groups), torch.zeros(2 * groups), -8, 7)
    with pytest.raises(QuantizationError, match=f"expected {groups} scale"):
        fake_quantize_checked(x, wrong, granularity)


def test_check_qparams_needs_as_many_zero_points_as_scales() -> None:
    with pytest.raises(QuantizationError, match="3 scales but 2 zero points"):
        check_qparams(torch.ones(3), torch.zeros(2), -8, 7)


@pytest.mark.parametrize(
    "scale,zp,message",
    [(0.0, 0, "positive"), (float("nan"), 0, "finite"), (0.1, 300, "zero_point")],
)
def test_bad_qparams_raise(scale: float, zp: int, message: str) -> None:
    with pytest.raises(QuantizationError, match=message):
        fake_quantize(torch.randn(5), torch.tensor(scale), torch.tensor(zp), 0, 255)


def test_bad_statistics_raise() -> None:
    with pytest.raises(QuantizationError, match="NaN or Inf"):
        qparams_from_minmax(torch.tensor(float("nan")), torch.tensor(1.0), 8, True)
    with pytest.raises(QuantizationError, match="exceeds"):
        qparams_from_minmax(torch.tensor(2.0), torch.tensor(1.0), 8, True)
    with pytest.raises(QuantizationError, match="shapes differ"):
        qparams_from_minmax(torch.zeros(2), torch.zeros(3), 8, True)


def test_all_zero_statistics_give_the_eps_scale() -> None:
    for symmetric in (True, False):
        scale, zp = qparams_from_minmax(torch.zeros(3), torch.zeros(3), 8, symmetric)
        assert torch.equal(scale, torch.full((3,), SCALE_EPS))
        out = fake_quantize(torch.zeros(4, 3), scale, zp, *grid_range(8, symmetric), Granularity("channel", 1))
        assert torch.equal(out, torch.zeros(4, 3))
