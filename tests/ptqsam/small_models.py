"""Small SAMs for tests that need a real architecture at a small size (64² inputs, 32-d decoder)."""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, Sam
from torch import nn

from ptqsam.models.assembly import assemble_sam
from ptqsam.models.tiny_vit import TinyViT

SMALL_VIT_SIZE = 64
SMALL_TINY_VIT_SIZE = 64


def small_vit_sam(seed: int = 0) -> Sam:
    """SAM with a 2-block ViT (64², patch 16, width 32, window 2, global attention in block 1,
    relative positions on) and a 32-d decoder. Parameters are randomised, none left at zero."""
    torch.manual_seed(seed)
    encoder = ImageEncoderViT(
        img_size=SMALL_VIT_SIZE, patch_size=16, embed_dim=32, depth=2, num_heads=2, out_chans=32,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=2, global_attn_indexes=(1,),
    )
    model = assemble_sam(encoder, embed_dim=32, image_size=SMALL_VIT_SIZE, embedding_size=4,
                         decoder_mlp_dim=64, iou_head_hidden_dim=32)
    return randomise(model).eval()


def small_tiny_vit_sam(seed: int = 0) -> Sam:
    """SAM with a small TinyViT encoder (64², four stages) and a 32-d decoder."""
    torch.manual_seed(seed)
    encoder = TinyViT(img_size=SMALL_TINY_VIT_SIZE, embed_dims=(16, 32, 40, 48), depths=(1, 1, 2, 1),
                      num_heads=(2, 2, 5, 4), window_sizes=(7, 7, 14, 7), num_classes=10, out_chans=32)
    model = assemble_sam(encoder, embed_dim=32, image_size=SMALL_TINY_VIT_SIZE,
                         embedding_size=encoder.embedding_size, decoder_mlp_dim=64, iou_head_hidden_dim=32)
    return randomise(model).eval()


def randomise(model: nn.Module) -> nn.Module:
    """Replace zero-initialised parameters (rel-pos tables, pos_embed) by noise, so that every
    term of the forward contributes."""
    with torch.no_grad():
        for param in model.parameters():
            if not bool(param.any()):
                param.normal_(0.0, 0.1)
    return model
