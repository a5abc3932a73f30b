"""Bimodal sign fold (BIG): detection, signs, exactness of the fold, and what it buys a quantizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from quantizers.errors import QuantizationError
from quantizers.functional.uniform import fake_quantize, grid_range, qparams_from_minmax
from quantizers.transforms.bimodal import BimodalConfig, channel_signs, detect_bimodal, fold_signs

TOKENS, CHANNELS, HEADS = 4096, 128, 8


def bimodal_keys(mu: float = 4.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys whose channel c is N(s_c·mu, 1) with a random sign s_c; returns (keys, s)."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.where(torch.rand(CHANNELS, generator=g) < 0.5, -1.0, 1.0)
    return signs * mu + torch.randn(TOKENS, CHANNELS, generator=g), signs


def minmax_affine_error(t: torch.Tensor, bits: int = 4) -> float:
    """MSE of per-tensor affine MinMax fake quantization."""
    scale, zero_point = qparams_from_minmax(t.min(), t.max(), bits, symmetric=False)
    qmin, qmax = grid_range(bits, symmetric=False)
    return ((fake_quantize(t, scale, zero_point, qmin, qmax) - t) ** 2).mean().item()


def head_logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per-head q·kᵀ: (heads, Nq, Nk)."""
    qh = q.reshape(q.shape[0], HEADS, -1).transpose(0, 1)
    kh = k.reshape(k.shape[0], HEADS, -1).transpose(0, 1)
    return qh @ kh.transpose(1, 2)


# --- detection ----------------------------------------------------------------------------------


def test_per_channel_signed_keys_are_bimodal():
    keys, _ = bimodal_keys()
    result = detect_bimodal(keys)
    assert result.is_bimodal
    low, high = result.peaks
    assert low == pytest.approx(-4.0, abs=0.5) and high == pytest.approx(4.0, abs=0.5)
    assert result.grid.shape == result.density.shape == (128,)
    assert result.grid[0] < result.grid[-1]


def test_gaussian_is_not_bimodal():
    result = detect_bimodal(torch.randn(TOKENS, CHANNELS, generator=torch.Generator().manual_seed(1)))
    assert not result.is_bimodal
    assert len(result.peaks) == 1


def test_three_modes_are_not_bimodal():
    g = torch.Generator().manual_seed(2)
    modes = torch.tensor([-8.0, 0.0, 8.0])[torch.randint(0, 3, (30000,), generator=g)]
    assert len(detect_bimodal(modes + torch.randn(30000, generator=g)).peaks) == 3


def test_detection_is_deterministic_and_follows_its_config():
    keys, _ = bimodal_keys(seed=3)
    first, second = detect_bimodal(keys), detect_bimodal(keys)
    assert first.peaks == second.peaks and np.array_equal(first.density, second.density)
    coarse = detect_bimodal(keys, BimodalConfig(grid_points=64, min_distance=8, max_values=5000, seed=7))
    assert coarse.grid.shape == (64,) and coarse.is_bimodal
    # Peaks of the ±4 modes lie ~51 of 128 grid points apart: a larger minimum distance keeps one.
    assert not detect_bimodal(keys, BimodalConfig(min_distance=80)).is_bimodal


@pytest.mark.parametrize(
    "tensor, message",
    [
        (torch.full((10, 4), 2.0), "constant"),
        (torch.tensor([[1.0, float("nan")]]), "NaN"),
        (torch.empty(0, 4), "empty"),
    ],
)
def test_detection_rejects_bad_input(tensor, message):
    with pytest.raises(QuantizationError, match=message):
        detect_bimodal(tensor)


@pytest.mark.parametrize(
    "options", [{"grid_points": 2}, {"min_distance": 0}, {"max_values": -1}, {"height_fraction": 1.0}]
)
def test_bad_config_raises(options):
    with pytest.raises(QuantizationError):
        BimodalConfig(**options)


# --- signs --------------------------------------------------------------------------------------


