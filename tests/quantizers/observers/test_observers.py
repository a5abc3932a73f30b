"""Observers: torch.ao oracles for the MinMax family, known distributions for the histogram and MSE
observers, an independent loop implementation of TensorRT's entropy calibration, state and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.ao.quantization as tq

from quantizers.errors import QuantizationError
from quantizers.functional.uniform import SCALE_EPS, fake_quantize, grid_range, qparams_from_minmax
from quantizers.registry import OBSERVERS, build_observer
from quantizers.observers import blocks
from quantizers.observers.blocks import row_blocks
from quantizers.observers.histogram import abs_histogram, kl_cut, power_of_two_above, widen
from quantizers.spec import Granularity, QuantSpec

KINDS = sorted(OBSERVERS)
CHANNEL = Granularity("channel", 0)


def _batches(count: int, shape: tuple[int, ...] = (6, 40), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * (1 + i) + 0.3 * i for i in range(count)]


def _observe(spec: QuantSpec, batches: list[torch.Tensor]):
    observer = build_observer(spec)
    for x in batches:
        assert observer(x) is x
    return observer


def _mse(spec: QuantSpec, qparams: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> float:
    qmin, qmax = grid_range(spec.bits, spec.symmetric, spec.signed)
    return float(((fake_quantize(x, *qparams, qmin, qmax, spec.granularity) - x) ** 2).mean())


def _torch_args(bits: int, symmetric: bool, per_channel: bool) -> dict:
    qmin, qmax = grid_range(bits, symmetric)
    if symmetric:
        scheme = torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric
        return {"dtype": torch.qint8, "qscheme": scheme, "quant_min": qmin, "quant_max": qmax}
    scheme = torch.per_channel_affine if per_channel else torch.per_tensor_affine
    return {"dtype": torch.quint8, "qscheme": scheme, "quant_min": qmin, "quant_max": qmax}


def _assert_same_qparams(ours: tuple[torch.Tensor, torch.Tensor], theirs: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert torch.equal(ours[0], theirs[0].reshape(-1))
    assert torch.equal(ours[1], theirs[1].reshape(-1).to(torch.int32))


# MinMax family against torch.ao --------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_minmax_matches_torch_over_batches(bits: int, symmetric: bool) -> None:
    batches = _batches(4)
    theirs = tq.MinMaxObserver(**_torch_args(bits, symmetric, per_channel=False))
    for x in batches:
        theirs(x)
    ours = _observe(QuantSpec(bits=bits, symmetric=symmetric), batches)
    _assert_same_qparams(ours.calculate_qparams(), theirs.calculate_qparams())


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_minmax_matches_torch(axis: int, symmetric: bool) -> None:
    batches = _batches(3, shape=(5, 7, 3))
    theirs = tq.PerChannelMinMaxObserver(ch_axis=axis, **_torch_args(6, symmetric, per_channel=True))
    for x in batches:
        theirs(x)
    spec = QuantSpec(bits=6, symmetric=symmetric, granularity=Granularity("channel", axis))
    _assert_same_qparams(_observe(spec, batches).calculate_qparams(), theirs.calculate_qparams())


@pytest.mark.parametrize("granularity", [Granularity("tensor"), CHANNEL])
def test_averaged_minmax_is_the_mean_of_batch_ranges(granularity: Granularity) -> None:
    batches = _batches(5)
    spec = QuantSpec(bits=8, observer="avg_minmax", granularity=granularity)
    dims = None if granularity.kind == "tensor" else 1
    lows = torch.stack([x.amin(dims) if dims else x.min() for x in batches]).double().mean(0)
    highs = torch.stack([x.amax(dims) if dims else x.max() for x in batches]).double().mean(0)
    expected = qparams_from_minmax(lows.float().reshape(-1), highs.float().reshape(-1), 8, False)
    scale, zp = _observe(spec, batches).calculate_qparams()
    assert torch.allclose(scale, expected[0], rtol=1e-6)
    assert (zp - expected[1]).abs().max() <= 1  # a rounding tie may move the zero point by one


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
def test_ema_minmax_matches_torch_moving_average(per_channel: bool, symmetric: bool) -> None:
    batches = _batches(6)
    args = _torch_args(8, symmetric, per_channel)
    if per_channel:
        theirs = tq.MovingAveragePerChannelMinMaxObserver(ch_axis=0, averaging_constant=0.01, **args)
    else:
        theirs = tq.MovingAverageMinMaxObserver(averaging_constant=0.01, **args)
    for x in batches:
        theirs(x)
    spec = QuantSpec(symmetric=symmetric, observer="ema_minmax", granularity=CHANNEL if per_channel else "tensor")
    _assert_same_qparams(_observe(spec, batches).calculate_qparams(), theirs.calculate_qparams())


# Percentile --------------------------------------------------------------------------------------


def _amax_from_symmetric_scale(scale: torch.Tensor, bits: int) -> torch.Tensor:
    qmin, qmax = grid_range(bits, True)
    return scale.double() * (qmax - qmin) / 2


def test_percentile_clips_outliers_and_matches_numpy_within_one_bin() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(200_000, generator=g) * 2 - 1
    x[:5] = torch.tensor([1000.0, -900.0, 800.0, 950.0, -1000.0])
    observer = _observe(QuantSpec(symmetric=True, observer="percentile"), [x])
    amax = float(_amax_from_symmetric_scale(observer.calculate_qparams()[0], 8))
    reference = float(np.percentile(x.abs().numpy(), 99.99))
    assert abs(amax - reference) <= 1000.0 / 2048
    assert amax < 2.0  # the outliers are clipped


def test_percentile_streaming_with_growing_range_matches_numpy_on_all_batches() -> None:
    g = torch.Generator().manual_seed(2)
    batches = []
    for k in range(4):
        x = (torch.rand(50_000, generator=g) * 2 - 1) * 2**k
        x[0] = 10.0 * 2**k  # each batch widens the histogram range
        batches.append(x)
    pooled = torch.cat(batches).abs().numpy()
    for percentile in (99.0, 99.99):
        spec = QuantSpec(symmetric=True, observer="percentile", observer_options={"percentile": percentile})
        amax = float(_amax_from_symmetric_scale(_observe(spec, batches).calculate_qparams()[0], 8))
        # The histogram is exact; interpolating inside one bin is off by at most its width.
        observer = _observe(spec, batches)
        assert abs(amax - np.percentile(pooled, percentile)) <= float(observer.bin_width)


def test_percentile_affine_keeps_an_observed_side_that_is_inside() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(100_000, generator=g)  # [0, 1): the min side (0) is inside the clip range
    x[:3] = 50.0
    spec = QuantSpec(bits=8, symmetric=False, observer="percentile", observer_options={"percentile": 99.9})
    scale, zp = _observe(spec, [x]).calculate_qparams()
    assert int(zp) == 0
    high = float(scale) * 255
    assert abs(high - np.percentile(x.numpy(), 99.9)) <= 50.0 / 2048


# KL (entropy calibration) ----------------------------------------------------------------------


def _kl_cut_loops(counts: np.ndarray, levels: int, start_bin: int) -> int:
    """Direct transcription of TensorRT's entropy calibration for one histogram."""
    end = int(np.nonzero(counts)[0].max()) + 1
    best, best_cut = math.inf, end
    for cut in range(max(start_bin, levels), end + 1):
        reference = counts[:cut].astype(np.float64).copy()
        reference[cut - 1] += counts[cut:].sum()
        size = cut // levels
        merged = np.zeros(cut)
        for level in range(levels):
            stop = cut if level == levels - 1 else (level + 1) * size
            occupied = reference[level * size : stop] > 0
            if occupied.any():
                merged[level * size : stop][occupied] = counts[level * size : stop].sum() / occupied.sum()
        p, q = reference / reference.sum(), merged / merged.sum()
        mask = p > 0
        if (q[mask] == 0).any():
            continue  # infinite divergence
        divergence = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if divergence < best - 1e-12:
            best, best_cut = divergence, cut
    return best_cut


