"""The zoo's block list: typed, in the order the forward runs the blocks, from the architecture."""

from __future__ import annotations

import pytest

from ptqsam.errors import PtqsamError
from ptqsam.instrument import forward_hooks
from ptqsam.models.blocks import block_of, model_blocks, part_of
from ptqsam.models.zoo import build_tiny_vit_sam


def _call_order(model, blocks, run):
    order: list[str] = []
    modules = dict(model.named_modules())
    with forward_hooks((modules[b.name], lambda m, a, o, n=b.name: order.append(n)) for b in blocks):
        run()
    return order


def test_testbed_blocks_are_the_vit_blocks_neck_and_decoder_layers_in_forward_order(random_testbed, box_prediction,
                                                                                   testbed_image):
    model = random_testbed()
    blocks = model_blocks(model)
    assert [b.name for b in blocks] == (
        ["image_encoder.patch_embed"] + [f"image_encoder.blocks.{i}" for i in range(6)] + ["image_encoder.neck"]
        + ["mask_decoder.transformer.layers.0", "mask_decoder.transformer.layers.1",
           "mask_decoder.transformer.final_attn_token_to_image"])
    assert [b.global_attention for b in blocks if b.kind == "vit_block"] == [False, False, True, False, False, True]
    assert {b.part for b in blocks} == {"image_encoder", "mask_decoder"}
    order = _call_order(model, blocks, lambda: box_prediction(model, testbed_image, [10, 20, 100, 200], True))
    assert order == [b.name for b in blocks]


def test_tiny_vit_blocks_include_each_mbconv_and_patch_merging():
    model = build_tiny_vit_sam()
    kinds = [b.kind for b in model_blocks(model)]
    assert kinds[:4] == ["patch_embed", "mbconv", "mbconv", "patch_merging"]
    assert kinds.count("tinyvit_block") == 2 + 6 + 2 and kinds.count("patch_merging") == 3
    assert kinds[-3:] == ["two_way_layer", "two_way_layer", "final_attention"]
    modules = dict(model.named_modules())
    assert all(b.name in modules for b in model_blocks(model))


def test_block_of_and_part_of(random_testbed):
    blocks = model_blocks(random_testbed())
    assert block_of(blocks, "image_encoder.blocks.1.attn.qkv.weight").name == "image_encoder.blocks.1"
    assert block_of(blocks, "image_encoder.blocks.10") is None  # not a prefix match on "blocks.1"
    assert block_of(blocks, "mask_decoder.iou_prediction_head.layers.0") is None
    assert part_of("prompt_encoder.mask_downscaling.0.weight") == "prompt_encoder"
    with pytest.raises(PtqsamError, match="not inside a part"):
        part_of("head.weight")
