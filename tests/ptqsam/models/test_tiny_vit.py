"""TinyViT blocks on small inputs against independent oracles, and the stale-bias trap."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from ptqsam.errors import PtqsamError
from ptqsam.models.tiny_vit import (
    Attention,
    MBConv,
    PatchMerging,
    TinyViT,
    TinyViTBlock,
    attention_bias_index,
)

SMALL = dict(
    img_size=64,
    embed_dims=(16, 32, 40, 48),
    depths=(1, 1, 2, 1),
    num_heads=(2, 2, 5, 4),
    window_sizes=(7, 7, 14, 7),
    num_classes=10,
    out_chans=24,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_tiny_vit(seed: int) -> TinyViT:
    torch.manual_seed(seed)
    return TinyViT(**SMALL)


def randomise_batchnorm(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial running statistics, so eval-mode BatchNorm is not the identity."""
    generator = seeded(seed)
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)


@pytest.mark.parametrize("window", [1, 3, 7])
def test_bias_index_numbers_offsets_in_order_of_first_appearance(window: int) -> None:
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    expected = []
    for p, q in itertools.product(points, points):
        offset = (abs(p[0] - q[0]), abs(p[1] - q[1]))
        expected.append(offsets.setdefault(offset, len(offsets)))
    index = attention_bias_index(window)
    assert index.tolist() == torch.tensor(expected).view(window**2, window**2).tolist()
    assert len(offsets) == window**2


def test_attention_matches_sdpa_with_bias_as_mask() -> None:
    torch.manual_seed(0)
    attn = Attention(dim=12, key_dim=4, num_heads=3, attn_ratio=1.0, window_size=3).eval()
    x = torch.randn(2, 9, 12, generator=seeded(1))
    qkv = attn.qkv(attn.norm(x)).view(2, 9, 3, 12).permute(0, 2, 1, 3)
    q, k, v = qkv[..., :4], qkv[..., 4:8], qkv[..., 8:]
    bias = torch.stack([attn.attention_biases[h][attention_bias_index(3)] for h in range(3)])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    expected = attn.proj(out.transpose(1, 2).reshape(2, 9, 12))
    torch.testing.assert_close(attn(x), expected)
    torch.testing.assert_close(attn.attention_bias(), bias)


def test_attention_index_buffer_is_not_in_state_dict() -> None:
    attn = Attention(dim=8, key_dim=4, num_heads=2, attn_ratio=1.0, window_size=2)
    assert set(attn.state_dict()) == {
        "attention_biases",
        "norm.weight",
        "norm.bias",
        "qkv.weight",
        "qkv.bias",
        "proj.weight",
        "proj.bias",
    }
    assert attn.attention_biases.shape == (2, 4)
    assert attn.attention_biases.abs().sum() > 0  # random init exercises the bias path


@pytest.mark.parametrize("resolution, window", [(6, 3), (5, 3), (3, 3), (2, 4)])
def test_window_attention_equals_attention_per_padded_window(resolution: int, window: int) -> None:
    torch.manual_seed(0)
    block = TinyViTBlock(8, resolution, 2, window, mlp_ratio=2.0, local_conv_size=3).eval()
    x = torch.randn(2, resolution * resolution, 8, generator=seeded(1))
    side = -(-resolution // window) * window
    pad = side - resolution
    grid = F.pad(x.view(2, resolution, resolution, 8), (0, 0, 0, pad, 0, pad))
    out = torch.empty_like(grid)
    for top, left in itertools.product(range(0, side, window), repeat=2):
        rows, cols = slice(top, top + window), slice(left, left + window)
        tokens = grid[:, rows, cols].reshape(2, window * window, 8)
        out[:, rows, cols] = block.attn(tokens).view(2, window, window, 8)
    expected = out[:, :resolution, :resolution].reshape(2, resolution * resolution, 8)
    torch.testing.assert_close(block.window_attention(x), expected)


def test_mbconv_with_zero_projection_is_gelu_of_input() -> None:
    block = MBConv(6, expand_ratio=4.0).eval()
    torch.nn.init.zeros_(block.conv3.bn.weight)
    torch.nn.init.zeros_(block.conv3.bn.bias)
    x = torch.randn(2, 6, 5, 5, generator=seeded(0))
    torch.testing.assert_close(block(x), F.gelu(x))


@pytest.mark.parametrize("stride, out_side", [(2, 4), (1, 8)])
def test_patch_merging_takes_image_or_tokens(stride: int, out_side: int) -> None:
    torch.manual_seed(0)
    merge = PatchMerging(8, 6, 10, stride).eval()
    randomise_batchnorm(merge, 1)
    image = torch.randn(2, 6, 8, 8, generator=seeded(2))
    tokens = image.flatten(2).transpose(1, 2)
    out = merge(image)
    assert out.shape == (2, out_side * out_side, 10)
    torch.testing.assert_close(merge(tokens), out)


def test_small_encoder_output_shape_and_batch_independence() -> None:
    model = small_tiny_vit(0).eval()
    randomise_batchnorm(model, 1)
    images = torch.randn(2, 3, 64, 64, generator=seeded(2))
    with torch.no_grad():
        both = model(images)
        first = model(images[:1])
    assert both.shape == (2, 24, 4, 4)
    assert model.embedding_size == 4
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-5)


def test_stage_resolutions_and_last_downsample_stride() -> None:
    model = small_tiny_vit(0)
    assert [stage.blocks[0].resolution for stage in model.layers[1:]] == [8, 4, 4]
    strides = [stage.downsample.conv2.c.stride for stage in model.layers[:-1]]
    assert strides == [(2, 2), (2, 2), (1, 1)]
    assert model.layers[-1].downsample is None


def test_wrong_input_size_and_img_size_raise() -> None:
    model = small_tiny_vit(0)
    with pytest.raises(PtqsamError, match=r"\(B, C, 64, 64\), got \(1, 3, 32, 32\)"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(PtqsamError, match="multiple of 16, got 100"):
        TinyViT(**{**SMALL, "img_size": 100})


def test_bias_table_never_stale_after_eval_then_load() -> None:
    """The reference caches the bias table at .eval(); loading afterwards left it stale."""
    model = small_tiny_vit(0).eval()
    randomise_batchnorm(model, 1)
    images = torch.randn(1, 3, 64, 64, generator=seeded(2))
    with torch.no_grad():
        before = model(images)
    weights = model.state_dict()
    generator = seeded(3)
    for key in weights:
        if key.endswith("attention_biases"):
            weights[key] = torch.randn(weights[key].shape, generator=generator) * 3
    model.load_state_dict(weights)
    direct = small_tiny_vit(5)
    direct.load_state_dict(weights)
    direct.eval()
    with torch.no_grad():
        after, expected = model(images), direct(images)
    assert torch.equal(after, expected)
    assert (after - before).abs().max() > 1e-2
