"""Instrumented models compute bit-identically to the originals while no quantizer acts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ptqsam.instrument import attach, attached_quantizers, detach, instrument, sites
from ptqsam.instrument.layers import SitedConvTranspose2d
from ptqsam.models import build_model


@pytest.mark.parametrize("builder", ["make_vit_sam", "make_tiny_vit_sam"])
def test_float_mode_is_bit_identical_for_every_prompt(request, builder, sam_io):
    make = request.getfixturevalue(builder)
    reference, model = make(), instrument(make())
    img = sam_io.image(64)
    for expected, got in zip(sam_io.predict_all(reference, img), sam_io.predict_all(model, img)):
        sam_io.assert_identical(expected, got)


def test_testbed_float_mode_is_bit_identical_with_quantizers_off_and_after_detach(sam_io):
    reference = build_model("testbed")
    model = copy.deepcopy(reference)
    attach(model, "minmax", 4, 4)
    assert attached_quantizers(model)  # hooks present, every quantizer in OFF mode
    img, box = sam_io.image(256), sam_io.prompts(256)["box"]
    expected = sam_io.predict(reference, img, box)
    sam_io.assert_identical(expected, sam_io.predict(model, img, box))
    detach(model)
    sam_io.assert_identical(expected, sam_io.predict(model, img, box))


def test_instrumentation_keeps_parameters_and_state_dict_keys(make_vit_sam, make_tiny_vit_sam):
    for make in (make_vit_sam, make_tiny_vit_sam):
        reference, model = make(), instrument(make())
        assert list(model.state_dict()) == list(reference.state_dict())
        assert [n for n, _ in model.named_parameters()] == [n for n, _ in reference.named_parameters()]
        model.load_state_dict(reference.state_dict(), strict=True)  # an official checkpoint still loads


def test_instrument_is_idempotent(make_vit_sam):
    model = instrument(make_vit_sam())
    first = list(sites(model))
    instrument(model)
    assert list(sites(model)) == first
    qkv = model.image_encoder.blocks[0].attn.qkv
    assert [n for n, _ in qkv.named_children()] == ["input_site", "weight_site"]


@pytest.mark.parametrize("groups,output_size", [(1, None), (2, [16, 14])])
def test_conv_transpose_matches_torch_and_its_weight_site_puts_output_channels_first(groups, output_size):
    torch.manual_seed(0)
    reference = nn.ConvTranspose2d(4, 6, kernel_size=3, stride=2, padding=1, groups=groups, dilation=1)
    layer = instrument(copy.deepcopy(reference))
    assert type(layer) is SitedConvTranspose2d
    seen = []
    layer.weight_site.register_forward_hook(lambda site, args, out: seen.append(out.shape))
    x = torch.randn(2, 4, 8, 7)
    assert torch.equal(layer(x, output_size), reference(x, output_size))
    assert seen == [torch.Size([6 // groups, 4, 3, 3])]
