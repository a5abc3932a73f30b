"""Shared helpers of the instrumentation tests (as fixtures): small SAMs and prompted forwards."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import Callable

import pytest
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


def prompts(size: int) -> dict[str, dict[str, torch.Tensor]]:
    """One box, two points, and a box with a low-res mask input, for a ``size``² image."""
    s = float(size)
    mask_side = size // 4
    mask = torch.randn(1, 1, mask_side, mask_side, generator=torch.Generator().manual_seed(3))
    return {
        "box": {"boxes": torch.tensor([[0.1 * s, 0.2 * s, 0.7 * s, 0.9 * s]])},
        "points": {"point_coords": torch.tensor([[[0.3 * s, 0.4 * s], [0.6 * s, 0.5 * s]]]),
                   "point_labels": torch.tensor([[1, 0]])},
        "box+mask": {"boxes": torch.tensor([[0.2 * s, 0.1 * s, 0.8 * s, 0.6 * s]]),
                     "mask_inputs": mask},
    }


def image(size: int, seed: int = 7) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed)) * 255


@torch.no_grad()
def predict(model: Sam, img: torch.Tensor, prompt: dict[str, torch.Tensor], multimask: bool = True) -> dict:
    """Sam.forward on one image with one prompt: masks, iou_predictions, low_res_logits."""
    batch = [{"image": img, "original_size": tuple(img.shape[-2:]), **prompt}]
    return model(batch, multimask_output=multimask)[0]


@torch.no_grad()
def predict_all(model: Sam, img: torch.Tensor) -> list[dict]:
    """:func:`predict` for every prompt of :func:`prompts` (every site of the model is reached)."""
    return [predict(model, img, p) for p in prompts(img.shape[-1]).values()]


def assert_identical(a: dict, b: dict) -> None:
    for key in ("masks", "iou_predictions", "low_res_logits"):
        assert torch.equal(a[key], b[key]), key



@pytest.fixture(scope="session")
def make_vit_sam() -> Callable[..., Sam]:
    return small_vit_sam


@pytest.fixture(scope="session")
def make_tiny_vit_sam() -> Callable[..., Sam]:
    return small_tiny_vit_sam


@pytest.fixture(scope="session")
def sam_io() -> SimpleNamespace:
    """Inputs and forwards: ``image(size)``, ``prompts(size)``, ``predict``, ``predict_all``,
    ``assert_identical``."""
    return SimpleNamespace(image=image, prompts=prompts, predict=predict, predict_all=predict_all,
                           assert_identical=assert_identical)
