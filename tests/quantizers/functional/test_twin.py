"""Twin-uniform numerics: torch fake_quantize oracle per range, disjoint ranges, integer codes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize_scalar
from scipy.special import ndtr

from quantizers.errors import QuantizationError
from quantizers.functional import chunked
from quantizers.functional.twin import GELU_MIN, TwinGrid, twin_decode, twin_encode, twin_errors, twin_fake_quantize

#: every test runs on the eager and on the fused kernels (see tests/quantizers/conftest.py)
pytestmark = pytest.mark.usefixtures("kernel_path")

SETTINGS = settings(max_examples=40, deadline=None)

unit_interval = arrays(np.float32, st.integers(1, 300), elements=st.floats(0.0, 1.0, width=32))
post_gelu = arrays(np.float32, st.integers(1, 300), elements=st.floats(-0.25, 8.0, width=32))


def _fq(x: torch.Tensor, scale: float, qmin: int, qmax: int) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, scale, 0, qmin, qmax)


def _softmax_oracle(x: torch.Tensor, bits: int, shift: int) -> torch.Tensor:
    """The paper's disjoint form from torch's own fake_quantize, one call per range."""
    qmax = 2 ** (bits - 1) - 1
    high_step = 2.0 ** -(bits - 1)
    low_step = high_step / 2**shift
    split = 2 ** (bits - 1) * low_step
    return torch.where(x < split, _fq(x, low_step, 0, qmax), _fq(x, high_step, 0, qmax))


def _gelu_oracle(x: torch.Tensor, bits: int, scale_pos: float) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    neg_step = float(np.float32(-GELU_MIN / qmax))
    return torch.where(x < 0, _fq(x, neg_step, -qmax, 0), _fq(x, scale_pos, 0, qmax))


def _ties(step: float) -> torch.Tensor:
    """Exact half-steps of ``step``: rounding ties, where half-to-even must agree with torch."""
    return torch.from_numpy(((np.arange(0, 40) + 0.5) * step).astype(np.float32))


@SETTINGS
@given(x=unit_interval, bits=st.integers(2, 10), shift=st.integers(0, 19))
def test_softmax_form_matches_torch_fake_quantize_per_range(x: np.ndarray, bits: int, shift: int) -> None:
    grid = TwinGrid.softmax(bits, shift)
    xt = torch.cat([torch.from_numpy(x), _ties(grid.scale_low), _ties(grid.scale_high)])
    assert torch.equal(twin_fake_quantize(xt, grid), _softmax_oracle(xt, bits, shift))


@SETTINGS
@given(x=post_gelu, bits=st.integers(2, 10), scale_pos=st.floats(1e-3, 0.5))
def test_gelu_form_matches_torch_fake_quantize_per_range(x: np.ndarray, bits: int, scale_pos: float) -> None:
    grid = TwinGrid.gelu(bits, scale_pos)
    xt = torch.cat([torch.from_numpy(x), _ties(grid.scale_high), _ties(grid.scale_low)])
    assert torch.equal(twin_fake_quantize(xt, grid), _gelu_oracle(xt, bits, grid.scale_high))


@SETTINGS
@given(x=unit_interval, bits=st.integers(2, 10), shift=st.integers(1, 19))
def test_ranges_are_disjoint(x: np.ndarray, bits: int, shift: int) -> None:
    grid = TwinGrid.softmax(bits, shift)
    xt = torch.cat([torch.from_numpy(x), torch.tensor([grid.split, 1.0])])
    out = twin_fake_quantize(xt, grid)
    low = xt < grid.split
    assert bool((out[low] < grid.split).all())
    high_out = out[~low]
    assert bool(((high_out >= grid.split) | (high_out == 0)).all())


def test_shift_zero_is_one_uniform_range_clipped_below_one() -> None:
    # m = 0: split = 1, both steps are 1/2^(b−1); 1.0 takes the top index of the high range.
    grid = TwinGrid.softmax(4, 0)
    x = torch.tensor([0.0, 0.3, 0.99, 1.0])
    assert twin_fake_quantize(x, grid).tolist() == [0.0, 0.25, 0.875, 0.875]
    assert twin_encode(x, grid).tolist() == [0, 2, 7, 15]


def test_reference_overlap_bug_is_not_reproduced() -> None:
    # PTQ4ViT's code adds the split to values above it: 0.3 -> 0.362 at m = 4, 8 bits.
    grid = TwinGrid.softmax(8, 4)
    x = torch.tensor([0.3])
    out = twin_fake_quantize(x, grid)
    assert abs(out.item() - 0.3) <= grid.scale_high / 2
    code = twin_encode(x, grid).item()
    assert code >> 7 == 1  # 0.3 >= split 1/16: the flag (top bit of the 8-bit code) is set
    assert code & 127 == round(0.3 * 128)


@SETTINGS
@given(x=post_gelu, bits=st.integers(2, 12), shift=st.integers(0, 19), scale_pos=st.floats(1e-3, 0.5))
def test_encode_decode_is_exactly_the_fake_quant(x: np.ndarray, bits: int, shift: int, scale_pos: float) -> None:
    xt = torch.from_numpy(x)
    for grid in (TwinGrid.softmax(bits, shift), TwinGrid.gelu(bits, scale_pos)):
        codes = twin_encode(xt, grid)
        assert codes.dtype == torch.int32
        assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits
        assert torch.equal(codes >> (bits - 1) == 1, xt >= grid.split)
        assert torch.equal(twin_decode(codes, grid), twin_fake_quantize(xt, grid))


def test_results_do_not_depend_on_the_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(70_001, generator=torch.Generator().manual_seed(0)) ** 4
    grids = [TwinGrid.softmax(6, 3), TwinGrid.gelu(6, 0.05)]
    whole = [(twin_fake_quantize(x, g), twin_encode(x, g)) for g in grids]
    errors = twin_errors(x, grids)
    monkeypatch.setattr(chunked, "SERIAL_CHUNK", 1001)  # odd chunks with vector tails
    for g, (fake, codes) in zip(grids, whole):
        assert torch.equal(twin_fake_quantize(x, g), fake)
        assert torch.equal(twin_encode(x, g), codes)
        assert torch.equal(twin_decode(codes, g), fake)
    torch.testing.assert_close(twin_errors(x, grids), errors, rtol=1e-12, atol=0)


def test_twin_errors_is_the_mean_squared_error_or_the_given_objective() -> None:
    x = torch.softmax(torch.randn(8, 64, generator=torch.Generator().manual_seed(2)) * 3, -1)
    grids = [TwinGrid.softmax(5, m) for m in range(8)]
    mse = torch.tensor([((twin_fake_quantize(x, g) - x) ** 2).double().mean().item() for g in grids])
    torch.testing.assert_close(twin_errors(x, grids), mse.double(), rtol=1e-5, atol=0)
    calls = []

    def max_error(x_hat: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
        calls.append(x_ref is x)
        return (x_hat - x_ref).abs().max()

    expected = [(twin_fake_quantize(x, g) - x).abs().max().item() for g in grids]
    assert twin_errors(x, grids, max_error).tolist() == pytest.approx(expected)
    assert calls == [True] * len(grids)


def test_gelu_min_is_the_minimum_of_x_phi() -> None:
    result = minimize_scalar(lambda v: v * ndtr(v), bounds=(-3, 0), method="bounded", options={"xatol": 1e-10})
    assert GELU_MIN == pytest.approx(result.fun, abs=1e-14)
    at = torch.tensor(-0.7517915246935641, dtype=torch.float64)
    assert torch.nn.functional.gelu(at).item() == pytest.approx(GELU_MIN, abs=1e-16)
    assert torch.nn.functional.gelu(torch.linspace(-3, 0, 20001, dtype=torch.float64)).min() >= GELU_MIN


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_gelu_negative_range_ends_at_the_gelu_minimum_like_ptq4vit(bits: int) -> None:
    # PTQ4ViT (quant_layers/linear.py, PostGeluPTQSLBatchingQuantLinear): a_neg_interval =
    # 0.16997124254703522 / 2^(b-1), index clamped to [-2^(b-1), 0]: its lowest level is -0.16997...
    reference_lowest = -(2 ** (bits - 1)) * (0.16997124254703522 / 2 ** (bits - 1))
    grid = TwinGrid.gelu(bits, 0.1)
    assert grid.scale_low == pytest.approx(GELU_MIN / (2 ** (bits - 1) - 1), rel=1e-7)
    below = torch.tensor([GELU_MIN, -0.5, -3.0])  # nothing GELU gives lies below its minimum; clipped there
    lowest = twin_fake_quantize(below, grid)
    assert torch.allclose(lowest, torch.full((3,), GELU_MIN), rtol=1e-6, atol=0)
    assert lowest[0].item() == pytest.approx(reference_lowest, rel=1e-6)
    # at 4 bits the old step |min|/2^(b-1) stopped at -7/8 of the minimum (-0.149), not at -0.170
    assert twin_fake_quantize(torch.tensor([GELU_MIN]), grid).item() < GELU_MIN * (2 ** (bits - 1) - 1) / 2 ** (bits - 1)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: TwinGrid.softmax(1, 0), "bits"),
        (lambda: TwinGrid.softmax(17, 0), "bits"),
        (lambda: TwinGrid.softmax(8, -1), "shift"),
        (lambda: TwinGrid.softmax(8, 200), "shift"),
        (lambda: TwinGrid.gelu(8, 0.1, gelu_min=0.17), "gelu_min"),
        (lambda: TwinGrid.gelu(8, 0.0), "non-zero"),
        (lambda: TwinGrid.gelu(8, math.nan), "finite"),
    ],
)
def test_bad_grid_parameters_raise(build, match: str) -> None:
    with pytest.raises(QuantizationError, match=match):
        build()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda g: twin_fake_quantize(torch.tensor([0.1, math.nan]), g), "NaN or Inf"),
        (lambda g: twin_fake_quantize(torch.empty(0), g), "empty"),
        (lambda g: twin_encode(torch.tensor([math.inf]), g), "NaN or Inf"),
        (lambda g: twin_decode(torch.tensor([0, 64]), g), r"\[0, 63\]"),
        (lambda g: twin_decode(torch.tensor([-1]), g), r"\[0, 63\]"),
        (lambda g: twin_decode(torch.tensor([1.0]), g), "integer"),
        (lambda g: twin_errors(torch.rand(4), []), "at least one"),
        (lambda g: twin_errors(torch.rand(4), [g], lambda a, b: math.nan), "non-finite"),
    ],
)
def test_bad_input_raises(call, match: str) -> None:
    with pytest.raises(QuantizationError, match=match):
        call(TwinGrid.softmax(6, 2))
