"""AGQ on a sample of the query rows (``max_rows``) against the exhaustive search, on attention-like
maps: softmax of q·kᵀ over a 2-D token grid with a distance bias, heads from flat to peaked (as
SAM's global attention, scaled down from 12×4096×4096)."""

from __future__ import annotations

import math

import pytest
import torch

from quantizers.functional.log import MIN_SAMPLE_ROWS, LogGrid, agq_searches, attention_output_error, row_sample, sample_rows

TAUS = (1.0, 2.0, 4.0)


def attention_like(heads: int, side: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(attn, v)``: ``heads × side² × side²`` maps, sharper and more local from head to head."""
    g = torch.Generator().manual_seed(seed)
    tokens = side * side
    q, k, v = (torch.randn(heads, tokens, d, generator=g) for _ in range(3))
    sharpness = torch.linspace(0.3, 2.5, heads).view(heads, 1, 1)
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2).float()
    locality = torch.linspace(0.0, 0.6, heads).view(heads, 1, 1)
    logits = q @ k.transpose(1, 2) / math.sqrt(d) * sharpness - locality * torch.cdist(grid, grid)
    return torch.softmax(logits, dim=-1), v


def test_a_sample_as_large_as_the_map_is_the_exhaustive_search() -> None:
    attn, v = attention_like(2, 8, 8, seed=0)
    assert agq_searches(attn, v, 4, TAUS, max_rows=64) == agq_searches(attn, v, 4, TAUS)


def test_the_sample_keeps_the_peaked_rows_and_stands_for_every_row() -> None:
    attn, _ = attention_like(3, 16, 8, seed=1)
    sample, weights = row_sample(attn, 64)
    assert sample.shape == (3, 64, 256) and float(weights.sum()) == pytest.approx(256)
    peaks = attn.amax(dim=2)
    strongest = peaks.topk(16, dim=1).values
    assert torch.equal(sample[:, :16].amax(dim=2), strongest)  # the quarter with the largest maxima, first


@pytest.mark.parametrize(
    ("shape", "rows"),
    [
        ((12, 4096, 4096), 85),  # SAM-B's global attention at 2^22 elements
        ((2, 25, 12, 196, 196), 35),  # its windowed attention (2 images): the same rows from each map
        ((32, 7, 4096), None),  # fits: every row
        ((1 << 22, 2, 2), MIN_SAMPLE_ROWS),  # never fewer rows than that
    ],
)
def test_sample_rows_keeps_an_evaluation_within_the_budget(shape: tuple[int, ...], rows: int | None) -> None:
    assert sample_rows(shape, 1 << 22) == rows
    assert sample_rows(shape, None) is None
    if rows is not None and rows > MIN_SAMPLE_ROWS:
        maps = math.prod(shape[:-2])
        assert maps * rows * shape[-1] <= 1 << 22 < maps * (rows + 1) * shape[-1]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("bits", [4, 8])
def test_an_eighth_of_the_rows_picks_the_same_tau_and_a_scale_as_good(seed: int, bits: int) -> None:
    attn, v = attention_like(4, 32, 32, seed)  # 4 × 1024 × 1024, searched on 128 rows per head
    exhaustive = agq_searches(attn, v, bits, TAUS)
    sampled = agq_searches(attn, v, bits, TAUS, max_rows=128)
    chosen = min(range(len(TAUS)), key=lambda i: exhaustive[i][1])
    assert chosen == min(range(len(TAUS)), key=lambda i: sampled[i][1])
    # The objective is flat near its minimum (within 1 % over ±5 % of s, with ripples from the
    # grid's phase), so the scale itself may move; its exact objective may not get much worse.
    tau = TAUS[chosen]
    at_sampled = attention_output_error(attn, v, LogGrid.build(sampled[chosen][0], tau, bits))
    at_exhaustive = attention_output_error(attn, v, LogGrid.build(exhaustive[chosen][0], tau, bits))
    assert at_sampled <= 1.1 * at_exhaustive
