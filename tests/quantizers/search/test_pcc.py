"""PCC numerics: percentile ranges as torch.quantile, attention masks, the 1 − IoU objective."""

from __future__ import annotations

import pytest
import torch

from quantizers import QuantSpec
from quantizers.errors import QuantizationError
from quantizers.search.pcc import PERCENTILES, attention_masks, mask_iou_loss, percentile_ranges


def test_percentile_ranges_are_torch_quantiles():
    x = torch.randn(3, 50, 7, generator=torch.Generator().manual_seed(0))
    lows, highs = percentile_ranges(x, PERCENTILES)
    q = torch.tensor(PERCENTILES, dtype=torch.float64)
    assert torch.allclose(lows.double(), torch.quantile(x.double().reshape(-1), 1 - q), atol=1e-6)
    assert torch.allclose(highs.double(), torch.quantile(x.double().reshape(-1), q), atol=1e-6)
    assert len(PERCENTILES) == 29 and PERCENTILES[0] == 0.85 and PERCENTILES[-1] == 0.99999


def test_masks_keep_the_entries_above_half_the_row_maximum_and_iou_scores_them():
    attention = torch.tensor([[[0.6, 0.3, 0.1], [0.21, 0.41, 0.39]]])
    masks = attention_masks(attention, 0.5)
    assert masks.tolist() == [[[True, False, False], [True, True, True]]]
    assert mask_iou_loss(masks, masks) == pytest.approx(0.0, abs=1e-6)
    assert mask_iou_loss(masks, ~masks) == pytest.approx(1.0)
    other = masks.clone()
    other[0, 1, 2] = False  # 3 of 4 shared entries
    assert mask_iou_loss(masks, other) == pytest.approx(0.25, abs=1e-6)
    with pytest.raises(QuantizationError, match="one shape"):
        mask_iou_loss(masks, masks[..., :2])


def test_pcc_clips_per_tensor_affine_uniform_quantizers_only():
    QuantSpec(search="pcc").check_search()
    with pytest.raises(QuantizationError, match="per-tensor affine"):
        QuantSpec(search="pcc", symmetric=True).check_search()
    with pytest.raises(QuantizationError, match="percentile"):
        QuantSpec(search="pcc", search_options={"percentiles": [0.2]})