def test_signs_follow_channel_means_and_are_never_zero():
    keys, signs = bimodal_keys()
    keys[:, 5] = torch.tensor([1.0, -1.0]).repeat(TOKENS // 2)  # mean exactly 0
    keys[:, 6] = 0.0
    gamma = channel_signs(keys)
    assert gamma.shape == (CHANNELS,)
    assert bool(((gamma == 1) | (gamma == -1)).all())  # no zeros
    assert gamma[5] == 1 and gamma[6] == 1
    others = torch.ones(CHANNELS, dtype=torch.bool)
    others[[5, 6]] = False
    assert torch.equal(gamma[others], signs[others])


def test_signs_along_another_axis_over_batched_keys():
    keys, signs = bimodal_keys()
    batched = keys.T.reshape(CHANNELS, 2, TOKENS // 2).permute(1, 0, 2)  # (batch, channel, token)
    assert torch.equal(channel_signs(batched, channel_axis=1), signs)
    with pytest.raises(QuantizationError, match="channel_axis"):
        channel_signs(keys, channel_axis=2)


# --- fold ---------------------------------------------------------------------------------------


def test_sign_flip_keeps_multi_head_logits():
    keys, _ = bimodal_keys()
    queries = torch.randn(64, CHANNELS, generator=torch.Generator().manual_seed(4)) + 1.0
    gamma = channel_signs(keys)
    before = head_logits(queries.double(), keys.double())
    after = head_logits((queries * gamma).double(), (keys * gamma).double())
    assert torch.equal(after, before)  # exact: every product gets γ² = 1
    after32 = head_logits(queries * gamma, keys * gamma)
    assert (after32.double() - before).norm() / before.norm() < 1e-5


def test_fold_halves_4bit_minmax_error_at_least():
    keys, _ = bimodal_keys()
    before = minmax_affine_error(keys)
    after = minmax_affine_error(keys * channel_signs(keys))
    print(f"4-bit per-tensor affine MinMax MSE on K: before {before:.5f}, after {after:.5f}, ratio {before / after:.2f}")
    assert before / after >= 2.0
    assert not detect_bimodal(keys * channel_signs(keys)).is_bimodal


def test_fold_into_linear_projections_reproduces_attention_logits():
    torch.manual_seed(5)
    dim = 32
    q_proj, k_proj = nn.Linear(dim, CHANNELS), nn.Linear(dim, CHANNELS)
    with torch.no_grad():
        k_proj.weight.mul_(0.1)
        k_proj.bias.copy_(torch.where(torch.rand(CHANNELS) < 0.5, -3.0, 3.0))  # bimodal keys
    tokens, image = torch.randn(7, dim), torch.randn(TOKENS // 4, dim)
    with torch.no_grad():
        keys = k_proj(image)
        logits = head_logits(q_proj(tokens), keys)
        assert detect_bimodal(keys).is_bimodal
        gamma = channel_signs(keys)
        fold_signs(q_proj, k_proj, gamma)
        folded_keys = k_proj(image)
        folded_logits = head_logits(q_proj(tokens), folded_keys)
    assert torch.allclose(folded_keys, keys * gamma, rtol=0, atol=1e-6)
    assert bool((folded_keys.mean(dim=0) > 0).all())
    assert (folded_logits - logits).norm() / logits.norm() < 1e-5
    assert not detect_bimodal(folded_keys).is_bimodal


def test_fold_without_bias_and_bad_signs():
    q_proj, k_proj = nn.Linear(4, 6, bias=False), nn.Linear(4, 6, bias=False)
    weights = (q_proj.weight.detach().clone(), k_proj.weight.detach().clone())
    gamma = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0])
    fold_signs(q_proj, k_proj, gamma)
    assert torch.equal(q_proj.weight, weights[0] * gamma[:, None])
    assert torch.equal(k_proj.weight, weights[1] * gamma[:, None])
    with pytest.raises(QuantizationError, match="zero a channel"):
        fold_signs(q_proj, k_proj, torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(QuantizationError, match="one sign per channel"):
        fold_signs(q_proj, k_proj, torch.ones(5))
    with pytest.raises(QuantizationError, match="one sign per channel"):
        fold_signs(nn.Linear(4, 5), k_proj, torch.ones(6))
    with pytest.raises(QuantizationError, match="nn.Linear"):
        fold_signs(nn.Conv1d(4, 6, 1), k_proj, torch.ones(6))  # type: ignore[arg-type]


def test_the_grid_spans_all_values_not_the_kde_sample():
    """``min_distance`` is counted in grid points, so the grid's ends must be the data's (REFERENCE:
    128 points between min and max), however few values the KDE draws."""
    keys, _ = bimodal_keys(seed=4)
    keys[0, 0], keys[1, 1] = -40.0, 40.0  # two extremes a 5000-value sample almost surely misses
    result = detect_bimodal(keys, BimodalConfig(max_values=5000))
    assert (result.grid[0], result.grid[-1]) == (-40.0, 40.0)
    sample = keys.reshape(-1)[:5000]  # a caller's own sample, with the range of everything it saw
    assert tuple(detect_bimodal(sample, value_range=(-40.0, 40.0)).grid[[0, -1]]) == (-40.0, 40.0)
    with pytest.raises(QuantizationError, match="value_range"):
        detect_bimodal(keys, value_range=(-1.0, 1.0))
