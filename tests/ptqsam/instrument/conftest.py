"""Shared helpers of the instrumentation tests (as fixtures): small SAMs and prompted forwards."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import pytest
import torch
from segment_anything.modeling import Sam

from small_models import small_tiny_vit_sam, small_vit_sam


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
