"""LogQuantizer (AGQ): calibration over batches, known answer against uniform, modes, state."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from quantizers.errors import QuantizationError
from quantizers.functional.log import LogGrid, agq_search, agq_searches, attention_output_error, log_fake_quantize
from quantizers.modules.base import Mode
from quantizers.registry import build_quantizer
from quantizers.modules.log import LogQuantizer
from quantizers.spec import QuantSpec


def _attention(
    seed: int, sigmas: tuple[float, ...], n: int = 64, d: int = 8, peaks: int = 0, peak: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax maps, one head per logit scale in ``sigmas``, plus ``peaks`` boosted keys per row."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(sigmas), n, n, generator=g) * torch.tensor(sigmas).view(-1, 1, 1)
    if peaks:
        keys = torch.randint(0, n, (len(sigmas), n, peaks), generator=g)
        logits.scatter_add_(-1, keys, torch.full(keys.shape, peak))
    return torch.softmax(logits, -1), torch.randn(len(sigmas), n, d, generator=g)


def _calibrated(spec: QuantSpec, batches: list[tuple[torch.Tensor, ...]]) -> LogQuantizer:
    quantizer = build_quantizer(spec)
    quantizer.mode = Mode.OBSERVE
    for batch in batches:
        quantizer(*batch)
    quantizer.finalize()
    quantizer.mode = Mode.QUANTIZE
    return quantizer


def test_agq_4bit_beats_uniform_4bit_on_attention_output() -> None:
    # Heads of different sharpness (logit scales 1..4) with 3 boosted keys per row, 256 tokens.
    a, v = _attention(0, (1.0, 2.0, 3.0, 4.0), n=256, d=32, peaks=3, peak=4.0)
    log_q = _calibrated(QuantSpec(bits=4, quantizer="log"), [(a, v)])
    uniform_q = _calibrated(QuantSpec(bits=4, symmetric=True, signed=False, observer="minmax"), [(a,)])
    log_error = (log_q(a) @ v - a @ v).abs().mean().item()
    uniform_error = (uniform_q(a) @ v - a @ v).abs().mean().item()
    print(f"4-bit |ÂV − AV| mean: AGQ {log_error:.5f} (tau {float(log_q.tau):g}), "
          f"uniform MinMax {uniform_error:.5f}, ratio {log_error / uniform_error:.3f}")
    assert log_error < 0.8 * uniform_error


def test_tau_is_argmin_of_summed_errors_and_scale_the_mean_of_its_batch_scales() -> None:
    # At 3 bits the softer batch prefers tau = 1 and the sharper one tau = 2; observed sharper first.
    batches = [_attention(1, (4.0, 4.0)), _attention(2, (2.0, 2.0))]
    taus = (1.0, 2.0, 4.0)
    per_batch = [[agq_search(a, v, 3, tau) for tau in taus] for a, v in batches]
    best_per_batch = [min(range(3), key=lambda i: results[i][1]) for results in per_batch]
    assert best_per_batch[0] != best_per_batch[1]  # the batches disagree: the sum must decide
    summed = [per_batch[0][i][1] + per_batch[1][i][1] for i in range(3)]
    best = min(range(3), key=lambda i: summed[i])
    assert best != best_per_batch[-1]  # not simply the last batch's choice

    quantizer = _calibrated(QuantSpec(bits=3, quantizer="log"), batches)
    assert float(quantizer.tau) == taus[best]
    assert float(quantizer.scale) == (per_batch[0][best][0] + per_batch[1][best][0]) / 2
    torch.testing.assert_close(quantizer.error_sums, torch.tensor(summed, dtype=torch.float64), rtol=1e-12, atol=0)


def test_without_v_the_error_is_measured_on_the_map() -> None:
    a, _ = _attention(3, (2.0, 3.0))
    quantizer = _calibrated(QuantSpec(bits=4, quantizer="log", quantizer_options={"taus": [2]}), [(a,)])
    scale, error = agq_search(a, None, 4, 2.0)
    assert float(quantizer.scale) == scale
    assert float(quantizer.error_sums[0]) == error == attention_output_error(a, None, LogGrid.build(scale, 2, 4))


def test_fixed_scale_single_tau_needs_no_data_and_is_fqvit_log2() -> None:
    spec = QuantSpec(bits=4, quantizer="log", quantizer_options={"taus": [1], "scale": 1.0})
    quantizer = _calibrated(spec, [])
    x = torch.tensor([1.0, 0.7, 0.3, 0.01, 1e-6, 0.0])
    expected = torch.tensor([1.0, 0.5, 0.25, 2.0**-7, 0.0, 0.0])  # round(−log2 x) = 0, 1, 2, 7, 20 (zero)
    assert torch.equal(quantizer(x), expected)


def test_fixed_scale_with_several_taus_chooses_tau_from_data() -> None:
    a, v = _attention(4, (3.0, 3.0))
    spec = QuantSpec(bits=3, quantizer="log", quantizer_options={"taus": [1, 2], "scale": 0.5})
    quantizer = _calibrated(spec, [(a, v)])
    errors = [attention_output_error(a, v, LogGrid.build(0.5, tau, 3)) for tau in (1, 2)]
    assert float(quantizer.scale) == 0.5
    assert float(quantizer.tau) == (1.0 if errors[0] <= errors[1] else 2.0)


def test_modes() -> None:
    a, v = _attention(5, (2.0,))
    quantizer = build_quantizer(QuantSpec(bits=4, quantizer="log", quantizer_options={"taus": [2]}))
    assert isinstance(quantizer, LogQuantizer)
    assert quantizer(a) is a  # off
    assert int(quantizer.num_batches) == 0
    quantizer.mode = Mode.QUANTIZE
    with pytest.raises(QuantizationError, match="never calibrated"):
        quantizer(a)
    quantizer.mode = Mode.OBSERVE
    before = a.clone()
    assert quantizer(a, v) is a and torch.equal(a, before)
    assert int(quantizer.num_batches) == 1
    quantizer.finalize()
    quantizer.mode = Mode.QUANTIZE
    assert torch.equal(quantizer(a), log_fake_quantize(a, quantizer.grid))


def test_state_dict_round_trip_into_a_fresh_quantizer() -> None:
    a, v = _attention(6, (1.0, 4.0))
    spec = QuantSpec(bits=4, quantizer="log", quantizer_options={"taus": [1, 2], "p": 2.0})
    quantizer = _calibrated(spec, [(a, v)])
    fresh = build_quantizer(spec)
    fresh.load_state_dict(quantizer.state_dict())
    fresh.mode = Mode.QUANTIZE
    assert fresh.is_calibrated
    assert torch.equal(fresh(a), quantizer(a))


def test_finalize_before_data_raises() -> None:
    with pytest.raises(QuantizationError, match="before any data"):
        build_quantizer(QuantSpec(bits=4, quantizer="log")).finalize()


def test_negative_observed_input_raises() -> None:
    quantizer = build_quantizer(QuantSpec(bits=4, quantizer="log", quantizer_options={"taus": [2]}))
    quantizer.mode = Mode.OBSERVE
    with pytest.raises(QuantizationError, match="non-negative"):
        quantizer(torch.tensor([[0.5, -0.5], [0.2, 0.8]]))


def test_maps_larger_than_search_numel_are_searched_on_a_row_sample() -> None:
    a, v = _attention(2, (1.0, 2.0, 4.0), n=128, d=16, peaks=2, peak=3.0)  # 3 × 128 × 128 = 49,152
    spec = QuantSpec(bits=4, quantizer="log")
    exhaustive = build_quantizer(spec).summarize(a, v)
    whole = build_quantizer(replace(spec, quantizer_options={"search_numel": a.numel()})).summarize(a, v)
    assert all(torch.equal(x, y) for x, y in zip(whole, exhaustive))
    sampled = build_quantizer(replace(spec, quantizer_options={"search_numel": 3 * 16 * 128})).summarize(a, v)
    found = agq_searches(a, v, 4, (1.0, 2.0, 4.0), max_rows=16)
    assert sampled[0].tolist() == [s for s, _ in found] and sampled[1].tolist() == [e for _, e in found]
    assert not torch.equal(sampled[0], exhaustive[0])


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"taus": []}, "at least one"),
        ({"taus": [0]}, "tau"),
        ({"taus": [2, 100]}, "tau"),
        ({"taus": ["2"]}, "tau"),
        ({"p": -1.0}, "p must"),
        ({"p": float("inf")}, "p must"),
        ({"scale": 0.0}, "scale"),
        ({"search_numel": 0}, "search_numel"),
        ({"search_numel": 1.5}, "search_numel"),
    ],
)
def test_bad_options_raise(options: dict, match: str) -> None:
    with pytest.raises(QuantizationError, match=match):
        build_quantizer(QuantSpec(bits=4, quantizer="log", quantizer_options=options))
