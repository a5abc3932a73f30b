"""RepQ-ViT's fold: the LayerNorm → Linear function is unchanged, and every channel of the folded
activation spans the same range."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantizers.errors import QuantizationError
from quantizers.transforms.repq import fold_into, fold_parameters


def test_the_fold_keeps_the_output_and_aligns_the_channel_ranges():
    torch.manual_seed(0)
    norm, linear = nn.LayerNorm(16), nn.Linear(16, 8)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.05, 4.0, 16))
        norm.bias.copy_(torch.linspace(-3.0, 2.0, 16))
    x = torch.randn(200, 16) * 3 + 1
    before = linear(norm(x))
    features = norm(x).detach()
    ratio, shift = fold_parameters(features.amin(0), features.amax(0))
    fold_into(norm, linear, ratio, shift)
    after = linear(norm(x))
    assert float((after - before).detach().norm() / before.detach().norm()) < 1e-5
    folded = norm(x).detach()
    low, high = folded.amin(0), folded.amax(0)
    assert torch.allclose(low, low.mean().expand_as(low), atol=1e-4)
    assert torch.allclose(high - low, (high - low).mean().expand_as(low), atol=1e-4)


def test_bad_ranges_are_refused():
    with pytest.raises(QuantizationError, match="constant"):
        fold_parameters(torch.ones(4), torch.ones(4))
    with pytest.raises(QuantizationError, match="min <= max"):
        fold_parameters(torch.ones(4), torch.zeros(4))
    with pytest.raises(QuantizationError, match="fold of 3"):
        fold_into(nn.LayerNorm(4), nn.Linear(4, 2), torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
