"""TinySAM's real architecture at 1024²: the instrumented model is bit-identical in float mode.

Kept apart from the small-config tests: one forward of each model takes seconds on a CPU.
"""

from __future__ import annotations

import torch

from ptqsam.instrument import instrument
from ptqsam.models import build_model


def test_tinysam_architecture_at_1024_is_bit_identical():
    reference, model = build_model("tinysam"), instrument(build_model("tinysam"))
    image = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[100.0, 200.0, 600.0, 700.0]])
    outputs = []
    with torch.no_grad():
        for m in (reference, model):
            embedding = m.image_encoder(image)
            sparse, dense = m.prompt_encoder(points=None, boxes=box, masks=None)
            masks, iou = m.mask_decoder(embedding, m.prompt_encoder.get_dense_pe(), sparse, dense, True)
            outputs.append((embedding, masks, iou))
    for expected, got in zip(*outputs):
        assert torch.equal(expected, got)
