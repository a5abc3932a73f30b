"""RepQ-ViT's post-LayerNorm fold on SAM: float outputs unchanged (the packaged testbed, and a small
ViT SAM whose windowed blocks pad their input), channels aligned, state round trip."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling.image_encoder import Block

from ptqsam.calibration import calibrate, calibration_samples, load_calibrated, save_calibrated
from ptqsam.calibration.repq import FoldPaddedBlock
from ptqsam.inference import SamRunner
from ptqsam.instrument import disabled, quantizing
from ptqsam.models import build_model
from ptqsam.models.testbed import TestbedConfig, build_testbed
from quantizers.transforms.repq import fold_into

#: 12×12 embedding, windows of 5: the windowed blocks pad to 15×15
PADDED = TestbedConfig(image_size=192, encoder_depth=3, window_size=5, global_attn_indexes=(2,))


def _padded_sam(seed: int = 0):
    torch.manual_seed(seed)
    model = build_testbed(PADDED).eval()
    with torch.no_grad():  # LayerNorms with channels of very different scales and offsets, as trained ones
        for block in model.image_encoder.blocks:
            for norm in (block.norm1, block.norm2):
                norm.weight.copy_(torch.rand(norm.weight.shape) * 3 + 0.05)
                norm.bias.copy_(torch.randn(norm.bias.shape))
    return model


def _logits(model, sample):
    runner = SamRunner(model)
    with torch.inference_mode():
        p = sample.prompts
        return runner.decode(runner.embed(sample.image), p.boxes, p.points, p.point_labels).low_res_logits


def _relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("build", [lambda: build_model("testbed"), _padded_sam], ids=["testbed", "padded_vit"])
def test_the_fold_keeps_the_float_output(build, tiny_dataset):
    samples = calibration_samples(tiny_dataset, 2, seed=0)
    reference = [_logits(build(), s) for s in samples]
    model = build()
    report = calibrate(model, "repq-vit", 4, 4, samples, progress=False)
    folds = report.passes["repq_fold"]
    assert len(folds) == 2 * len(model.image_encoder.blocks)
    with disabled(model):
        for sample, expected in zip(samples, reference):
            assert _relative(_logits(model, sample), expected) < 1e-5
    for block in model.image_encoder.blocks:  # windowed blocks pad with the folded image of 0
        assert isinstance(block, FoldPaddedBlock) == (block.window_size > 0)


def test_without_the_padding_value_the_fold_would_change_the_padded_windows(tiny_dataset):
    sample = calibration_samples(tiny_dataset, 1, seed=0)[0]
    expected = _logits(_padded_sam(), sample)
    model = _padded_sam()
    block = model.image_encoder.blocks[0]
    assert type(block) is Block and block.window_size == 5
    ratio = torch.rand(block.norm1.weight.shape, dtype=torch.float64) + 0.5
    shift = torch.randn(block.norm1.weight.shape, dtype=torch.float64)
    fold_into(block.norm1, block.attn.qkv, ratio, shift)  # the fold alone, zeros still padded
    assert _relative(_logits(model, sample), expected) > 1e-3
    block.__class__ = FoldPaddedBlock
    block.register_buffer("pad_value", (-shift).float(), persistent=False)
    assert _relative(_logits(model, sample), expected) < 1e-5


def test_the_folded_channels_share_one_range_and_the_state_reloads(tiny_dataset, tmp_path):
    samples = calibration_samples(tiny_dataset, 2, seed=0)
    model = _padded_sam()
    ranges = {}

    def keep(module, args, output):
        ranges.setdefault(module, []).append(output.detach().reshape(-1, output.shape[-1]))

    report = calibrate(model, "repq-vit", 4, 4, samples, progress=False)
    norm = model.image_encoder.blocks[2].norm2
    handle = norm.register_forward_hook(keep)
    with disabled(model):
        for sample in samples:
            _logits(model, sample)
    handle.remove()
    values = torch.cat(ranges[norm])
    low, spread = values.amin(0), values.amax(0) - values.amin(0)
    assert float(low.std() / spread.mean()) < 1e-4 and float(spread.std() / spread.mean()) < 1e-4
    with quantizing(model):
        quantized = _logits(model, samples[0])
    save_calibrated(model, tmp_path / "state.pt", report, "repq-vit", "testbed", 4, 4)
    fresh = _padded_sam()
    load_calibrated(fresh, tmp_path / "state.pt")
    assert isinstance(fresh.image_encoder.blocks[0], FoldPaddedBlock)
    with quantizing(fresh):
        assert torch.equal(_logits(fresh, samples[0]), quantized)
