"""Hessian-guided search of convolutions: a conv is a Linear over patches, and the search agrees."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from quantizers.errors import QuantizationError
from quantizers.search.conv import ConvGeometry, search_conv, subsample_batch
from quantizers.search.hessian import HessianSearchConfig, objective, search_linear

SMALL = HessianSearchConfig(n=30)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def fq(t: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric signed fake quantization along axis 0 (one scale, or one per row), by torch's op:
    it rounds ``t · (1/s)``, which can differ from ``round(t / s)`` at a half step (the grid's ends)."""
    qmax = 2 ** (bits - 1) - 1
    scales = scale.reshape(-1).float().expand(t.shape[0]).contiguous()
    zero = torch.zeros(t.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(t, scales, zero, 0, -qmax - 1, qmax)


def same_search(found, expected) -> None:
    """Same scales up to float32 summation order (the conv and the matmul add in other orders)."""
    torch.testing.assert_close(found.weight_scale, expected.weight_scale, rtol=1e-6, atol=0)
    torch.testing.assert_close(found.input_scale, expected.input_scale, rtol=1e-6, atol=0)
    assert found.history == pytest.approx(expected.history, rel=1e-4)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_conv2d_search_equals_the_linear_search_over_unfolded_patches(granularity):
    x, w, b = randn(3, 4, 9, 9, seed=1), randn(6, 4, 3, 3, seed=2), randn(6, seed=3)
    geometry = ConvGeometry(stride=2, padding=1)
    out = F.conv2d(x, w, b, stride=2, padding=1)
    grad = randn(*out.shape, seed=4)
    found = search_conv(x, w, b, out, grad, 4, 5, geometry, granularity, SMALL)
    patches = F.unfold(x, 3, padding=1, stride=2).transpose(1, 2)  # (N, positions, C·kH·kW)
    as_rows = lambda t: t.flatten(2).transpose(1, 2)  # noqa: E731 - (N, C, H, W) -> (N, H·W, C)
    expected = search_linear(patches, w.reshape(6, -1), b, as_rows(out), as_rows(grad), 4, 5, granularity, config=SMALL)
    same_search(found, expected)


def test_conv_transpose2d_search_equals_the_linear_search_per_input_pixel():
    # SAM's output upscaling: kernel 2, stride 2, so each input pixel makes its own 2x2 output block:
    # a Linear from C_in to (C_out, 2, 2) whose output channel c is the block of rows 4c ... 4c + 3.
    x, stored, b = randn(2, 5, 4, 4, seed=5), randn(5, 3, 2, 2, seed=6), randn(3, seed=7)
    module = nn.ConvTranspose2d(5, 3, 2, stride=2)
    out = F.conv_transpose2d(x, stored, b, stride=2)
    grad = randn(*out.shape, seed=8)
    site_weight = stored.transpose(0, 1)  # what the weight site sees: (out, in, kH, kW)
    found = search_conv(x, site_weight, b, out, grad, 4, 6, ConvGeometry.of(module), "channel", SMALL)

    def blocks(t: torch.Tensor) -> torch.Tensor:  # (N, C, 2H, 2W) -> (N·H·W, C·2·2)
        n, c, h2, w2 = t.shape
        return t.reshape(n, c, h2 // 2, 2, w2 // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(-1, c * 4)

    pixels = x.permute(0, 2, 3, 1).reshape(-1, 5)
    weight = site_weight.permute(0, 2, 3, 1).reshape(3 * 4, 5)  # row (c, a, b) = stored[:, c, a, b]
    expected = search_linear(pixels, weight, b.repeat_interleave(4), blocks(out), blocks(grad), 4, 6, "block",
                             blocks=3, config=SMALL)
    same_search(found, expected)


@pytest.mark.parametrize("transposed", [False, True])
def test_many_candidates_in_one_grouped_call_equal_one_call_each(transposed):
    geometry = ConvGeometry(transposed=transposed, stride=2, padding=1, dilation=1, groups=2,
                            output_padding=1 if transposed else 0)
    x = randn(3, 4, 6, 6, seed=9)
    weights = randn(5, 6 if not transposed else 3, 2 if not transposed else 4, 3, 3, seed=10)  # (c, site layout)
    many = geometry.many(x, weights)
    one_each = torch.stack([geometry(x, w) for w in weights])
    torch.testing.assert_close(many, one_each, rtol=1e-5, atol=1e-5)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 1000), transposed=st.booleans(), metric=st.sampled_from(["hessian", "l2", "cosine"]))