def test_widen_moves_whole_bins() -> None:
    counts = torch.arange(1.0, 9.0, dtype=torch.float64).reshape(1, 8).repeat(3, 1)
    old, new = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), torch.tensor([2.0, 4.0, 8.0], dtype=torch.float64)
    expected = torch.tensor([[3.0, 7.0, 11.0, 15.0, 0, 0, 0, 0], [10.0, 26.0, 0, 0, 0, 0, 0, 0],
                             [36.0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float64)  # a zero range: all in bin 0
    assert torch.equal(widen(counts, old, new), expected)


def test_power_of_two_above_is_strictly_above() -> None:
    amax = torch.tensor([0.0, 1.0, 0.75, 3.0, 1e-40, 3e38])
    assert power_of_two_above(amax).tolist() == [0.0, 2.0, 1.0, 4.0, 2.0**-132, 2.0**128]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=30), min_size=1, max_size=6),
       st.integers(2, 64), st.randoms(use_true_random=False))
def test_streamed_histogram_is_the_histogram_of_all_the_data_in_any_order(batches, bins, random) -> None:
    """Order-free and exact: streaming batches (widening on the way) gives the counts of all the data
    at the final range, whatever the order of the batches."""
    spec = QuantSpec(observer="percentile", observer_options={"bins": bins})
    tensors = [torch.tensor(b, dtype=torch.float32) for b in batches]
    random.shuffle(tensors)
    streamed = _observe(spec, tensors)
    data = torch.cat(tensors)
    upper = power_of_two_above(data.abs().max().reshape(1))
    assert torch.equal(streamed.hist_range, upper)
    assert torch.equal(streamed.hist, abs_histogram(data.reshape(1, -1), upper, bins))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("levels,start_bin", [(8, 32), (2, 16), (128, 128)])
