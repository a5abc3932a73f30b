"""Attaching quantizers to sites, detaching them, and switching their modes."""

from __future__ import annotations

import copy

import pytest
import torch

from ptqsam.errors import RecipeError
from ptqsam.instrument import (
    attach,
    attached_quantizers,
    detach,
    disabled,
    dropping,
    observing,
    quantizing,
    sites,
)
from quantizers import Mode, QuantizationError


def modes(model) -> dict[str, Mode]:
    return {name: q.mode for name, q in attached_quantizers(model).items()}


def calibrate(model, sam_io) -> None:
    with observing(model):  # a box with a mask input reaches every site
        sam_io.predict(model, sam_io.image(64), sam_io.prompts(64)["box+mask"])
    for quantizer in attached_quantizers(model).values():
        quantizer.finalize()


def test_attach_selects_sites_and_gives_only_those_a_quantizer(make_vit_sam):
    model = make_vit_sam()
    quantizers = attach(model, "minmax", 6, 6, exclude=["image_encoder.*", "*.output_upscaling.*"])
    assert quantizers == attached_quantizers(model)
    assert quantizers and not any(n.startswith("image_encoder.") or ".output_upscaling." in n for n in quantizers)
    assert "prompt_encoder.mask_downscaling.0.weight" in quantizers
    for name, site in sites(model).items():
        hooked = name in quantizers
        assert not site._forward_hooks, name  # a site calls its quantizer itself: no hook is left behind
        assert hasattr(site, "quantizer") == hooked, name
        if hooked:
            assert site.quantizer.spec.bits == 6 and site.quantizer.mode is Mode.OFF


def test_attach_twice_replaces_and_detach_removes_everything(make_vit_sam):
    model = make_vit_sam()
    first = attach(model, "minmax", 8, 8)
    second = attach(model, "minmax", 4, 4)
    assert list(first) == list(second)
    assert all(s.quantizer is second[n] and not s._forward_hooks for n, s in sites(model).items() if n in second)
    assert {q.spec.bits for q in attached_quantizers(model).values()} == {4}
    detach(model)
    assert attached_quantizers(model) == {}
    assert all(not s._forward_hooks and not list(s.children()) for s in sites(model).values())
    assert "quantizer" not in "".join(model.state_dict())


def test_a_deep_copy_has_its_own_quantizers_and_hooks(make_vit_sam):
    model = make_vit_sam()
    attach(model, "minmax", 8, 8)
    clone = copy.deepcopy(model)
    assert list(attached_quantizers(clone)) == list(attached_quantizers(model))
    assert all(a is not b for a, b in zip(attached_quantizers(clone).values(), attached_quantizers(model).values()))
    detach(clone)
    assert attached_quantizers(clone) == {}
    assert all(hasattr(s, "quantizer") for n, s in sites(model).items() if n in attached_quantizers(model))


def test_quantizing_changes_outputs_and_never_touches_float_weights(make_vit_sam, sam_io):
    model = make_vit_sam()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    img, box = sam_io.image(64), sam_io.prompts(64)["box"]
    float_out = sam_io.predict(model, img, box)
    attach(model, "minmax", 4, 4)
    calibrate(model, sam_io)
    with quantizing(model):
        quant_out = sam_io.predict(model, img, box)
    assert not torch.equal(quant_out["low_res_logits"], float_out["low_res_logits"])
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    sam_io.assert_identical(sam_io.predict(model, img, box), float_out)  # modes restored to OFF


def test_quantizing_one_site_changes_exactly_that_tensor(make_vit_sam, sam_io):
    model = make_vit_sam()
    attach(model, "minmax", 3, 3)
    calibrate(model, sam_io)
    site = sites(model)["image_encoder.blocks.1.attn.qkv.weight"]
    seen = []
    site.register_forward_hook(lambda s, args, out: seen.append((args[0], out)))
    with quantizing(model, ["image_encoder.blocks.1.attn.qkv.weight"]):
        sam_io.predict(model, sam_io.image(64), sam_io.prompts(64)["box"])
    (weight, quantized), = seen
    assert weight is model.image_encoder.blocks[1].attn.qkv.weight
    weight = weight.detach()
    scale = weight.abs().amax(dim=1) / 3.5  # symmetric 3-bit per output channel
    zero = torch.zeros(scale.shape, dtype=torch.int32)
    assert torch.equal(quantized, torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -4, 3))


def test_mode_managers_nest_and_restore_on_exit_and_on_errors(make_vit_sam):
    model = make_vit_sam()
    attach(model, "minmax", 8, 8)
    names = list(attached_quantizers(model))
    qkv = [n for n in names if ".qkv." in n]
    with observing(model, ["*.qkv.*"]) as selected:
        assert list(selected) == qkv
        current = modes(model)
        assert {current[n] for n in qkv} == {Mode.OBSERVE}
        assert {m for n, m in current.items() if n not in qkv} == {Mode.OFF}
        with quantizing(model):
            assert set(modes(model).values()) == {Mode.QUANTIZE}
            with disabled(model):
                assert set(modes(model).values()) == {Mode.OFF}
            assert set(modes(model).values()) == {Mode.QUANTIZE}
        assert modes(model) == current
    assert set(modes(model).values()) == {Mode.OFF}
    with pytest.raises(KeyError):
        with quantizing(model, qkv):
            raise KeyError("boom")
    assert set(modes(model).values()) == {Mode.OFF}


