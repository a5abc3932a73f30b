"""Which sites exist, what tensor each one sees, and the site inventory."""

from __future__ import annotations

import math
from importlib import import_module
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.modeling.image_encoder import Attention as ViTAttention
from segment_anything.modeling.image_encoder import add_decomposed_rel_pos
from segment_anything.modeling.transformer import Attention as TwoWayAttention

from ptqsam.instrument import Site, attach, attached_quantizers, instrument, site_inventory, sites
from ptqsam.models.tiny_vit import Attention as TinyViTAttention
from ptqsam.models.zoo import build_tiny_vit_sam
from quantizers import Mode

# Both decoders: SAM's TwoWayTransformer (depth 2, three attentions + a 2-Linear MLP per layer,
# plus the final token->image attention) and its heads.
DECODER_ATTENTIONS = 2 * 3 + 1
DECODER_LAYERS = DECODER_ATTENTIONS * 4 + 2 * 2 + 2 + 4 * 3 + 3  # + MLPs, 2 ConvT, 4 hyper MLPs, IoU head
PROMPT_ENCODER_LAYERS = 3  # mask downscaling convs


def expected_counts(layers: int, attentions: int) -> Counter:
    """Site kinds implied by ``layers`` Linear/Conv layers and ``attentions`` attention blocks
    (plus the mask decoder's final matmul)."""
    return Counter(
        weight=layers, input=layers, query=attentions, key=attentions, value=attentions, probs=attentions,
        output=2 * attentions + 1, matmul_a=1, matmul_b=1,
    )


def kinds(model) -> Counter:
    return Counter(site.kind for site in sites(model).values())


def test_sam_b_site_counts_follow_the_architecture():
    model = instrument(sam_model_registry["vit_b"]())
    depth = 12
    encoder_layers = 1 + 4 * depth + 2  # patch embed, qkv/proj/lin1/lin2 per block, 2 neck convs
    layers = encoder_layers + PROMPT_ENCODER_LAYERS + DECODER_LAYERS
    assert kinds(model) == expected_counts(layers, depth + DECODER_ATTENTIONS)
    names = sites(model)
    for name in (
        "image_encoder.blocks.0.attn.qkv.weight",
        "image_encoder.blocks.0.attn.qkv.input",
        "image_encoder.blocks.0.attn.query",
        "image_encoder.blocks.11.attn.probs",
        "mask_decoder.transformer.layers.0.cross_attn_token_to_image.k_proj.weight",
        "mask_decoder.transformer.final_attn_token_to_image.logits",
        "mask_decoder.matmul_a",
        "mask_decoder.matmul_b",
        "mask_decoder.matmul_output",
    ):
        assert names[name].name == name


def test_tinysam_site_counts_follow_the_architecture():
    model = instrument(build_tiny_vit_sam())
    depths = (2, 2, 6, 2)
    attention_blocks = sum(depths[1:])
    encoder_layers = (
        2  # patch embed convs
        + 3 * depths[0]  # MBConv: three convs each
        + 3 * (len(depths) - 1)  # PatchMerging after each stage but the last: three convs each
        + 5 * attention_blocks  # qkv, proj, fc1, fc2, local conv
        + 2  # neck convs (the unused classification head gets no sites)
    )
    layers = encoder_layers + PROMPT_ENCODER_LAYERS + DECODER_LAYERS
    assert kinds(model) == expected_counts(layers, attention_blocks + DECODER_ATTENTIONS)
    assert "image_encoder.layers.1.blocks.0.mlp.fc2.input" in sites(model)
    assert not [name for name in sites(model) if name.startswith(("image_encoder.head.", "image_encoder.norm_head."))]


def capture(module):
    """Record each site's output and extra args, in call order."""
    calls = []
    for site in module.modules():
        if isinstance(site, Site):
            site.register_forward_hook(lambda s, args, out: calls.append((s.name.rpartition(".")[2], out, args[1:])))
    return calls


def by_role(calls):
    return {role: (out, context) for role, out, context in calls}


def assert_attention_sites(calls, query, key, value, logits, probs, context):
    roles = [role for role, _, _ in calls]
    assert roles.index("value") < roles.index("probs")
    seen = by_role(calls)
    for role, expected in dict(query=query, key=key, value=value, logits=logits, probs=probs, context=context).items():
        torch.testing.assert_close(seen[role][0], expected, rtol=1e-5, atol=1e-6, msg=role)
    probs_context = seen["probs"][1]
    assert len(probs_context) == 1 and probs_context[0] is seen["value"][0]


def test_vit_attention_sites_see_scaled_query_logits_before_rel_pos_and_probs_with_v():
    torch.manual_seed(0)
    attn = ViTAttention(dim=8, num_heads=2, use_rel_pos=True, input_size=(3, 3))
    torch.nn.init.normal_(attn.rel_pos_h), torch.nn.init.normal_(attn.rel_pos_w)
    instrument(attn)
    calls = capture(attn)
    x = torch.randn(2, 3, 3, 8)
    attn(x)
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(2, 9, 3, 2, 4).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, 4, 9, 4)
    logits = (q * attn.scale) @ k.transpose(1, 2)
    probs = add_decomposed_rel_pos(logits, q, attn.rel_pos_h, attn.rel_pos_w, (3, 3), (3, 3)).softmax(-1)
    assert_attention_sites(calls, q * attn.scale, k, v, logits, probs, probs @ v)


