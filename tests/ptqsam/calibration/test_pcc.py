"""SAQ-SAM's PCC pass: the chosen percentile minimises 1 − IoU of the attention masks (checked
against an independent computation), and the clipped quantizers skip the statistics pass."""

from __future__ import annotations

import pytest
import torch

from ptqsam.calibration import calibrate, calibration_samples
from ptqsam.calibration.pcc import pcc_pass, pcc_sites
from ptqsam.inference import SamRunner
from ptqsam.instrument import Recipe, attach, attached_quantizers, load_recipe, quantizing, sites
from ptqsam.instrument.modes import disabled
from quantizers.functional.uniform import qparams_from_minmax
from quantizers.search.pcc import attention_masks, mask_iou_loss

ATTENTION = "mask_decoder.transformer.layers.0.cross_attn_token_to_image"
PERCENTILES = [0.6, 0.8, 0.9, 0.99, 1.0]


def _recipe(site: str) -> Recipe:
    return Recipe.from_dict({"name": "pcc-only", "rules": [{"include": [site], "spec": {
        "bits": "A", "search": "pcc", "search_options": {"percentiles": PERCENTILES, "rounds": 1}}}]})


def _probs_and_input(model, sample, site):
    """The attention's probabilities and the site's input for one sample (whole model run)."""
    found = {}
    probs = model.get_submodule(ATTENTION).probs_site
    hooks = [probs.register_forward_pre_hook(lambda m, a: found.setdefault("probs", a[0].detach())),
             sites(model)[site].register_forward_pre_hook(lambda m, a: found.setdefault("x", a[0].detach()))]
    runner = SamRunner(model)
    with torch.inference_mode():
        p = sample.prompts
        runner.decode(runner.embed(sample.image), p.boxes, p.points, p.point_labels)
    for hook in hooks:
        hook.remove()
    return found["probs"], found["x"]


@pytest.mark.parametrize("role", ["query", "k_proj.input"])
def test_the_chosen_percentile_minimises_the_mask_objective(role, tiny_dataset, random_testbed):
    site = f"{ATTENTION}.{role}"
    samples = calibration_samples(tiny_dataset, 2, seed=0)
    model = random_testbed()
    attach(model, _recipe(site), 3, 3)
    records = pcc_pass(model, samples, pcc_sites(model))
    quantizer = attached_quantizers(model)[site]
    with disabled(model):
        reference, x = _probs_and_input(model, samples[0], site)  # the first image only
    losses = []
    for p in PERCENTILES:  # the objective, computed independently on whole-model runs
        q = torch.tensor([1 - p, p], dtype=torch.float64)
        low, high = torch.quantile(x.double().reshape(-1), q).float()
        quantizer.set_qparams(*qparams_from_minmax(low, high, 3, False))
        with quantizing(model, [site]):
            probs, _ = _probs_and_input(model, samples[0], site)
        losses.append(mask_iou_loss(attention_masks(reference, 0.5), attention_masks(probs, 0.5)))
    record = records[site]
    assert record["losses"] == pytest.approx(losses, abs=1e-6)
    assert record["percentile"] == PERCENTILES[losses.index(min(losses))]
    assert len(set(round(v, 6) for v in losses)) > 1  # clipping matters on this case


def test_saq_sam_clips_q_and_k_of_every_decoder_attention_before_the_statistics(tiny_dataset, random_testbed):
    data = load_recipe("saq-sam").to_dict()
    del data["reconstruction"]
    pcc_rule = data["rules"][0]
    pcc_rule["spec"]["search_options"] = {"percentiles": [0.9, 1.0], "rounds": 1}
    model = random_testbed()
    report = calibrate(model, Recipe.from_dict(data), 4, 4, calibration_samples(tiny_dataset, 1, seed=0),
                       progress=False)
    clipped = report.passes["pcc"]
    attentions = {record["attention"] for record in clipped.values()}
    assert len(attentions) == 7 and len(clipped) == 28  # 2 layers × 3 attentions + the final one; q/k in and out
    quantizers = attached_quantizers(model)
    for name in clipped:
        assert quantizers[name].is_calibrated and int(quantizers[name].observer.num_batches) == 0
    assert int(quantizers["image_encoder.blocks.0.attn.qkv.input"].observer.num_batches) == 1
