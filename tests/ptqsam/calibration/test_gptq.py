"""GPTQ as a calibration pass: every Linear / Conv2d weight's codes lower the layer's proxy output
error against round-to-nearest, the float weights stay untouched, the codes save and load, and a
reconstruction after it keeps them."""

from __future__ import annotations

import torch

from ptqsam.calibration import calibrate, calibration_samples, load_calibrated, save_calibrated
from ptqsam.inference import SamRunner
from ptqsam.instrument import Recipe, attached_quantizers, load_recipe, quantizing
from ptqsam.instrument.state import weights_fingerprint
from quantizers.parts.codes import CodeRounding


def _logits(model, sample):
    runner = SamRunner(model)
    with torch.inference_mode():
        p = sample.prompts
        return runner.decode(runner.embed(sample.image), p.boxes, p.points, p.point_labels).low_res_logits


def test_gptq_codes_beat_round_to_nearest_and_reload(tiny_dataset, random_testbed, tmp_path):
    samples = calibration_samples(tiny_dataset, 2, seed=0)
    model = random_testbed()
    before = weights_fingerprint(model)
    report = calibrate(model, "gptq", 4, 8, samples, progress=False)
    layers = report.passes["gptq"]
    assert {"image_encoder.neck.2", "image_encoder.blocks.0.mlp.lin2"} <= set(layers)  # a 3×3 conv and a Linear
    # GPTQ never loses to round-to-nearest; it gains wherever a layer has enough columns to
    # compensate (the mask path's first conv, 1 channel × 2×2, has 4 and ties)
    assert all(r["error_gptq"] <= r["error_nearest"] for r in layers.values())
    assert all(r["error_gptq"] < r["error_nearest"] for r in layers.values() if r["columns"] >= 16)
    assert weights_fingerprint(model) == before  # codes live in the quantizers
    quantizers = attached_quantizers(model)
    assert all(isinstance(quantizers[name + ".weight"].rounding, CodeRounding) for name in layers)
    transposed = "mask_decoder.output_upscaling.0.weight"  # no GPTQ for transposed convolutions: nearest
    assert transposed not in {n + ".weight" for n in layers} and quantizers[transposed].parts() == {}
    with quantizing(model):
        expected = _logits(model, samples[0])
    save_calibrated(model, tmp_path / "gptq.pt", report, "gptq", "testbed", 4, 8)
    fresh = random_testbed()
    load_calibrated(fresh, tmp_path / "gptq.pt")
    with quantizing(fresh):
        assert torch.equal(_logits(fresh, samples[0]), expected)


def test_gptq_weights_combine_with_another_recipe_and_survive_its_reconstruction(tiny_dataset, random_testbed):
    gptq_rule = load_recipe("gptq").rules[0].to_dict()
    recipe = Recipe.from_dict({**load_recipe("qdrop").to_dict(), "name": "qdrop-gptq",
                               "rules": [gptq_rule] + [r.to_dict() for r in load_recipe("qdrop").rules]})
    model = random_testbed()
    report = calibrate(model, recipe, 4, 4, calibration_samples(tiny_dataset, 1, seed=0), progress=False,
                       reconstruction={"iterations": 3})
    assert report.reconstruction["image_encoder.blocks.0"]["weights_rounded"] == 0  # AdaRound leaves GPTQ's codes
    assert report.reconstruction["image_encoder.blocks.0"]["scales_learned"] > 0
    quantizers = attached_quantizers(model)
    assert isinstance(quantizers["image_encoder.blocks.0.attn.qkv.weight"].rounding, CodeRounding)
