"""SamRunner reproduces segment_anything's SamPredictor exactly."""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from ptqsam.embedding_cache import EmbeddingCache
from ptqsam.errors import DataError
from ptqsam.inference import SamRunner
from quantizers import QuantizationError


@pytest.fixture
def image():
    return (np.random.default_rng(0).random((180, 240, 3)) * 255).astype(np.uint8)


def test_box_and_point_prompts_match_sam_predictor(random_testbed, image):
    model = random_testbed()
    predictor = SamPredictor(model)
    predictor.set_image(image)
    runner = SamRunner(model)
    boxes = np.array([[10, 20, 120, 150], [100, 5, 230, 170]], dtype=float)
    points = np.array([[[60, 80]], [[150, 90]]], dtype=float)
    labels = np.ones((2, 1), dtype=int)
    with torch.inference_mode():
        embedding = runner.embed(image)
        assert torch.equal(embedding.features, predictor.features)
        ours = runner.decode(embedding, boxes=boxes)
        theirs = predictor.predict_torch(None, None, torch.as_tensor(predictor.transform.apply_boxes(boxes, image.shape[:2])).float(),
                                         return_logits=True)
        assert torch.equal(ours.mask_logits, theirs[0]) and torch.equal(ours.iou_predictions, theirs[1])
        ours = runner.decode(embedding, points=points, labels=labels, multimask=False)
        coords = torch.as_tensor(predictor.transform.apply_coords(points, image.shape[:2])).float()
        theirs = predictor.predict_torch(coords, torch.as_tensor(labels), multimask_output=False, return_logits=True)
        assert torch.equal(ours.mask_logits, theirs[0])
    logits, iou = ours.best()
    assert logits.shape == (2, 180, 240) and iou.shape == (2,)


def test_bad_inputs(random_testbed, image):
    runner = SamRunner(random_testbed())
    with pytest.raises(DataError, match="HxWx3 uint8"):
        runner.embed(image.astype(np.float32))
    with torch.inference_mode():
        embedding = runner.embed(image)
    with pytest.raises(DataError, match="box or point"):
        runner.decode(embedding)
    with pytest.raises(DataError, match="labels"):
        runner.decode(embedding, points=np.zeros((1, 1, 2)))


def test_embedding_cache_memory_and_disk(random_testbed, image, tmp_path):
    runner = SamRunner(random_testbed())
    with torch.inference_mode():
        embedding = runner.embed(image)
    for cache in (EmbeddingCache(), EmbeddingCache(tmp_path)):
        assert cache.get("k") is None
        cache.put("k", embedding)
        got = cache.get("k")
        assert torch.equal(got.features, embedding.features) and got.original_size == (180, 240)
    assert EmbeddingCache(tmp_path).get("k") is not None  # survives on disk
    (tmp_path / "k.pt").write_bytes(b"half")  # a corrupt file is a miss, computed again
    assert EmbeddingCache(tmp_path).get("k") is None



@contextlib.contextmanager
def counted_host_reads() -> Iterator[dict]:
    """Counts the reads of tensor values into Python (on a GPU, each one waits for the queued kernels)."""
    counts, patch = {"reads": 0}, pytest.MonkeyPatch()
    for name in ("__bool__", "__float__", "__int__", "item", "tolist"):
        def counted(self, *args, _original=getattr(torch.Tensor, name), **kwargs):
            counts["reads"] += 1
            return _original(self, *args, **kwargs)
        patch.setattr(torch.Tensor, name, counted)
    try:
        yield counts
    finally:
        patch.undo()


def test_a_w8a8_forward_reads_one_value_back_however_many_quantizers(random_testbed, two_samples):
    from ptqsam import calibrate, quantizing

    model = random_testbed()
    calibrate(model, "minmax", "W8A8", two_samples[:1], progress=False)
    runner, sample = SamRunner(model), two_samples[1]
    with torch.inference_mode(), quantizing(model) as quantizers:
        runner.decode(runner.embed(sample.image), boxes=sample.prompts.boxes)  # the qparams are checked once
        with counted_host_reads() as encoder:
            embedding = runner.embed(sample.image)
        with counted_host_reads() as decoder:
            runner.decode(embedding, boxes=sample.prompts.boxes)
    assert len(quantizers) > 100
    assert encoder["reads"] == decoder["reads"] == 1  # the deferred NaN/Inf check of every quantized input
    with torch.no_grad():
        model.image_encoder.patch_embed.proj.bias[0] = float("nan")  # every later activation is NaN
    with pytest.raises(QuantizationError, match="NaN or Inf"), torch.inference_mode(), quantizing(model):
        runner.embed(sample.image)  # raised before the embedding leaves
