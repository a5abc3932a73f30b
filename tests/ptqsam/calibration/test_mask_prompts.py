"""Mask prompts (SAM's iterative refinement) under quantization: calibration reaches the mask-prompt
path with the float model's own low-resolution masks, touching no other site, and
segment_anything's SamPredictor runs box, point and mask-refinement prompts under every shipped
recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from ptqsam.calibration import calibrate, calibrated_quantizing
from ptqsam.inference import SamRunner
from ptqsam.instrument import shipped_recipes
from ptqsam.instrument.hooks import forward_hooks
from ptqsam.models.blocks import MASK_PROMPT_SITES, on_mask_path
from ptqsam.models.testbed import TestbedConfig, build_testbed
from ptqsam.passes import SampleLoop

#: a testbed scaled down further (128² input, 2 encoder blocks, one decoder layer): every shipped
#: recipe calibrates on it in seconds
TINY = TestbedConfig(image_size=128, encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, window_size=4,
                     global_attn_indexes=(1,), embed_dim=32, decoder_depth=1, decoder_mlp_dim=64,
                     decoder_num_heads=2, iou_head_hidden_dim=32)
IMAGE = (np.random.default_rng(0).random((96, 120, 3)) * 255).astype(np.uint8)
BOX = np.array([10, 12, 90, 80])
POINT, LABEL = np.array([[50, 40]]), np.array([1])


def _tiny_model(seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_testbed(TINY).eval()


@pytest.fixture(scope="module")
def calibrated(two_samples):
    """``get(recipe)``: a tiny random testbed calibrated by ``recipe`` at W4A4 on one image (Hessian
    search on 8 rows per unit, 2 reconstruction steps per unit), with its report; once per recipe."""
    done = {}

    def get(recipe: str):
        if recipe not in done:
            model = _tiny_model()
            report = calibrate(model, recipe, 4, 4, two_samples[:1], progress=False, search_rows=8,
                               reconstruction={"iterations": 2})
            done[recipe] = model, report
        return done[recipe]
    return get


def _predict(predictor: SamPredictor, prompt: str):
    if prompt == "box":
        return predictor.predict(box=BOX)
    if prompt == "point":
        return predictor.predict(point_coords=POINT, point_labels=LABEL)
    _, scores, logits = predictor.predict(box=BOX)  # refinement: feed back the best low-res logits
    return predictor.predict(box=BOX, mask_input=logits[np.argmax(scores)][None], multimask_output=False)


def test_every_shipped_recipe_is_in_the_matrix():
    assert len(shipped_recipes()) >= 14 and {"minmax", "ptq4vit", "log-sqrt2", "gptq", "adaround"} <= set(
        shipped_recipes())


@pytest.mark.parametrize("prompt", ["box", "point", "mask refinement"])
@pytest.mark.parametrize("recipe", shipped_recipes())
def test_sam_predictor_runs_every_prompt_kind_under_every_recipe(calibrated, recipe, prompt):
    model, report = calibrated(recipe)
    assert report.unreached == []  # the mask-prompt path too, where the recipe quantizes it
    mask_path = [name for name in report.quantizers if on_mask_path(name)]
    assert all(report.quantizers[name].is_calibrated for name in mask_path)
    predictor = SamPredictor(model)
    with torch.inference_mode(), calibrated_quantizing(model, report.extra_state()):
        predictor.set_image(IMAGE)
        masks, scores, logits = _predict(predictor, prompt)
    count = 1 if prompt == "mask refinement" else 3
    low_res = 4 * TINY.embedding_size
    assert masks.shape == (count, *IMAGE.shape[:2]) and masks.dtype == bool
    assert scores.shape == (count,) and logits.shape == (count, low_res, low_res)
    assert np.isfinite(scores).all() and np.isfinite(logits).all()


def test_recipes_quantizing_the_prompt_encoder_quantize_the_mask_path(calibrated):
    for recipe in ("minmax", "ptq4vit", "log-sqrt2", "gptq", "adaround"):
        _, report = calibrated(recipe)
        names = sorted(name for name in report.quantizers if on_mask_path(name))
        assert len(names) == 6, (recipe, names)  # 3 convs: weight and input each
    assert not [name for name in calibrated("ptq4sam")[1].quantizers if on_mask_path(name)]  # its float list
    searched = calibrated("ptq4vit")[1].hessian
    assert {f"prompt_encoder.mask_downscaling.{i}" for i in (0, 3, 6)} <= set(searched)
    assert {f"prompt_encoder.mask_downscaling.{i}" for i in (0, 3, 6)} <= set(calibrated("gptq")[1].passes["gptq"])


@pytest.mark.parametrize("recipe", ["minmax", "ptq4vit", "gptq"])
def test_the_mask_prompt_pass_changes_no_other_site(two_samples, recipe):
    """Calibrating the mask path on mask prompts leaves every other quantizer as calibrating
    without it (the mask path kept float) makes it."""
    states = []
    for exclude in ((MASK_PROMPT_SITES,), ()):
        model = _tiny_model()
        calibrate(model, recipe, 4, 4, two_samples[:1], exclude, progress=False, search_rows=8)
        states.append(model.state_dict())
    without, with_mask_path = states
    assert set(with_mask_path) - set(without) and all(on_mask_path(k) for k in set(with_mask_path) - set(without))
    assert all(torch.equal(without[key], with_mask_path[key]) for key in without)


def test_mask_prompts_are_the_float_models_best_low_res_masks(two_samples):
    model = _tiny_model()
    sample = two_samples[0]
    seen = []
    with forward_hooks([(model.prompt_encoder.mask_downscaling[0], lambda m, args: seen.append(args[0]))], pre=True):
        SampleLoop(model, [sample], True, False).with_mask_prompts().run("mask prompts")
        SampleLoop(model, [sample], True, False).run("no mask prompts")
    assert len(seen) == 1  # box prompts alone never reach the mask path
    runner = SamRunner(model)
    with torch.inference_mode():
        prediction = runner.decode(runner.embed(sample.image), sample.prompts.boxes)
    best = prediction.low_res_logits[torch.arange(len(sample.prompts)), prediction.iou_predictions.argmax(1)]
    assert torch.equal(seen[0], best.unsqueeze(1))
