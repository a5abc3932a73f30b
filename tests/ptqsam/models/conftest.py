"""Shared helpers of the model tests: a box-prompted testbed forward."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from segment_anything.modeling import Sam


def predict_box(model: Sam, image: torch.Tensor, box: list[float], multimask: bool) -> dict:
    """Sam.forward on one image (3×S×S, 0..255) with one box prompt (x0, y0, x1, y1)."""
    size = tuple(image.shape[-2:])
    batch = [{"image": image, "original_size": size, "boxes": torch.tensor([box])}]
    return model(batch, multimask_output=multimask)[0]


@pytest.fixture
def box_prediction() -> Callable[..., dict]:
    return predict_box


@pytest.fixture
def testbed_image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.rand(3, 256, 256, generator=generator) * 255
