"""The Hessian-guided search pass: conv units, the l2 fallback (recorded), a broken task loss refused."""

from __future__ import annotations

import logging

import pytest
import torch

from ptqsam.calibration import calibrate, calibration_samples, load_calibrated, save_calibrated
from ptqsam.calibration import hessian
from ptqsam.errors import CalibrationError
from ptqsam.instrument.recipe import Recipe
from quantizers.modules.uniform import UniformQuantizer

DECODER_MODULES = ["mask_decoder.output_upscaling.*", "mask_decoder.iou_prediction_head.layers.0",
                   "mask_decoder.output_hypernetworks_mlps.0.layers.0",
                   "mask_decoder.output_hypernetworks_mlps.1.layers.0", "prompt_encoder.mask_downscaling.0"]


def _recipe(modules=DECODER_MODULES, search: str = "hessian") -> Recipe:
    spec = {"symmetric": True, "search": search, "search_options": {"n": 12, "rounds": 1}} if search else {
        "symmetric": True, "observer": "minmax"}
    return Recipe.from_dict({"name": "decoder-search", "description": "a few decoder units", "rules": [
        {"include": [m + ".weight" for m in modules],
         "spec": {"bits": "W", "granularity": {"kind": "channel", "axis": 0}, **spec}},
        {"include": [m + ".input" for m in modules], "spec": {"bits": "A", **spec}}]})


def _calibrate(model, tiny_dataset, recipe=None, **kwargs):
    samples = calibration_samples(tiny_dataset, 1, seed=0)
    return calibrate(model, recipe or _recipe(), 4, 4, samples, exclude=("image_encoder.*",), progress=False, **kwargs)


def test_conv_and_conv_transpose_units_are_searched(tiny_dataset, random_testbed):
    report = _calibrate(random_testbed(), tiny_dataset)
    for unit in ("mask_decoder.output_upscaling.0", "mask_decoder.output_upscaling.3"):  # ConvTranspose2d
        record = report.hessian[unit]
        assert record["metric"] == "hessian" and "fallback" not in record
        assert record["history"][-1] < record["history"][0]
    searched = report.quantizers["mask_decoder.output_upscaling.3.input"]
    minmax = _calibrate(random_testbed(), tiny_dataset, _recipe(search="")).quantizers[
        "mask_decoder.output_upscaling.3.input"]
    assert isinstance(searched, UniformQuantizer) and searched.is_calibrated
    assert not torch.equal(searched.scale, minmax.scale)  # no silent MinMax fallback any more
    weight = report.quantizers["mask_decoder.output_upscaling.3.weight"]
    assert weight.scale.numel() == 16  # one scale per output channel of the transposed conv
    # the mask-prompt convs, which box prompts never reach, are searched on mask-prompted calls
    assert report.hessian["prompt_encoder.mask_downscaling.0"]["metric"] == "hessian"
    assert report.unreached == []


def test_units_without_a_gradient_fall_back_to_l2_with_a_warning_and_a_record(
        tiny_dataset, random_testbed, tmp_path, caplog):
    model = random_testbed()
    with caplog.at_level(logging.WARNING, logger="ptqsam"):
        report = _calibrate(model, tiny_dataset)
    iou_head = report.hessian["mask_decoder.iou_prediction_head.layers.0"]  # never reaches the mask loss
    assert iou_head["metric"] == "l2" and iou_head["fallback"] == hessian.NO_GRADIENT
    dropped = report.hessian["mask_decoder.output_hypernetworks_mlps.0.layers.0"]  # mask 0: dropped by multimask
    assert dropped["metric"] == "l2" and dropped["fallback"] == hessian.ZERO_GRADIENT
    kept = report.hessian["mask_decoder.output_hypernetworks_mlps.1.layers.0"]
    assert kept["metric"] == "hessian" and "fallback" not in kept
    assert "2 unit(s) searched on the unweighted output error (l2)" in caplog.text
    assert "mask_decoder.iou_prediction_head.layers.0 (no gradient" in caplog.text
    save_calibrated(model, tmp_path / "state.pt", report, _recipe(), "testbed", 4, 4)
    saved = load_calibrated(random_testbed(), tmp_path / "state.pt").extra["hessian"]
    assert saved["mask_decoder.iou_prediction_head.layers.0"]["fallback"] == hessian.NO_GRADIENT
    assert saved == report.hessian


def test_a_task_loss_with_zero_gradient_is_refused(tiny_dataset, random_testbed, monkeypatch):
    # PTQ4ViT's KL(FP || FP) bug in spirit: the loss is minimal at the float output, so no gradient
    monkeypatch.setattr(hessian, "task_loss", lambda logits: (logits - logits.detach()).square().mean())
    with pytest.raises(CalibrationError, match="identically zero gradient on 1 of 1 calibration images"):
        _calibrate(random_testbed(), tiny_dataset)


@pytest.mark.parametrize("searched", ["input", "weight"])
def test_an_operand_without_the_search_keeps_its_own_calibration(tiny_dataset, random_testbed, searched):
    """Only one operand of a unit asks for the search: the other is calibrated as its spec says
    (here affine MinMax, per channel for weights) and held fixed; it used to get the search's
    symmetric scale with zero point 0, which clipped every negative value."""
    modules = ["mask_decoder.output_upscaling.3", "mask_decoder.transformer.layers.0.mlp.lin1"]
    plain = {"symmetric": False, "observer": "minmax"}
    search = {"symmetric": True, "search": "hessian", "search_options": {"n": 12, "rounds": 1}}
    rules = [{"include": [m + ".weight" for m in modules],
              "spec": {"bits": "W", "granularity": {"kind": "channel", "axis": 0},
                       **(search if searched == "weight" else plain)}},
             {"include": [m + ".input" for m in modules], "spec": {"bits": "A", **(search if searched == "input" else plain)}}]
    recipe = Recipe.from_dict({"name": "one-operand", "description": "one operand searched", "rules": rules})
    report = _calibrate(random_testbed(), tiny_dataset, recipe)
    reference = _calibrate(random_testbed(), tiny_dataset, Recipe.from_dict(
        {"name": "plain", "description": "no search", "rules": [
            {**rule, "spec": {**{k: v for k, v in rule["spec"].items() if not k.startswith("search")}, **plain}}
            for rule in rules]}))
    held = "weight" if searched == "input" else "input"
    for module in modules:
        assert report.hessian[module][{"input": "b", "weight": "a"}[searched]] == "fixed"
        mine, theirs = report.quantizers[f"{module}.{held}"], reference.quantizers[f"{module}.{held}"]
        assert torch.equal(mine.scale, theirs.scale) and torch.equal(mine.zero_point, theirs.zero_point)
        assert bool((mine.zero_point != 0).any())  # affine: the negative values keep their codes
        assert report.hessian[module]["history"][-1] <= report.hessian[module]["history"][0]
    assert report.unreached == []