def test_selection_pattern_matching_nothing_is_an_error(make_vit_sam):
    model = make_vit_sam()
    attach(model, "minmax", 8, 8)
    with pytest.raises(RecipeError, match="no attached quantizer matches.*'image_encoder.blocks.9.*'"):
        with observing(model, ["image_encoder.blocks.9.*"]):
            pass
    assert set(modes(model).values()) == {Mode.OFF}


def test_quantizing_before_calibration_raises(make_vit_sam, sam_io):
    model = make_vit_sam()
    attach(model, "minmax", 8, 8)
    with pytest.raises(QuantizationError, match="never calibrated"):
        with quantizing(model):
            sam_io.predict(model, sam_io.image(64), sam_io.prompts(64)["box"])
    assert set(modes(model).values()) == {Mode.OFF}


def test_probs_quantizer_receives_v_as_context(make_vit_sam, sam_io):
    model = make_vit_sam()
    attach(model, "minmax", 8, 8)
    probs = attached_quantizers(model)["image_encoder.blocks.0.attn.probs"]
    value_site = sites(model)["image_encoder.blocks.0.attn.value"]
    values, contexts = [], []
    value_site.register_forward_hook(lambda s, args, out: values.append(out))
    probs.register_forward_pre_hook(lambda q, args: contexts.append(args[1:]))
    sam_io.predict(model, sam_io.image(64), sam_io.prompts(64)["box"])
    assert len(contexts) == 1 and len(contexts[0]) == 1 and contexts[0][0] is values[0]


def test_dropping_is_scoped_and_quantizing_refuses_a_quantizer_left_dropping(make_vit_sam, sam_io):
    model = make_vit_sam()
    attach(model, "minmax", 4, 4)
    calibrate(model, sam_io)
    img, box = sam_io.image(64), sam_io.prompts(64)["box"]
    with quantizing(model):
        exact = sam_io.predict(model, img, box)
    inputs = [n for n in attached_quantizers(model) if n.endswith(".input")]
    with pytest.raises(KeyError), dropping(model, 0.5, ["*.input"], seed=1) as selected:
        assert sorted(selected) == sorted(inputs) and {q.drop_prob for q in selected.values()} == {0.5}
        with pytest.raises(RecipeError, match="still drop elements"):
            quantizing(model)
        with quantizing(model, allow_drop=True):
            mixed = sam_io.predict(model, img, box)
        raise KeyError("the block ends with an error")
    assert not torch.equal(mixed["low_res_logits"], exact["low_res_logits"])
    assert sum(q.dropped_elements for q in attached_quantizers(model).values()) > 0
    assert {q.drop_prob for q in attached_quantizers(model).values()} == {0.0}  # reset, also on errors
    with quantizing(model):
        sam_io.assert_identical(sam_io.predict(model, img, box), exact)
    with pytest.raises(RecipeError, match="drop probability"):
        with dropping(model, 1.5):
            pass


def test_probs_sites_quantize_their_attention_map_in_place_unless_watched(make_vit_sam, sam_io):
    model = make_vit_sam()
    attach(model, "minmax", 4, 4)
    calibrate(model, sam_io)
    img, box = sam_io.image(64), sam_io.prompts(64)["box"]
    quantizer = attached_quantizers(model)["image_encoder.blocks.1.attn.probs"]
    calls = []
    original = type(quantizer).fake_quantize_

    def watched(self, x):
        calls.append(x.shape)
        return original(self, x)

    with quantizing(model):
        plain = sam_io.predict(model, img, box)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(type(quantizer), "fake_quantize_", watched)
            sam_io.assert_identical(sam_io.predict(model, img, box), plain)  # handed over: same values
        assert calls  # the probs sites handed their maps over
        seen = []
        site = sites(model)["image_encoder.blocks.1.attn.probs"]
        handle = site.register_forward_hook(lambda s, args, out: seen.append((args[0].clone(), args[0], out)))
        try:
            sam_io.assert_identical(sam_io.predict(model, img, box), plain)
        finally:
            handle.remove()
    (before, given, out), = seen
    assert torch.equal(given, before) and not torch.equal(out, given)  # a watched site leaves its input alone


def test_weights_are_fake_quantized_once_across_forwards(make_vit_sam, sam_io):
    model = make_vit_sam()
    attach(model, "minmax", 4, 4)
    calibrate(model, sam_io)
    img, box = sam_io.image(64), sam_io.prompts(64)["box"]
    weight_quantizers = {n: q for n, q in attached_quantizers(model).items() if n.endswith(".weight")}
    counts = dict.fromkeys(weight_quantizers, 0)
    for name, quantizer in weight_quantizers.items():
        quantizer.fake_quantize = lambda x, q=quantizer, n=name: counts.__setitem__(n, counts[n] + 1) or \
            type(q).fake_quantize(q, x)
    with quantizing(model):
        first = sam_io.predict(model, img, box)
        sam_io.assert_identical(sam_io.predict(model, img, box), first)
        reached = {n for n, c in counts.items() if c}
        assert reached and all(counts[n] == 1 for n in reached)
        with torch.no_grad():
            model.image_encoder.blocks[0].attn.qkv.weight.mul_(0.5)  # a changed weight is quantized again
        changed = sam_io.predict(model, img, box)
    assert counts["image_encoder.blocks.0.attn.qkv.weight"] == 2
    assert not torch.equal(changed["low_res_logits"], first["low_res_logits"])
