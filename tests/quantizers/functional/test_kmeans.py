"""The deterministic k-means behind channel-aware grouping."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantizers.errors import QuantizationError
from quantizers.functional.kmeans import kmeans


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 80), k=st.integers(1, 40), distinct=st.integers(1, 80))
def test_ends_with_exactly_k_groups_and_every_point_in_one(seed, n, k, distinct):
    k = min(k, n)
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(distinct, 2, generator=generator)
    points = values[torch.randint(distinct, (n,), generator=generator)]  # duplicates when distinct < n
    labels, centres = kmeans(points, k, seed=3)
    assert labels.shape == (n,) and centres.shape == (k, 2)
    assert set(labels.tolist()) == set(range(k))  # exactly k non-empty groups
    for cluster in range(k):
        assert torch.allclose(centres[cluster], points[labels == cluster].double().mean(dim=0))
    again = kmeans(points, k, seed=3)
    assert torch.equal(again[0], labels) and torch.equal(again[1], centres)  # deterministic


def test_separated_blobs_are_recovered():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(25, 2, generator=generator) for c in centres])
    labels, found = kmeans(points, 4, seed=0)
    for blob in range(4):
        assert len(set(labels[blob * 25:(blob + 1) * 25].tolist())) == 1
    assert len(set(labels.tolist())) == 4
    assert torch.allclose(torch.sort(found.sum(dim=1)).values, torch.sort(centres.double().sum(dim=1)).values, atol=0.2)


def test_more_groups_than_points_is_refused():
    with pytest.raises(QuantizationError, match="3 groups of 2"):
        kmeans(torch.zeros(2, 2), 3)