def test_kl_cut_matches_a_loop_implementation(seed: int, levels: int, start_bin: int) -> None:
    rng = np.random.default_rng(seed)
    samples = np.abs(np.concatenate([rng.standard_normal(20_000), rng.standard_normal(20) * 30]))
    counts, _ = np.histogram(samples, bins=256, range=(0, samples.max()))
    counts[rng.integers(0, 40, size=5)] = 0  # empty bins inside the bulk
    expected = _kl_cut_loops(counts, levels, start_bin)
    assert kl_cut(torch.from_numpy(counts).double(), levels, start_bin) == expected


def test_kl_clips_gaussian_outliers_and_beats_minmax_at_4_bits() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50_000, generator=g)
    x[:3] = torch.tensor([40.0, -40.0, 35.0])
    kl_spec = QuantSpec(bits=4, symmetric=True, observer="kl")
    kl = _observe(kl_spec, [x]).calculate_qparams()
    assert float(_amax_from_symmetric_scale(kl[0], 4)) < 10.0
    minmax_spec = QuantSpec(bits=4, symmetric=True)
    assert _mse(kl_spec, kl, x) < 0.5 * _mse(minmax_spec, _observe(minmax_spec, [x]).calculate_qparams(), x)


def test_kl_never_cuts_below_all_the_data() -> None:
    # Every cut below 9 leaves Q without mass where P holds the folded data: infinite divergence.
    x = 9.0 + torch.rand(10_000, generator=torch.Generator().manual_seed(8))
    scale, _ = _observe(QuantSpec(bits=8, symmetric=True, observer="kl"), [x]).calculate_qparams()
    assert 9.0 <= float(_amax_from_symmetric_scale(scale, 8)) <= float(x.max()) * (1 + 1e-6)


def test_kl_with_more_levels_than_bins_does_not_clip() -> None:
    x = torch.randn(5_000, generator=torch.Generator().manual_seed(5))
    spec = QuantSpec(bits=16, symmetric=True, observer="kl")
    minmax = QuantSpec(bits=16, symmetric=True)
    assert torch.equal(_observe(spec, [x]).calculate_qparams()[0], _observe(minmax, [x]).calculate_qparams()[0])


# MSE ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [2.0, 2.4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_beats_minmax_on_heavy_tailed_data(p: float, symmetric: bool) -> None:
    torch.manual_seed(6)
    x = torch.distributions.StudentT(2.0).sample((20_000,))
    spec = QuantSpec(bits=4, symmetric=symmetric, observer="mse", observer_options={"p": p})
    minmax = QuantSpec(bits=4, symmetric=symmetric)
    mse = _mse(spec, _observe(spec, [x]).calculate_qparams(), x)
    assert mse < 0.9 * _mse(minmax, _observe(minmax, [x]).calculate_qparams(), x)


