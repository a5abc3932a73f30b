"""Costs of bit assignments: MACs checked against torch's FLOP counter, averages, size and BOPs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ptqsam.errors import AnalysisError
from ptqsam.instrument import attach, attached_quantizers, model_units
from ptqsam.mixed_precision.costs import model_costs


@pytest.fixture(scope="module")
def model():
    from ptqsam.models import build_model

    model = build_model("testbed")
    attach(model, "ptq4sam", 8, 8)
    return model


@pytest.fixture(scope="module")
def costs(model):
    return model_costs(model, attached_quantizers(model))


def _flops_by_module(model) -> dict[str, int]:
    """torch's FLOP count (2 per MAC) of each module in the probe forward site_inventory makes."""
    size = model.image_encoder.img_size
    with FlopCounterMode(display=False) as counter:
        embedding = model.image_encoder(torch.zeros(1, 3, size, size))
        sparse, dense = model.prompt_encoder(points=None, boxes=torch.tensor([[0.0, 0.0, size / 2, size / 2]]),
                                             masks=torch.zeros(1, 1, *model.prompt_encoder.mask_input_size))
        model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)
    roots = {type(getattr(model, part)).__name__: part for part in ("image_encoder", "prompt_encoder", "mask_decoder")}
    flops = {}
    for name, counts in counter.get_flop_counts().items():
        root, _, rest = name.partition(".")
        if root in roots:
            flops[roots[root] + ("." + rest if rest else "")] = sum(counts.values())
    return flops


def test_macs_match_torch_flop_counter(model, costs):
    flops = _flops_by_module(model)
    units = {u.name: u for u in model_units(model)}
    layers = [p for p in costs.products if units[p.name].kind != "matmul"]
    assert {units[p.name].kind for p in layers} == {"linear", "conv2d", "conv_transpose2d"}
    for product in layers:
        assert 2 * product.macs == flops[units[product.name].module], product.name
    decoder = sum(p.macs for p in costs.products if p.name.startswith("mask_decoder."))
    assert 2 * decoder == flops["mask_decoder"]  # the decoder's attention matmuls and its final matmul too


def test_averages_size_and_bops(model, costs):
    domain_weights = {n: numel for n, numel in costs.weights.items() if n in costs.domain}
    assert costs.uniform(5, 7)["weight_bits"] == pytest.approx(5.0)
    assert costs.uniform(5, 7)["activation_bits"] == pytest.approx(7.0)
    parameters = sum(p.numel() for p in model.parameters())
    float_costs = costs.of({})
    assert float_costs["size_mb"] == pytest.approx(parameters * 4 / 1e6)
    assert float_costs["weight_bits"] == 32.0
    eight = costs.uniform(8, 8)
    assert eight["size_mb"] == pytest.approx((parameters * 4 - 3 * sum(domain_weights.values())) / 1e6)
    assert float_costs["gbops"] == pytest.approx(sum(p.macs for p in costs.products) * 32 * 32 / 1e9)
    one = next(p for p in costs.products if p.a in costs.domain and p.b in costs.domain)
    halved = costs.of({one.a: 4, one.b: 8})
    assert float_costs["gbops"] - halved["gbops"] == pytest.approx(one.macs * (32 * 32 - 4 * 8) / 1e9)
    heavier = dict.fromkeys(costs.domain, 4)
    heavier[next(iter(domain_weights))] = 8
    assert costs.of(heavier)["weight_bits"] > 4.0 and costs.of(heavier)["activation_bits"] == 4.0


def test_sites_outside_the_domain_are_refused(model, costs):
    outside = "image_encoder.patch_embed.proj.weight"  # kept float by ptq4sam
    assert outside in costs.weights and outside not in costs.domain
    with pytest.raises(AnalysisError, match="does not quantize"):
        costs.of({outside: 8})
    with pytest.raises(AnalysisError, match="no weight or activation site"):
        model_costs(model, ["image_encoder.blocks.0.attn.logits"])
    assert math.isnan(model_costs(model, []).of({})["weight_bits"])


def test_a_tiny_vit_model_costs_without_its_unused_classification_head():
    from small_models import small_tiny_vit_sam

    tiny = small_tiny_vit_sam()
    encoder = tiny.image_encoder
    attach(tiny, "minmax", 8, 8)
    assert not [name for name in attached_quantizers(tiny) if ".head." in name or "norm_head" in name]
    costs = model_costs(tiny, attached_quantizers(tiny))  # raised: the probe never reaches the head's sites
    head = sum(p.numel() for m in (encoder.head, encoder.norm_head) for p in m.parameters())
    everything = sum(p.numel() for p in tiny.parameters())
    assert costs.other_parameters + sum(costs.weights.values()) == everything - head
