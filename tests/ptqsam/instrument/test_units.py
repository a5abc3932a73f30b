"""Products declared by the instrumented classes: every unit is what the forward computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptqsam.instrument import forward_hooks, instrument, model_units, sites


@pytest.fixture(params=["vit", "tiny_vit"])
def model(request, make_vit_sam, make_tiny_vit_sam):
    return instrument((make_vit_sam if request.param == "vit" else make_tiny_vit_sam)())


def test_units_name_existing_sites_and_cover_every_layer_and_attention(model):
    units = model_units(model)
    all_sites = sites(model)
    modules = dict(model.named_modules())
    for unit in units:
        assert unit.a in all_sites and unit.b in all_sites and unit.module in modules
        assert unit.output is None or all_sites[unit.output].kind == "output"
        assert unit.b_transposed == unit.name.endswith("query@key")
    layers = [n for n, m in modules.items() if hasattr(m, "weight_site")]
    attentions = [n for n, m in modules.items() if hasattr(m, "probs_site")]
    assert {u.module for u in units if u.output is None} == set(layers)
    assert sorted(u.name for u in units if u.output is not None) == sorted(
        [f"{a}.query@key" for a in attentions] + [f"{a}.probs@value" for a in attentions]
        + ["mask_decoder.matmul_a@matmul_b"])


def test_each_declared_product_is_what_the_forward_computes(model, sam_io):
    units = model_units(model)
    all_sites, modules = sites(model), dict(model.named_modules())
    seen: dict[str, list] = {}

    def keep(key):
        return lambda module, args, out: seen.setdefault(key, []).append((args, out))

    hooks = []
    for unit in units:
        if unit.output is None:
            hooks.append((modules[unit.module], keep(unit.name)))
        else:
            hooks += [(all_sites[name], keep(name)) for name in (unit.a, unit.b, unit.output)]
    with forward_hooks(hooks):
        sam_io.predict(model, sam_io.image(64), sam_io.prompts(64)["box+mask"])
    checked = set()
    for unit in units:
        if unit.output is None:
            module = modules[unit.module]
            for args, out in seen.get(unit.name, []):
                if unit.kind == "linear":
                    expected = F.linear(args[0], module.weight, module.bias)
                elif unit.kind == "conv2d":
                    expected = module._conv_forward(args[0], module.weight, module.bias)
                else:
                    expected = module(args[0])  # conv_transpose2d: its own forward (output padding)
                torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
                checked.add(unit.name)
            continue
        for (_, a), (_, b), (_, out) in zip(seen[unit.a], seen[unit.b], seen[unit.output]):
            product = a @ (b.transpose(-2, -1) if unit.b_transposed else b)
            torch.testing.assert_close(out, product.reshape(out.shape), rtol=1e-5, atol=1e-5)
            checked.add(unit.name)
    assert checked == {u.name for u in units}  # a box with a mask input reaches every unit


def test_forward_hooks_are_removed_on_errors(make_vit_sam):
    model = instrument(make_vit_sam())
    site = next(iter(sites(model).values()))
    with pytest.raises(KeyError):
        with forward_hooks([(site, lambda m, a, o: None), (model, lambda m, a, o: None)]):
            assert len(site._forward_hooks) == 1 and len(model._forward_hooks) == 1
            raise KeyError("boom")
    assert not site._forward_hooks and not model._forward_hooks
