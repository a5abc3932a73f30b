"""Groups of sites at each granularity, read from the model's declared products and blocks."""

from __future__ import annotations

import pytest

from ptqsam.analysis.groups import Group, model_groups
from ptqsam.errors import AnalysisError
from ptqsam.instrument import attach, model_units, sites
from ptqsam.models.blocks import block_of, model_blocks


@pytest.fixture(scope="module")
def model():
    from ptqsam.models import build_model

    model = build_model("testbed")
    attach(model, "ptq4sam", 4, 4)  # keeps the patch embedding, IoU head, ... float
    return model


def _attached(model) -> list[str]:
    return [name for name, site in sites(model).items() if "quantizer" in site._modules]


def _every_site_once(groups: list[Group], expected: list[str]) -> None:
    listed = [site for group in groups for site in group.sites]
    assert sorted(listed) == sorted(expected) and len(set(listed)) == len(listed)


def test_unit_groups_are_the_products_with_their_attached_operands(model):
    groups = model_groups(model, "unit")
    _every_site_once(groups, _attached(model))
    units = {unit.name: unit for unit in model_units(model)}
    kinds = {name: site.kind for name, site in sites(model).items()}
    for group in groups:
        assert set(group.sites) <= {units[group.name].a, units[group.name].b}
        assert all(kinds[s] == "weight" for s in group.weights)
        assert all(kinds[s] != "weight" for s in group.activations)
    by_name = {g.name: g for g in groups}
    linear = by_name["image_encoder.blocks.0.attn.qkv"]
    assert linear.weights == ("image_encoder.blocks.0.attn.qkv.weight",)
    assert linear.activations == ("image_encoder.blocks.0.attn.qkv.input",)
    assert linear.block == "image_encoder.blocks.0"
    attention = by_name["mask_decoder.transformer.layers.1.self_attn.probs@value"]
    assert attention.weights == () and len(attention.activations) == 2
    assert "image_encoder.patch_embed.proj" not in by_name  # kept float by ptq4sam: no group


def test_block_groups_follow_the_declared_blocks(model):
    groups = model_groups(model, "block")
    _every_site_once(groups, _attached(model))
    blocks = model_blocks(model)
    block_names = {b.name for b in blocks}
    units = {u.name for u in model_units(model)}
    for group in groups:
        if group.name in block_names:
            assert group.block == group.name and all(block_of(blocks, s).name == group.name for s in group.sites)
        else:  # outside every block: one group per product
            assert group.name in units and group.block is None
    assert {g.name for g in groups} >= {f"image_encoder.blocks.{i}" for i in range(6)}


def test_site_groups_and_roles(model):
    groups = model_groups(model, "site")
    assert [g.name for g in groups] == _attached(model)
    group = model_groups(model, "unit", ["mask_decoder.transformer.layers.0.mlp.lin1.weight",
                                         "mask_decoder.transformer.layers.0.mlp.lin1.input"])[0]
    assert group.role_sites("weight") == ("mask_decoder.transformer.layers.0.mlp.lin1.weight",)
    assert group.role_sites("activation") == ("mask_decoder.transformer.layers.0.mlp.lin1.input",)
    assert set(group.role_sites("all")) == set(group.sites)
    assert Group.from_dict(group.to_dict()) == group
    with pytest.raises(AnalysisError, match="role"):
        group.role_sites("bias")


def test_bad_arguments_raise(model):
    with pytest.raises(AnalysisError, match="granularity"):
        model_groups(model, "layer")
    with pytest.raises(AnalysisError, match="no site named"):
        model_groups(model, "unit", ["image_encoder.nope.weight"])