@pytest.mark.parametrize("p", [2.0, 2.4])
def test_mse_picks_the_best_candidate_of_a_brute_force_search(p: float) -> None:
    torch.manual_seed(7)
    x = torch.distributions.Laplace(0.5, 1.0).sample((3_000,))
    options = {"p": p, "steps": 30, "step": 0.02}
    spec = QuantSpec(bits=3, symmetric=False, observer="mse", observer_options=options)
    qmin, qmax = grid_range(3, False)
    errors = []
    for i in range(30):
        f = 1 - 0.02 * i
        qparams = qparams_from_minmax(x.min() * f, x.max() * f, 3, False)
        errors.append(float(((fake_quantize(x, *qparams, qmin, qmax) - x).abs() ** p).mean()))
    f = 1 - 0.02 * int(np.argmin(errors))
    expected = qparams_from_minmax((x.min() * f).reshape(1), (x.max() * f).reshape(1), 3, False)
    scale, zp = _observe(spec, [x]).calculate_qparams()
    assert torch.allclose(scale, expected[0], rtol=1e-6)  # the factor itself may differ in the last bit
    assert torch.equal(zp, expected[1])


def test_mse_over_batches_averages_the_chosen_ranges() -> None:
    batches = _batches(3, shape=(500,))
    spec = QuantSpec(bits=4, observer="mse")
    singles = [_observe(spec, [x]) for x in batches]  # one batch: the state is that batch's best range
    assert all(float(o.max_val) < float(x.max()) for o, x in zip(singles, batches))  # ranges were shrunk
    lows = torch.stack([o.min_val for o in singles]).double().mean(0).float()
    highs = torch.stack([o.max_val for o in singles]).double().mean(0).float()
    scale, _ = _observe(spec, batches).calculate_qparams()
    assert torch.allclose(scale, qparams_from_minmax(lows, highs, 4, False)[0], rtol=1e-6)


@pytest.mark.parametrize("shape", [(7, 30), (1, 1000), (3, 250)])
def test_row_blocks_cover_every_element_once(shape: tuple[int, int]) -> None:
    rows = torch.arange(shape[0] * shape[1], dtype=torch.float32).reshape(shape)
    seen = torch.zeros(shape)
    for groups, block in row_blocks(rows, max_elements=100):
        assert block.numel() <= 100
        start = int(block[0, 0]) % shape[1]
        seen[groups, start : start + block.shape[1]] += 1
    assert torch.equal(seen, torch.ones(shape))


@pytest.mark.parametrize("kind", ["percentile", "kl", "mse"])
def test_blocked_reading_gives_the_same_qparams(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    x = _batches(1, shape=(4, 3000))[0]
    spec = QuantSpec(bits=4, observer=kind, granularity=CHANNEL)
    whole = _observe(spec, [x]).calculate_qparams()
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", 1000)  # rows longer than a block
    _assert_same_qparams(_observe(spec, [x]).calculate_qparams(), whole)
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", 6000)  # several rows per block
    _assert_same_qparams(_observe(spec, [x]).calculate_qparams(), whole)


# Every observer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["percentile", "kl", "mse"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_equals_per_tensor_on_each_channel(kind: str, symmetric: bool) -> None:
    batches = _batches(2, shape=(3, 2000))
    spec = QuantSpec(bits=4, symmetric=symmetric, observer=kind, granularity=CHANNEL)
    scale, zp = _observe(spec, batches).calculate_qparams()
    for c in range(3):
        single = _observe(spec.replace(granularity="tensor"), [x[c] for x in batches]).calculate_qparams()
        assert torch.allclose(scale[c : c + 1], single[0], rtol=1e-5)
        assert (zp[c : c + 1] - single[1]).abs().max() <= 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "granularity,groups", [(Granularity("channel", 0), 6), (Granularity("channel", -1), 10), (Granularity("group", 1, 5), 12)]
)
def test_one_qparam_per_group(kind: str, granularity: Granularity, groups: int) -> None:
    spec = QuantSpec(bits=4, observer=kind, granularity=granularity)
    scale, zp = _observe(spec, _batches(2, shape=(6, 10))).calculate_qparams()
    assert scale.shape == zp.shape == (groups,)
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32
    assert bool((scale > 0).all())


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trips_into_a_fresh_observer(kind: str) -> None:
    spec = QuantSpec(bits=4, observer=kind, granularity=CHANNEL)
    batches = _batches(4)
    observed = _observe(spec, batches[:3])
    fresh = build_observer(spec)
    fresh.load_state_dict(observed.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.calculate_qparams(), observed.calculate_qparams()))
    observed(batches[3])
    fresh(batches[3])  # the loaded state keeps streaming like the original
    assert all(torch.equal(a, b) for a, b in zip(fresh.calculate_qparams(), observed.calculate_qparams()))


