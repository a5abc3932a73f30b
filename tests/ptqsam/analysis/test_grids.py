"""Quantizer grids: the levels drawn over histograms are exactly the values the quantizer outputs
(oracle: the distinct outputs of its own fake_quantize on a dense input covering the whole grid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptqsam.analysis import grid_levels
from ptqsam.errors import AnalysisError
from quantizers import QuantSpec, Quantizer, build_quantizer


def _calibrated(data: torch.Tensor, **spec) -> Quantizer:
    quantizer = build_quantizer(QuantSpec(**spec))
    quantizer.observe(data)
    quantizer.finalize()
    return quantizer


def _outputs(quantizer: Quantizer, *pieces: torch.Tensor) -> np.ndarray:
    """Distinct values ``quantizer`` outputs on the concatenated inputs."""
    return np.unique(quantizer.fake_quantize(torch.cat(pieces)).numpy())


@pytest.mark.parametrize("bits, symmetric", [(4, False), (8, True), (3, True)])
def test_uniform_levels_are_the_fake_quantize_outputs(bits: int, symmetric: bool) -> None:
    data = torch.randn(5000, generator=torch.Generator().manual_seed(bits)) * 3 + 1
    quantizer = _calibrated(data, bits=bits, symmetric=symmetric)
    grid = grid_levels(quantizer)
    levels = grid.levels["levels"]
    dense = torch.linspace(grid.clip[0] - 1, grid.clip[1] + 1, 200_001)
    assert levels.size == 2**bits
    np.testing.assert_array_equal(levels, _outputs(quantizer, dense))
    assert grid.clip == (float(levels[0]), float(levels[-1]))
    assert grid.kind == "uniform" and not grid.log_axis and grid.split is None


def test_per_channel_uniform_has_no_shared_levels_and_the_widest_clip_range() -> None:
    weight = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)) * torch.arange(1.0, 7.0)[:, None]
    quantizer = _calibrated(weight, bits=4, symmetric=True, granularity={"kind": "channel", "axis": 0})
    grid = grid_levels(quantizer)
    huge = torch.tensor([-1e6, 1e6]).repeat(6, 1)  # every channel's input beyond its clip range
    clipped = quantizer.fake_quantize(huge)
    assert grid.levels == {}
    assert grid.clip == (float(clipped.min()), float(clipped.max()))
    assert "6 channels" in grid.description


@pytest.mark.parametrize("bits, tau, scale", [(3, 2.0, 0.5), (4, 4.0, 0.8), (4, 1.0, 1.0)])
def test_log_levels_are_the_fake_quantize_outputs_with_the_zero_code(bits: int, tau: float, scale: float) -> None:
    options = {"taus": [tau], "scale": scale}
    quantizer = build_quantizer(QuantSpec(bits=bits, quantizer="log", quantizer_options=options))
    quantizer.finalize()  # a single tau with a fixed scale needs no data
    grid = grid_levels(quantizer)
    dense = torch.cat([torch.zeros(1), torch.logspace(-9, 0.5, 200_000, dtype=torch.float64).float()])
    assert grid.levels["levels"].size == 2**bits + 1
    np.testing.assert_array_equal(grid.levels["levels"], _outputs(quantizer, dense))
    assert grid.log_axis and f"τ={tau:g}" in grid.description
    assert grid.clip == (0.0, pytest.approx(scale))


@pytest.mark.parametrize("shift", [0, 2, 5])
def test_twin_softmax_levels_are_the_fake_quantize_outputs(shift: int) -> None:
    quantizer = build_quantizer(QuantSpec(bits=4, quantizer="twin_softmax"))
    quantizer.shift.fill_(shift)
    quantizer.calibrated.fill_(True)
    grid = grid_levels(quantizer)
    below = torch.linspace(0.0, grid.split, 100_001)[:-1]
    above = torch.linspace(grid.split, 1.2, 100_001)
    np.testing.assert_array_equal(grid.levels["low range"], _outputs(quantizer, below))
    np.testing.assert_array_equal(grid.levels["high range"], _outputs(quantizer, above))
    assert grid.split == 2.0**-shift and grid.log_axis
    assert grid.levels["low range"].size == 8


def test_twin_gelu_levels_are_the_fake_quantize_outputs() -> None:
    quantizer = build_quantizer(QuantSpec(bits=5, quantizer="twin_gelu"))
    quantizer.scale_pos.fill_(0.05)
    quantizer.calibrated.fill_(True)
    grid = grid_levels(quantizer)
    negative, positive = torch.linspace(-0.3, 0.0, 100_001)[:-1], torch.linspace(0.0, 1.5, 300_001)
    np.testing.assert_array_equal(grid.levels["low range"], _outputs(quantizer, negative))
    np.testing.assert_array_equal(grid.levels["high range"], _outputs(quantizer, positive))
    assert grid.split == 0.0 and not grid.log_axis
    assert grid.levels["low range"].max() == 0.0 and grid.levels["low range"].min() < 0.0
    assert grid.clip == (float(grid.levels["low range"].min()), pytest.approx(15 * 0.05))


def test_grid_needs_a_calibrated_quantizer_of_a_known_kind() -> None:
    with pytest.raises(AnalysisError, match="not calibrated"):
        grid_levels(build_quantizer(QuantSpec(bits=8)))

    class Other(Quantizer):
        """A quantizer kind the grid module does not know (identity numerics)."""

        def observe(self, x, *context):
            pass

        def _finalize(self):
            pass

        def fake_quantize(self, x):
            return x

    other = Other(QuantSpec(bits=8))
    other.calibrated.fill_(True)
    with pytest.raises(AnalysisError, match="no grid is known"):
        grid_levels(other)
