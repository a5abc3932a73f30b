"""Twin-uniform quantizer modules: streaming search, known answers against uniform, modes, state."""

from __future__ import annotations

import pytest
import torch

from quantizers.errors import QuantizationError
from quantizers.functional.twin import GELU_MIN, TwinGrid, twin_errors, twin_fake_quantize
from quantizers.modules.base import Mode, Quantizer
from quantizers.registry import build_quantizer
from quantizers.modules.twin import TwinGeluQuantizer, TwinSoftmaxQuantizer
from quantizers.spec import QuantSpec

SOFTMAX_6 = QuantSpec(bits=6, quantizer="twin_softmax")
GELU_6 = QuantSpec(bits=6, quantizer="twin_gelu", quantizer_options={"steps": 40})


def _post_softmax(seed: int, shape: tuple[int, int, int] = (4, 128, 196)) -> torch.Tensor:
    """Softmax of peaked logits: N(0, 3²) plus two boosted keys per row."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 3
    keys = torch.randint(0, shape[-1], (*shape[:-1], 2), generator=g)
    logits.scatter_add_(-1, keys, torch.full(keys.shape, 6.0))
    return torch.softmax(logits, -1)


def _post_gelu(seed: int, shape: tuple[int, int] = (64, 768), tail_mean: float = 3.0) -> torch.Tensor:
    """GELU of N(−0.5, 1) pre-activations, 0.5 % of them pushed up by an exponential tail."""
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(shape, generator=g) - 0.5
    tail = torch.empty(shape).exponential_(1 / tail_mean, generator=g)
    pre += (torch.rand(shape, generator=g) < 0.005) * tail
    return torch.nn.functional.gelu(pre)


def _calibrated(spec: QuantSpec, batches: list[torch.Tensor]) -> Quantizer:
    quantizer = build_quantizer(spec)
    quantizer.mode = Mode.OBSERVE
    for batch in batches:
        quantizer(batch)
    quantizer.finalize()
    quantizer.mode = Mode.QUANTIZE
    return quantizer


def _mse(quantizer: Quantizer, x: torch.Tensor) -> float:
    return ((quantizer(x) - x) ** 2).mean().item()


def test_factory_builds_the_twin_quantizers() -> None:
    assert isinstance(build_quantizer(SOFTMAX_6), TwinSoftmaxQuantizer)
    assert isinstance(build_quantizer(GELU_6), TwinGeluQuantizer)


def test_softmax_twin_6bit_beats_uniform_6bit_minmax() -> None:
    x = _post_softmax(0)
    twin = _calibrated(SOFTMAX_6, [x])
    uniform = _calibrated(QuantSpec(bits=6, symmetric=True, signed=False, observer="minmax"), [x])
    twin_mse, uniform_mse = _mse(twin, x), _mse(uniform, x)
    print(f"post-softmax 6-bit MSE: twin {twin_mse:.3e} (m={int(twin.shift)}), uniform MinMax {uniform_mse:.3e}, "
          f"ratio {twin_mse / uniform_mse:.3f}")
    assert twin_mse < 0.8 * uniform_mse


def test_gelu_twin_6bit_beats_uniform_6bit_minmax() -> None:
    x = _post_gelu(0)
    twin = _calibrated(QuantSpec(bits=6, quantizer="twin_gelu"), [x])
    uniform = _calibrated(QuantSpec(bits=6, symmetric=False, observer="minmax"), [x])
    twin_mse, uniform_mse = _mse(twin, x), _mse(uniform, x)
    print(f"post-GELU 6-bit MSE: twin {twin_mse:.3e} (Δ+={float(twin.scale_pos):.4f}), uniform MinMax "
          f"{uniform_mse:.3e}, ratio {twin_mse / uniform_mse:.3f}")
    assert twin_mse < 0.8 * uniform_mse


def test_softmax_shift_is_argmin_of_errors_summed_over_batches() -> None:
    diffuse = torch.softmax(torch.randn(2, 32, 64, generator=torch.Generator().manual_seed(2)), -1)
    batches = [diffuse, _post_softmax(1, (2, 32, 64))]
    quantizer = _calibrated(QuantSpec(bits=5, quantizer="twin_softmax", quantizer_options={"max_shift": 12}), batches)
    grids = [TwinGrid.softmax(5, m) for m in range(13)]
    per_batch = [twin_errors(b, grids) for b in batches]
    summed = per_batch[0] + per_batch[1]
    assert int(per_batch[0].argmin()) != int(per_batch[1].argmin())  # the sum must decide
    assert int(summed.argmin()) != int(per_batch[-1].argmin())  # not simply the last batch's choice
    torch.testing.assert_close(quantizer.error_sums, summed, rtol=1e-12, atol=0)
    assert int(quantizer.shift) == int(summed.argmin())
    assert quantizer.grid == grids[int(quantizer.shift)]


def test_gelu_scale_is_best_fraction_times_mean_batch_max() -> None:
    batches = [_post_gelu(3, (16, 256)), _post_gelu(4, (16, 256), tail_mean=8.0)]
    quantizer = _calibrated(GELU_6, batches)
    maxima = [float(b.max()) for b in batches]
    assert maxima[0] != maxima[1]
    fractions = [0.01 + i * (1.2 - 0.01) / 40 for i in range(41)]  # PTQ4ViT: eq_alpha, eq_beta, eq_n
    summed = sum(twin_errors(b, [TwinGrid.gelu(6, f * top / 31.5) for f in fractions])
                 for b, top in zip(batches, maxima))
    best = int(summed.argmin())
    assert float(quantizer.scale_pos) == fractions[best] * ((sum(maxima) / 2) / 31.5)
    assert quantizer.grid == TwinGrid.gelu(6, fractions[best] * ((sum(maxima) / 2) / 31.5), GELU_MIN)


def test_gelu_candidates_reach_ptq4vit_s_1_2_times_the_initial_step() -> None:
    x = _post_gelu(8, (16, 256))
    quantizer = build_quantizer(QuantSpec(bits=4, quantizer="twin_gelu"))
    scales = [grid.scale_high for grid in quantizer.candidates(x)]
    initial = float(x.max()) / (2**3 - 0.5)  # PTQ4ViT's a_interval = max / (a_qmax - 0.5)
    assert len(scales) == 101
    assert scales[0] == pytest.approx(0.01 * initial, rel=1e-6)
    assert scales[-1] == pytest.approx(1.2 * initial, rel=1e-6)


def test_objective_can_be_plugged_in() -> None:
    x = _post_softmax(5, (2, 16, 32))
    quantizer = build_quantizer(SOFTMAX_6)

    def max_abs(x_hat: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
        return (x_hat - x_ref).abs().max()

    quantizer.objective = max_abs
    quantizer.mode = Mode.OBSERVE
    quantizer(x)
    expected = twin_errors(x, [TwinGrid.softmax(6, m) for m in range(20)], max_abs)
    assert torch.equal(quantizer.error_sums, expected)


@pytest.mark.parametrize("spec", [SOFTMAX_6, GELU_6])
def test_modes_and_quantize_before_calibration(spec: QuantSpec) -> None:
    x = _post_gelu(6, (8, 64)) if spec is GELU_6 else _post_softmax(6, (2, 8, 64))
    quantizer = build_quantizer(spec)
    assert quantizer(x) is x  # off
    quantizer.mode = Mode.QUANTIZE
    with pytest.raises(QuantizationError, match="never calibrated"):
        quantizer(x)
    quantizer.mode = Mode.OBSERVE
    before = x.clone()
    assert quantizer(x) is x and torch.equal(x, before)
    assert int(quantizer.num_batches) == 1
    quantizer.finalize()
    quantizer.mode = Mode.QUANTIZE
    assert torch.equal(quantizer(x), twin_fake_quantize(x, quantizer.grid))


@pytest.mark.parametrize("spec", [SOFTMAX_6, GELU_6])
def test_state_dict_round_trip_into_a_fresh_quantizer(spec: QuantSpec) -> None:
    x = _post_gelu(7, (8, 64)) if spec is GELU_6 else _post_softmax(7, (2, 8, 64))
    quantizer = _calibrated(spec, [x, x * 0.5])
    fresh = build_quantizer(spec)
    fresh.load_state_dict(quantizer.state_dict())
    fresh.mode = Mode.QUANTIZE
    assert fresh.is_calibrated
    assert fresh.grid == quantizer.grid
    assert torch.equal(fresh(x), quantizer(x))


@pytest.mark.parametrize("spec", [SOFTMAX_6, GELU_6])
def test_finalize_before_data_raises(spec: QuantSpec) -> None:
    with pytest.raises(QuantizationError, match="before any data"):
        build_quantizer(spec).finalize()


def test_gelu_batch_without_positive_values_raises() -> None:
    quantizer = build_quantizer(GELU_6)
    quantizer.mode = Mode.OBSERVE
    with pytest.raises(QuantizationError, match="no positive value"):
        quantizer(torch.full((4, 4), -0.1))


@pytest.mark.parametrize(
    ("kind", "options", "match"),
    [
        ("twin_softmax", {"max_shift": -1}, "max_shift"),
        ("twin_softmax", {"max_shift": 2.5}, "max_shift"),
        ("twin_softmax", {"max_shift": 500}, "shift"),
        ("twin_gelu", {"steps": 0}, "steps"),
        ("twin_gelu", {"alpha": 0.0}, "alpha"),
        ("twin_gelu", {"alpha": 0.5, "beta": 0.4}, "beta"),
        ("twin_gelu", {"gelu_min": 0.17}, "gelu_min"),
        ("twin_gelu", {"gelu_min": "low"}, "gelu_min"),
    ],
)
def test_bad_options_raise(kind: str, options: dict, match: str) -> None:
    with pytest.raises(QuantizationError, match=match):
        build_quantizer(QuantSpec(bits=6, quantizer=kind, quantizer_options=options))