def test_two_way_attention_sites_see_logits_before_the_division():
    torch.manual_seed(0)
    attn = instrument(TwoWayAttention(embedding_dim=8, num_heads=2, downsample_rate=2))
    calls = capture(attn)
    q_in, k_in, v_in = torch.randn(1, 5, 8), torch.randn(1, 7, 8), torch.randn(1, 7, 8)
    attn(q_in, k_in, v_in)

    def heads(t, layer):
        return F.linear(t, layer.weight, layer.bias).reshape(1, -1, 2, 2).transpose(1, 2)

    q, k, v = heads(q_in, attn.q_proj), heads(k_in, attn.k_proj), heads(v_in, attn.v_proj)
    logits = q @ k.transpose(-1, -2)
    probs = (logits / math.sqrt(2)).softmax(-1)
    assert_attention_sites(calls, q, k, v, logits, probs, probs @ v)


def test_tiny_vit_attention_sites_see_logits_before_scale_and_bias():
    torch.manual_seed(0)
    attn = instrument(TinyViTAttention(dim=8, key_dim=4, num_heads=2, attn_ratio=1.0, window_size=3))
    calls = capture(attn)
    x = torch.randn(2, 9, 8)
    attn(x)
    qkv = F.linear(F.layer_norm(x, (8,), attn.norm.weight, attn.norm.bias), attn.qkv.weight, attn.qkv.bias)
    q, k, v = qkv.view(2, 9, 2, 12).permute(0, 2, 1, 3).split(4, dim=3)
    logits = q @ k.transpose(-2, -1)
    probs = (logits * attn.scale + attn.attention_biases[:, attn.attention_bias_idxs]).softmax(-1)
    assert_attention_sites(calls, q, k, v, logits, probs, probs @ v)


def test_mask_decoder_matmul_sites(make_vit_sam, sam_io):
    model = instrument(make_vit_sam())
    calls = capture(model.mask_decoder)
    out = sam_io.predict(model, sam_io.image(64), sam_io.prompts(64)["box"])
    seen = by_role(calls)
    a, b, product = seen["matmul_a"][0], seen["matmul_b"][0], seen["matmul_output"][0]
    assert a.shape == (1, 4, 4) and b.shape == (1, 4, 16 * 16)  # 4 mask tokens, 32 // 8 channels
    torch.testing.assert_close(product, a @ b)
    assert torch.equal(product.view(1, 4, 16, 16)[:, 1:], out["low_res_logits"])


def test_inventory_shapes_match_a_real_forward(make_tiny_vit_sam, sam_io):
    model = instrument(make_tiny_vit_sam())
    real = {}

    def record(site, args, out):
        real.setdefault(site.name, tuple(out.shape))

    for site in sites(model).values():
        site.register_forward_hook(record)
    sam_io.predict(model, sam_io.image(64), sam_io.prompts(64)["box+mask"])
    rows = site_inventory(model)
    assert [r.name for r in rows] == list(sites(model))
    assert {r.name: r.shape for r in rows} == {n: real.get(n) for n in sites(model)}
    assert [r.name for r in rows if r.shape is None] == []  # every site is reached (the unused head has none)
    owners = {r.name: r.owner for r in rows}
    assert owners["image_encoder.layers.1.blocks.0.attn.query"] == "Attention"
    assert owners["image_encoder.layers.1.blocks.0.attn.qkv.weight"] == "Linear"
    assert owners["mask_decoder.output_upscaling.0.weight"] == "ConvTranspose2d"
    assert owners["mask_decoder.matmul_a"] == "MaskDecoder"


def test_inventory_falls_back_to_a_real_forward_with_quantizers_off(make_vit_sam, monkeypatch):
    model = make_vit_sam()
    attach(model, "minmax", 8, 8)  # uncalibrated: a quantizing forward would raise
    expected = site_inventory(model)

    def no_meta(model):
        raise NotImplementedError("meta unsupported")

    monkeypatch.setattr(import_module("ptqsam.instrument.inventory"), "_meta_copy", no_meta)
    assert site_inventory(model) == expected
    assert all(r.shape is not None for r in expected)
    # the probe's hooks are gone (a site calls its quantizer itself, without a hook)
    assert all(not site._forward_hooks for site in sites(model).values())
    assert {q.mode for q in attached_quantizers(model).values()} == {Mode.OFF}


@pytest.mark.parametrize("kind", ["weight", "bogus"])
def test_site_kind_is_checked(kind):
    if kind == "bogus":
        with pytest.raises(ValueError, match="bogus"):
            Site(kind)
    else:
        assert Site(kind).kind == kind
