"""TinyViT image encoder of TinySAM and MobileSAM (the 5 M configuration with SAM's neck).

Written from the architecture description; parameter and buffer names follow the released
checkpoints (``Conv2d_BN`` blocks hold ``.c`` and ``.bn``) so their state dicts load strictly.
Inference only: no dropout or drop-path. The attention bias table is gathered in every forward,
so it can never go stale after a load (the reference caches it when switching to eval mode).
"""

from __future__ import annotations

from typing import Sequence

import torch
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import window_partition, window_unpartition
from torch import nn

from ptqsam.errors import PtqsamError


class Conv2dBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d, as submodules ``c`` and ``bn``.

    Arguments:
      in_chans: input channels.
      out_chans: output channels.
      kernel_size: square kernel size; padding is ``kernel_size // 2``.
      stride: convolution stride.
      groups: convolution groups (``out_chans`` for a depthwise conv).
    """

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chans)


class PatchEmbed(nn.Module):
    """Two stride-2 3×3 Conv2dBN (GELU between): image (B, 3, H, W) -> (B, dim, H/4, W/4)."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, dim // 2, 3, 2), nn.GELU(), Conv2dBN(dim // 2, dim, 3, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block on (B, C, H, W): 1×1 expand, 3×3 depthwise, 1×1 project, + input.

    Arguments:
      dim: input and output channels.
      expand_ratio: hidden channels = ``dim * expand_ratio``.
    """

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, 3, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, dim)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        return self.act3(x + self.conv3(y))


class PatchMerging(nn.Module):
    """Downsampling between stages: 1×1 conv, depthwise 3×3 conv with ``stride``, 1×1 conv.

    Takes an image (B, C, H, W) or tokens (B, H·W, C) and returns tokens (B, H'·W', out_dim).

    Arguments:
      resolution: input side length H = W.
      dim: input channels.
      out_dim: output channels.
      stride: 2 halves the resolution; 1 keeps it (TinySAM's last stage).
    """

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = Conv2dBN(dim, out_dim)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = tokens_to_image(x, self.resolution)
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        return self.conv3(x).flatten(2).transpose(1, 2)


def tokens_to_image(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, H·W, C) row-major tokens -> (B, C, H, W) with H = W = ``resolution``."""
    batch, _, channels = x.shape
    return x.transpose(1, 2).reshape(batch, channels, resolution, resolution)


def attention_bias_index(window_size: int) -> torch.Tensor:
    """(N, N) index, N = window², of the bias shared by each query/key pair of a window.

    Pairs share a bias when their offsets |Δrow|, |Δcol| are equal; offset (dr, dc) has index
    ``dr * window_size + dc`` (the order of the released checkpoints' bias columns).
    """
    rows, cols = torch.meshgrid(
        torch.arange(window_size), torch.arange(window_size), indexing="ij"
    )
    rows, cols = rows.flatten(), cols.flatten()
    d_row = (rows[:, None] - rows[None, :]).abs()
    d_col = (cols[:, None] - cols[None, :]).abs()
    return d_row * window_size + d_col


class Attention(nn.Module):
    """Multi-head self-attention within one window, with a learned bias per head and offset.

    Forward order (plain tensor ops; instrumentation re-implements it in this order):
    ``norm`` -> ``qkv`` -> view (B, N, heads, ·) and split into q, k, v, each permuted to
    (B, heads, N, ·) -> ``attn = (q @ k.transpose(-2, -1)) * scale + attention_bias()`` ->
    ``attn.softmax(dim=-1)`` -> ``attn @ v`` -> transpose/reshape to (B, N, dh) -> ``proj``.

    Arguments:
      dim: token channels.
      key_dim: channels of each head's query and key.
      num_heads: number of heads.
      attn_ratio: each head's value has ``attn_ratio * key_dim`` channels.
      window_size: the window side; the bias table is (num_heads, window², window²).
    """

    def __init__(
        self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, window_size: int
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim**-0.5
        self.attn_ratio = attn_ratio
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, self.dh + 2 * key_dim * num_heads)
        self.proj = nn.Linear(self.dh, dim)
        # Nonzero at random init (Swin's bias-table init) so a forward that forgets it differs.
        self.attention_biases = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_heads, window_size**2), std=0.02)
        )
        self.register_buffer(
            "attention_bias_idxs", attention_bias_index(window_size), persistent=False
        )

    def attention_bias(self) -> torch.Tensor:
        """The (num_heads, N, N) bias added to the attention logits, from current weights."""
        return self.attention_biases[:, self.attention_bias_idxs]

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value of the (normalised) tokens ``x``, each (batch, heads, tokens, ·)."""
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        return q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self.heads(x)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_bias()
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(batch, tokens, self.dh)
        return self.proj(x)


class Mlp(nn.Module):
    """LayerNorm, Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention (residual), depthwise local conv, MLP (residual) on (B, H·W, C) tokens.

    Windows are taken after zero padding the bottom/right to a multiple of ``window_size``.

    Arguments:
      dim: token channels.
      resolution: side length H = W of the token grid.
      num_heads: attention heads (head dim ``dim // num_heads``).
      window_size: attention window side.
      mlp_ratio: MLP hidden channels = ``dim * mlp_ratio``.
      local_conv_size: kernel of the depthwise conv between attention and MLP.
    """

    def __init__(
        self,
        dim: int,
        resolution: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, 1.0, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.window_attention(x)
        x = self.local_conv(tokens_to_image(x, self.resolution)).flatten(2).transpose(1, 2)
        return x + self.mlp(x)

    def window_attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        side, window = self.resolution, self.window_size
        if side == window:
            return self.attn(x)
        windows, padded = window_partition(x.view(batch, side, side, channels), window)
        out = self.attn(windows.view(-1, window * window, channels))
        out = out.view(-1, window, window, channels)
        out = window_unpartition(out, window, padded, (side, side))
        return out.reshape(batch, tokens, channels)


class Stage(nn.Module):
    """``blocks`` at one resolution, then an optional ``downsample`` (PatchMerging)."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT encoder with SAM's neck: image (B, 3, S, S) -> embedding (B, out_chans, S/16, S/16).

    Stage 0 is MBConv blocks at S/4; stages 1.. are TinyViTBlocks. Each stage but the last ends
    with a PatchMerging into the next stage's width; it halves the resolution except the one into
    the last stage (stride 1), so with four stages the last two run at S/16. The classification
    ``norm_head`` and ``head`` are unused but kept so released checkpoints load strictly.

    Arguments:
      img_size: input side S (1024 for TinySAM/MobileSAM; a multiple of 16).
      in_chans: image channels.
      embed_dims: channels per stage.
      depths: blocks per stage.
      num_heads: attention heads per stage (stage 0 is convolutional; its entry is unused).
      window_sizes: attention window per stage (stage 0's is unused).
      mlp_ratio: MLP expansion of the attention stages.
      mbconv_expand_ratio: expansion of stage 0's MBConv blocks.
      local_conv_size: kernel of the depthwise conv inside each TinyViTBlock.
      num_classes: outputs of the unused classification head.
      out_chans: channels of the neck (SAM's prompt embedding dim).
    """

    #: children the forward never runs: not instrumented, and in no cost (see ``run_modules``)
    UNUSED_CHILDREN = ("norm_head", "head")

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        num_classes: int = 1000,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        if img_size % 16 != 0:
            raise PtqsamError(f"TinyViT img_size must be a multiple of 16, got {img_size}")
        self.img_size = img_size
        num_stages = len(embed_dims)
        resolutions = [img_size // 4 // 2 ** min(i, num_stages - 2) for i in range(num_stages)]
        self.embedding_size = resolutions[-1]
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        stages = []
        for i, (dim, depth, resolution) in enumerate(zip(embed_dims, depths, resolutions)):
            if i == 0:
                blocks = [MBConv(dim, mbconv_expand_ratio) for _ in range(depth)]
            else:
                blocks = [
                    TinyViTBlock(
                        dim, resolution, num_heads[i], window_sizes[i], mlp_ratio, local_conv_size
                    )
                    for _ in range(depth)
                ]
            downsample = None
            if i < num_stages - 1:
                stride = resolution // resolutions[i + 1]
                downsample = PatchMerging(resolution, dim, embed_dims[i + 1], stride)
            stages.append(Stage(blocks, downsample))
        self.layers = nn.ModuleList(stages)
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise PtqsamError(
                f"TinyViT expects images of shape (B, C, {self.img_size}, {self.img_size}), "
                f"got {tuple(x.shape)}"
            )
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.neck(tokens_to_image(x, self.embedding_size))