@pytest.mark.parametrize("kind", KINDS)
def test_state_does_not_grow_with_batches(kind: str) -> None:
    def state_bytes(observer) -> int:
        return sum(t.numel() * t.element_size() for t in observer.state_dict().values())

    spec = QuantSpec(bits=4, observer=kind)
    batches = _batches(12, shape=(50, 20))
    observer = _observe(spec, batches[:1])
    after_one = state_bytes(observer)
    for x in batches[1:]:
        observer(x)
    assert state_bytes(observer) == after_one
    assert after_one <= 8 * 2048 + 64  # at most one histogram of 2048 float64 counts per tensor


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_all_zero_input_gives_the_eps_scale(kind: str, symmetric: bool) -> None:
    spec = QuantSpec(bits=8, symmetric=symmetric, observer=kind, granularity=CHANNEL)
    scale, zp = _observe(spec, [torch.zeros(3, 16)]).calculate_qparams()
    assert torch.equal(scale, torch.full((3,), SCALE_EPS))
    assert torch.equal(zp, torch.zeros(3, dtype=torch.int32))


@pytest.mark.parametrize("kind", ["percentile", "kl"])
def test_histogram_starting_from_zeros_grows_to_later_data(kind: str) -> None:
    spec = QuantSpec(bits=8, symmetric=True, observer=kind)
    x = torch.linspace(-2.0, 2.0, 4001)
    scale, _ = _observe(spec, [torch.zeros(100), x]).calculate_qparams()
    assert 1.0 < float(_amax_from_symmetric_scale(scale, 8)) <= 2.0 * (1 + 1e-6)  # float32 scale of the max


@pytest.mark.parametrize("kind", KINDS)
def test_qparams_before_data_raise(kind: str) -> None:
    with pytest.raises(QuantizationError, match="before any data"):
        build_observer(QuantSpec(observer=kind)).calculate_qparams()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "x,message",
    [(torch.empty(0, 3), "empty"), (torch.tensor([0.0, float("nan")]), "NaN"), (torch.tensor([float("-inf")]), "Inf")],
)
def test_bad_tensors_raise(kind: str, x: torch.Tensor, message: str) -> None:
    observer = build_observer(QuantSpec(observer=kind))
    with pytest.raises(QuantizationError, match=message):
        observer(x)
    assert int(observer.num_batches) == 0


@pytest.mark.parametrize("kind", ["percentile", "kl"])
def test_histogram_rejects_a_changing_number_of_groups(kind: str) -> None:
    observer = _observe(QuantSpec(observer=kind, granularity=CHANNEL), [torch.randn(4, 8)])
    with pytest.raises(QuantizationError, match="groups"):
        observer(torch.randn(5, 8))


@pytest.mark.parametrize(
    "kind,options,message",
    [
        ("percentile", {"percentile": 0}, "percentile"),
        ("percentile", {"percentile": 100.5}, "percentile"),
        ("percentile", {"bins": 1}, "bins"),
        ("percentile", {"bins": 20.5}, "bins"),
        ("kl", {"start_bin": 0}, "start_bin"),
        ("kl", {"bins": 64, "start_bin": 65}, "start_bin"),
        ("mse", {"p": 0}, "'p'"),
        ("mse", {"p": "2"}, "'p'"),
        ("mse", {"steps": 0}, "steps"),
        ("mse", {"steps": True}, "steps"),
        ("mse", {"step": 0.02, "steps": 100}, "step"),
        ("ema_minmax", {"momentum": 0.0}, "momentum"),
    ],
)
def test_bad_options_raise(kind: str, options: dict, message: str) -> None:
    with pytest.raises(QuantizationError, match=message):
        build_observer(QuantSpec(observer=kind, observer_options=options))


@pytest.mark.parametrize("name", ["minmax", "avg_minmax", "ema_minmax", "mse"])
def test_group_count_change_between_batches_is_named(name):
    observer = build_observer(QuantSpec(bits=8, granularity=Granularity("channel", axis=0), observer=name))
    observer(torch.randn(4, 8))
    with pytest.raises(QuantizationError, match="quantization groups"):
        observer(torch.randn(5, 8))