def test_rounds_never_increase_and_history_ends_at_the_returned_scales(seed, transposed, metric):
    # grouped, strided, padded, dilated: the objective recomputed with torch's own conv and the scales
    geometry = ConvGeometry(transposed, stride=2, padding=1, dilation=2 if not transposed else 1, groups=2,
                            output_padding=1 if transposed else 0)
    x = randn(2, 4, 7, 7, seed=seed)
    weight = randn(*((6, 2, 3, 3) if not transposed else (3, 4, 3, 3)), seed=seed + 1)  # site layout
    channels = geometry.rows_to_channels(weight.shape[0])
    bias = randn(channels, seed=seed + 2)
    out = geometry(x, weight) + bias.view(-1, 1, 1)
    grad = randn(*out.shape, seed=seed + 3)
    config = HessianSearchConfig(n=15, metric=metric)
    found = search_conv(x, weight, bias, out, grad, 4, 4, geometry, "channel", config)
    history = found.history
    assert len(history) == 7 and all(b <= a * (1 + 1e-5) + 1e-6 for a, b in zip(history, history[1:]))
    out_hat = geometry(fq(x, found.input_scale, 4), fq(weight, found.weight_scale, 4)) + bias.view(-1, 1, 1)
    assert history[-1] == pytest.approx(_mean_row_score(out_hat, out, grad, weight.shape[0], metric), rel=1e-4)


def _mean_row_score(out_hat, out, grad, rows, metric) -> float:
    """The layer objective: the mean over weight rows of each row's output-slice score (row j of a
    transposed conv's site weight makes channel j of every group)."""
    split = lambda t: t.reshape(t.shape[0], -1, rows, *t.shape[2:]).movedim(2, 0)  # noqa: E731
    scores = [objective(h, o, g, metric) for h, o, g in zip(split(out_hat), split(out), split(grad))]
    return float(torch.stack(scores).mean())


def test_max_rows_keeps_whole_seeded_batch_elements():
    x, w = randn(8, 2, 6, 6, seed=11), randn(3, 2, 3, 3, seed=12)
    out = F.conv2d(x, w, padding=1)  # 36 output positions per element
    grad = randn(*out.shape, seed=13)
    config = dataclasses.replace(SMALL, max_rows=100)  # 100 // 36 = 2 elements
    keep = torch.randperm(8, generator=torch.Generator().manual_seed(0))[:2].sort().values
    sub_x, sub_out, sub_grad = subsample_batch(100, x, out, grad)
    assert torch.equal(sub_x, x[keep]) and torch.equal(sub_out, out[keep]) and torch.equal(sub_grad, grad[keep])
    geometry = ConvGeometry(padding=1)
    found = search_conv(x, w, None, out, grad, 4, 4, geometry, "channel", config)
    direct = search_conv(x[keep], w, None, out[keep], grad[keep], 4, 4, geometry, "channel", SMALL)
    assert torch.equal(found.weight_scale, direct.weight_scale) and found.history == direct.history
    assert subsample_batch(10, x, out, grad)[0].shape[0] == 1  # fewer rows than one element: one element
    assert subsample_batch(None, x, out, grad)[0] is x


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: {**c, "weight": c["weight"][:, :1]}, "does not fit"),
        (lambda c: {**c, "out": c["out"][:, :2]}, "output shape"),
        (lambda c: {**c, "bias": c["bias"][:2]}, "bias shape"),
        (lambda c: {**c, "x": c["x"][0]}, "4-D"),
        (lambda c: {**c, "weight_granularity": "block"}, "weight_granularity"),
        (lambda c: {**c, "grad_out": torch.zeros_like(c["out"])}, "identically zero"),
    ],
)
def test_bad_conv_input_raises(change, message):
    x, w, b = randn(2, 4, 5, 5), randn(3, 4, 3, 3, seed=1), randn(3, seed=2)
    out = F.conv2d(x, w, b)
    call = dict(x=x, weight=w, bias=b, out=out, grad_out=randn(*out.shape, seed=3), w_bits=4, a_bits=4)
    with pytest.raises(QuantizationError, match=message):
        search_conv(**change(call))


@pytest.mark.parametrize("options, message", [({"stride": 0}, "stride"), ({"groups": 0}, "groups"),
                                              ({"padding": (1, 2, 3)}, "padding")])
def test_bad_geometry_raises(options, message):
    with pytest.raises(QuantizationError, match=message):
        ConvGeometry(**options)
