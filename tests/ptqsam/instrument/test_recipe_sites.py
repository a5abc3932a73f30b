"""A recipe rule that selects no site of the model is an error when the recipe is attached, before
any calibration work; keep_float and transform patterns that match nothing are warned about."""

from __future__ import annotations

import logging

import pytest

from ptqsam.calibration import calibrate
from ptqsam.errors import RecipeError
from ptqsam.instrument import Recipe, attach, attached_quantizers, shipped_recipes
from ptqsam.instrument.instrument import site_names, sites
from ptqsam.models.zoo import BUILDERS, model_skeleton
from ptqsam.preflight import check_recipes

WEIGHTS = {"include": ["*.weight"], "spec": {"bits": "W"}}


def _recipe(name: str, **fields) -> Recipe:
    return Recipe.from_dict({"name": name, "rules": [WEIGHTS], **fields})


def test_a_rule_selecting_no_site_is_an_error_naming_it(make_vit_sam):
    recipe = _recipe("typo", rules=[WEIGHTS, {"include": ["*.inptu", "*.matmul_z"], "spec": {"bits": "A"}},
                                    {"include": ["*.input"], "exclude": ["*"], "spec": {"bits": "A"}}])
    model = make_vit_sam()
    message = r"rules\[1\] \(include \['\*.inptu', '\*.matmul_z'\]\); rules\[2\] \(include \['\*.input'\], exclude \['\*'\]\)"
    with pytest.raises(RecipeError, match=message):
        attach(model, recipe, 8, 8)
    assert not attached_quantizers(model)
    with pytest.raises(RecipeError, match=r"rules\[1\]"):
        calibrate(model, recipe, 8, 8, samples=[], progress=False)  # no sample needed: it fails first


@pytest.mark.parametrize("recipe", shipped_recipes())
def test_model_generic_patterns_and_user_exclusions_are_not_errors(recipe, make_vit_sam, make_tiny_vit_sam):
    for make in (make_vit_sam, make_tiny_vit_sam):  # ptq4vit's twin-GELU rule names lin2 (SAM) and fc2 (TinyViT)
        model = make()
        assert attach(model, recipe, 8, 8)
        # every site of that rule is in the encoder: excluded by the user, the rule stays valid
        quantizers = attach(model, recipe, 8, 8, exclude=["image_encoder.*"])
        assert quantizers and not any(name.startswith("image_encoder.") for name in quantizers)


def test_unmatched_keep_float_and_transform_patterns_are_warned_about_once(make_vit_sam, caplog):
    recipe = _recipe("warned", keep_float=["mask_decoder.nothing_here.*", "prompt_encoder.*"],
                     transforms=[{"kind": "bimodal_fold", "sites": ["nowhere.attn"]}])
    with caplog.at_level(logging.WARNING, logger="ptqsam"):
        attach(make_vit_sam(), recipe, 8, 8)
        attach(make_vit_sam(), recipe, 8, 8)
    lines = caplog.text.splitlines()
    assert sum("keep_float pattern 'mask_decoder.nothing_here.*' matches nothing" in line for line in lines) == 1
    assert sum("bimodal_fold pattern 'nowhere.attn' matches nothing" in line for line in lines) == 1
    assert "prompt_encoder" not in caplog.text


@pytest.mark.parametrize("model_type", list(BUILDERS))
def test_site_names_of_a_skeleton_are_those_instrument_gives(model_type, random_testbed):
    skeleton = model_skeleton(model_type)
    assert next(skeleton.parameters()).device.type == "meta"
    if model_type == "testbed":
        model = random_testbed()
        before = site_names(model)
        attach(model, "minmax", 8, 8)
        assert sorted(before) == sorted(sites(model)) == sorted(site_names(model)) == sorted(site_names(skeleton))
    check_recipes(shipped_recipes(), [model_type])  # every shipped recipe fits every model
