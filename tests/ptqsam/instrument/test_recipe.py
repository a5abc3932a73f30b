"""Recipes: data round trips, validation, site selection and the shipped recipes."""

from __future__ import annotations

import copy

import pytest
import yaml
from segment_anything import sam_model_registry

from ptqsam.errors import RecipeError
from ptqsam.instrument import Recipe, Rule, Transform, instrument, load_recipe, parse_bits, shipped_recipes, sites
from ptqsam.models.zoo import build_tiny_vit_sam
from quantizers import QuantSpec

SHIPPED = ["adaround", "ahcptq", "brecq", "gptq", "log-sqrt2", "minmax", "ptq4sam", "ptq4sam-l", "ptq4sam-l-reference-bug",
           "ptq4sam-wide-tau", "ptq4vit", "qdrop", "repq-vit", "saq-sam"]


def toy_recipe(**changes) -> dict:
    data = {
        "name": "toy",
        "description": "for tests",
        "keep_float": ["enc.patch.*"],
        "transforms": [{"kind": "bimodal_fold", "sites": ["dec.*.t2i"], "options": {"grid_points": 64}}],
        "rules": [
            {"include": ["*.probs"], "exclude": [],
             "spec": {"bits": 8, "quantizer": "log", "quantizer_options": {"taus": [2]}}},
            {"include": ["*.weight"], "exclude": ["*.head.*"], "spec": {"bits": "W", "symmetric": True}},
            {"include": ["*.weight", "*.input"], "spec": {"bits": "A"}},
        ],
    }
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def sam_b_sites() -> list[str]:
    return list(sites(instrument(sam_model_registry["vit_b"]())))


@pytest.fixture(scope="module")
def tinysam_sites() -> list[str]:
    return list(sites(instrument(build_tiny_vit_sam())))


def test_shipped_recipes_are_listed_and_named_after_their_files():
    assert shipped_recipes() == SHIPPED
    for name in SHIPPED:
        assert load_recipe(name).name == name


def test_ptq4sam_stays_faithful_and_its_wide_tau_variant_differs_only_in_the_taus():
    faithful, wide = load_recipe("ptq4sam").to_dict(), load_recipe("ptq4sam-wide-tau").to_dict()
    assert faithful["rules"][0]["spec"]["quantizer_options"]["taus"] == [1, 2, 4]  # PTQ4SAM's AGQ set
    assert wide["rules"][0]["spec"]["quantizer_options"]["taus"] == [1, 2, 4, 8, 16, 32]
    wide["rules"][0]["spec"]["quantizer_options"]["taus"] = [1, 2, 4]
    assert {k: v for k, v in wide.items() if k not in ("name", "description")} == {
        k: v for k, v in faithful.items() if k not in ("name", "description")}


@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_round_trips_through_dict_and_yaml(name):
    recipe = load_recipe(name)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe
    assert yaml.safe_load(recipe.to_yaml()) == recipe.to_dict()


def test_load_recipe_from_a_path_and_errors(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(toy_recipe()))
    assert load_recipe(path) == Recipe.from_dict(toy_recipe())
    assert load_recipe(str(path)).name == "toy"
    with pytest.raises(RecipeError, match=r"unknown recipe 'nope'.*minmax.*ptq4sam"):
        load_recipe("nope")
    path.write_text("name: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"colour": "red"}, r"unknown recipe key\(s\) \['colour'\]"),
        ({"rules": [{"include": ["*"], "spec": {"bits": 8}, "when": 1}]}, r"unknown rule key\(s\) \['when'\]"),
        ({"rules": [{"include": ["*"], "spec": {"bits": 8, "granule": 1}}]}, "granule"),
        ({"rules": [{"include": ["*"], "spec": {"bits": "X"}}]}, "bits"),
        ({"rules": [{"include": ["*"], "spec": {"bits": 8, "observer": "magic"}}]}, "magic"),
        ({"rules": [{"include": "*.weight", "spec": {"bits": 8}}]}, "list of patterns"),
        ({"rules": [{"spec": {"bits": 8}}]}, r"needs \['include'\]"),
        ({"keep_float": [3]}, "non-empty strings"),
        ({"transforms": [{"kind": "rotate", "sites": ["*"]}]}, "unknown transform kind 'rotate'"),
        ({"transforms": [{"kind": "bimodal_fold", "sites": ["*"], "extra": 1}]},
         r"unknown transform key\(s\) \['extra'\]"),
        ({"transforms": [{"kind": "bimodal_fold", "sites": ["*"], "options": {"bins": 3}}]}, "bins"),
        ({"transforms": [{"kind": "bimodal_fold", "sites": ["*"], "options": {"grid_points": 1}}]}, "grid_points"),
        ({"name": ""}, "non-empty name"),
    ],
)
def test_bad_recipes_are_rejected_naming_the_problem(change, message):
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict(toy_recipe(**change))


def test_recipe_without_name_or_not_a_mapping_is_rejected():
    data = toy_recipe()
    del data["name"]
    with pytest.raises(RecipeError, match=r"needs \['name'\]"):
        Recipe.from_dict(data)
    with pytest.raises(RecipeError, match="mapping"):
        Recipe.from_yaml("- just\n- a list\n")


def test_selection_keep_float_first_then_first_matching_rule():
    recipe = Recipe.from_dict(toy_recipe())
    names = ["enc.patch.proj.weight", "enc.b.qkv.weight", "enc.head.fc.weight", "enc.b.qkv.input",
             "enc.b.attn.probs", "enc.b.attn.logits"]
    specs = recipe.specs_for(names, w_bits=4, a_bits=6)
    assert list(specs) == ["enc.b.qkv.weight", "enc.head.fc.weight", "enc.b.qkv.input", "enc.b.attn.probs"]
    assert specs["enc.b.qkv.weight"] == QuantSpec(bits=4, symmetric=True)
    assert specs["enc.head.fc.weight"] == QuantSpec(bits=6)  # excluded by rule 2, caught by rule 3
    assert specs["enc.b.qkv.input"] == QuantSpec(bits=6)
    assert specs["enc.b.attn.probs"].bits == 8 and specs["enc.b.attn.probs"].quantizer == "log"
    assert recipe.transforms[0].matches("dec.layers.0.t2i") and not recipe.transforms[0].matches("dec.t2i.k")
    assert recipe.transforms[0].config().grid_points == 64


@pytest.mark.parametrize("bits", [(1, 8), (8, 17), (True, 8)])
def test_specs_for_refuses_impossible_bits(bits):
    with pytest.raises(RecipeError, match="bits"):
        Recipe.from_dict(toy_recipe()).specs_for(["a.weight"], *bits)


@pytest.mark.parametrize("text,bits", [("W4A8", (4, 8)), ("w8a8", (8, 8)), (" W16a2 ", (16, 2))])
def test_parse_bits(text, bits):
    assert parse_bits(text) == bits


@pytest.mark.parametrize("text", ["W1A8", "W8A17", "W8", "A8W8", "W8A8x", "W-4A8", "", "WxAy", 8])
def test_parse_bits_errors(text):
    with pytest.raises(RecipeError, match="W8A8|bits"):
        parse_bits(text)


def test_rule_objects_validate_on_construction():
    with pytest.raises(RecipeError, match="observer"):
        Rule(include=("*",), spec={"bits": 8, "observer": "nope"})
    with pytest.raises(RecipeError, match="unknown transform kind"):
        Transform(kind="nope", sites=("*",))


def test_minmax_quantizes_every_weight_and_operand_but_no_output(sam_b_sites):
    specs = load_recipe("minmax").specs_for(sam_b_sites, 8, 6)
    outputs = [n for n in sam_b_sites if n.endswith((".logits", ".context", ".matmul_output"))]
    assert sorted(set(sam_b_sites) - set(specs)) == sorted(outputs)
    weight = specs["mask_decoder.output_upscaling.0.weight"]  # ConvTranspose2d: site puts out-channels first
    assert (weight.bits, weight.symmetric, weight.granularity.kind, weight.granularity.axis) == (8, True, "channel", 0)
    probs = specs["image_encoder.blocks.0.attn.probs"]
    assert (probs.bits, probs.symmetric, probs.granularity.kind, probs.observer) == (6, False, "tensor", "minmax")


def test_ptq4sam_keeps_the_papers_float_parts(sam_b_sites):
    recipe = load_recipe("ptq4sam")
    specs = recipe.specs_for(sam_b_sites, 6, 6)
    float_prefixes = ("image_encoder.patch_embed.", "mask_decoder.output_upscaling.",
                      "mask_decoder.output_hypernetworks_mlps.", "mask_decoder.iou_prediction_head.",
                      "prompt_encoder.", "mask_decoder.matmul_")
    outputs = (".logits", ".context")
    expected = [n for n in sam_b_sites if not n.startswith(float_prefixes) and not n.endswith(outputs)]
    assert list(specs) == expected
    assert "image_encoder.neck.0.input" in specs and "image_encoder.neck.2.weight" in specs
    probs = {s.quantizer for n, s in specs.items() if n.endswith(".probs")}
    assert probs == {"log"}
    assert specs["image_encoder.blocks.3.attn.probs"].quantizer_options == {"taus": [1, 2, 4], "p": 2.4}
    weight = specs["mask_decoder.transformer.layers.1.mlp.lin1.weight"]
    assert (weight.symmetric, weight.granularity.kind, weight.observer, weight.observer_options) == (
        False, "channel", "mse", {"p": 2.4})
    assert specs["image_encoder.blocks.0.attn.key"].observer == "avg_minmax"
    (fold,) = recipe.transforms
    key_weights = [n for n in sam_b_sites if n.endswith(".k_proj.weight")]
    modules = [n for n in key_weights if fold.matches(n.removesuffix(".k_proj.weight"))]
    assert modules == [
        "mask_decoder.transformer.layers.0.cross_attn_token_to_image.k_proj.weight",
        "mask_decoder.transformer.layers.1.cross_attn_token_to_image.k_proj.weight",
        "mask_decoder.transformer.final_attn_token_to_image.k_proj.weight",
    ]


def test_ptq4vit_twin_gelu_only_after_gelu(sam_b_sites, tinysam_sites):
    recipe = load_recipe("ptq4vit")
    for names, after_gelu in (
        (sam_b_sites, [f"image_encoder.blocks.{i}.mlp.lin2.input" for i in range(12)]),
        (tinysam_sites, [f"image_encoder.layers.{s}.blocks.{b}.mlp.fc2.input"
                         for s, depth in ((1, 2), (2, 6), (3, 2)) for b in range(depth)]),
    ):
        specs = recipe.specs_for(names, 6, 6)
        assert [n for n, s in specs.items() if s.quantizer == "twin_gelu"] == after_gelu
        assert {s.quantizer for n, s in specs.items() if n.endswith(".probs")} == {"twin_softmax"}
        assert {s.search for s in specs.values()} == {"hessian"}
        operand = specs[next(n for n in names if n.endswith(".key"))]
        assert (operand.symmetric, operand.granularity.kind) == (True, "tensor")
    # the decoder MLP's lin2 follows a ReLU: plain uniform
    assert recipe.spec_for("mask_decoder.transformer.layers.0.mlp.lin2.input", 6, 6).quantizer == "uniform"


def test_log_sqrt2_uses_tau_2_on_probs_only(sam_b_sites):
    specs = load_recipe("log-sqrt2").specs_for(sam_b_sites, 8, 8)
    logs = {n for n, s in specs.items() if s.quantizer == "log"}
    assert logs == {n for n in sam_b_sites if n.endswith(".probs")}
    assert {specs[n].quantizer_options["taus"][0] for n in logs} == {2}
    minmax = load_recipe("minmax").specs_for(sam_b_sites, 8, 8)
    assert {n: s for n, s in specs.items() if n not in logs} == {n: s for n, s in minmax.items() if n not in logs}


def test_recipe_is_immutable():
    recipe = load_recipe("minmax")
    with pytest.raises(AttributeError):
        recipe.name = "other"  # type: ignore[misc]
    assert copy.deepcopy(recipe) == recipe


def test_ahcptq_puts_hluq_after_the_mlp_activations_and_cag_on_the_linear_inputs_it_names(sam_b_sites):
    recipe = load_recipe("ahcptq")
    specs = recipe.specs_for(sam_b_sites, 4, 4)
    hluq = sorted(n for n, s in specs.items() if s.quantizer == "hluq")
    assert hluq == sorted([f"image_encoder.blocks.{i}.mlp.lin2.input" for i in range(12)]
                          + [f"mask_decoder.transformer.layers.{i}.mlp.lin2.input" for i in range(2)])
    grouped = {n for n, s in specs.items() if s.quantizer == "channel_groups"}
    decoder_attentions = [n.removesuffix(".q_proj.input") for n in sam_b_sites if n.endswith(".q_proj.input")]
    assert len(decoder_attentions) == 7
    assert grouped == ({f"image_encoder.blocks.{i}.{layer}.input" for i in range(12) for layer in ("attn.qkv", "mlp.lin1")}
                       | {f"{a}.{p}_proj.input" for a in decoder_attentions for p in "qkv"}
                       | {f"mask_decoder.transformer.layers.{i}.mlp.lin1.input" for i in range(2)})
    assert {specs[n].granularity.axis for n in grouped} == {-1}
    others = load_recipe("ptq4sam").specs_for(sam_b_sites, 4, 4)
    assert {n: s for n, s in specs.items() if n not in grouped and n not in hluq} == {
        n: s for n, s in others.items() if n not in grouped and n not in hluq}
    assert recipe.reconstruction_config() == load_recipe("ptq4sam-l").reconstruction_config()


def test_ahcptq_names_tiny_vit_sites_too(tinysam_sites):
    specs = load_recipe("ahcptq").specs_for(tinysam_sites, 4, 4)
    blocks = [f"image_encoder.layers.{s}.blocks.{b}" for s, depth in ((1, 2), (2, 6), (3, 2)) for b in range(depth)]
    encoder = {n: s.quantizer for n, s in specs.items() if n.startswith("image_encoder.")}
    assert sorted(n for n, q in encoder.items() if q == "hluq") == sorted(f"{b}.mlp.fc2.input" for b in blocks)
    assert sorted(n for n, q in encoder.items() if q == "channel_groups") == sorted(
        f"{b}.{layer}.input" for b in blocks for layer in ("attn.qkv", "mlp.fc1"))


def test_saq_sam_clips_decoder_q_and_k_and_reconstructs_stages_with_the_response(sam_b_sites):
    recipe = load_recipe("saq-sam")
    specs = recipe.specs_for(sam_b_sites, 4, 4)
    clipped = {n for n, s in specs.items() if s.search == "pcc"}
    assert len(clipped) == 28 and all(n.startswith("mask_decoder.transformer.") for n in clipped)
    assert {n.rsplit(".", 1)[1] if not n.endswith(".input") else n.rsplit(".", 2)[1] for n in clipped} == {
        "query", "key", "q_proj", "k_proj"}
    assert specs["image_encoder.blocks.0.attn.qkv.input"].observer == "mse"
    assert {s.quantizer for n, s in specs.items() if n.endswith(".probs")} == {"log"}
    config = recipe.reconstruction_config()
    assert (config.unit, config.iterations, config.activation_lr, config.weight_lr, config.response_weight) == (
        "stage", 2000, 2e-3, 1e-3, 1.0)


def test_repq_vit_folds_every_encoder_block_and_gptq_chooses_every_weight(sam_b_sites):
    recipe = load_recipe("repq-vit")
    (fold,) = recipe.transforms
    assert fold.kind == "repq_fold" and fold.matches("image_encoder.blocks.11")
    assert recipe.specs_for(sam_b_sites, 4, 4) == load_recipe("log-sqrt2").specs_for(sam_b_sites, 4, 4)
    specs, minmax = load_recipe("gptq").specs_for(sam_b_sites, 4, 4), load_recipe("minmax").specs_for(sam_b_sites, 4, 4)
    assert {s.search for n, s in specs.items() if n.endswith(".weight")} == {"gptq"}
    assert {n: s for n, s in specs.items() if not n.endswith(".weight")} == {
        n: s for n, s in minmax.items() if not n.endswith(".weight")}


def test_prepend_rules_go_before_the_extended_recipes_rules(tmp_path):
    (tmp_path / "child.yaml").write_text(
        "name: child\nextends: minmax\nprepend_rules:\n  - include: ['*.qkv.weight']\n    spec: {bits: 8}\n")
    child, base = load_recipe(tmp_path / "child.yaml"), load_recipe("minmax")
    assert child.rules[1:] == base.rules and child.rules[0].include == ("*.qkv.weight",)
    assert child.spec_for("image_encoder.blocks.0.attn.qkv.weight", 4, 4).bits == 8
    (tmp_path / "alone.yaml").write_text("name: alone\nprepend_rules: []\n")
    with pytest.raises(RecipeError, match="needs extends"):
        load_recipe(tmp_path / "alone.yaml")
    (tmp_path / "bad.yaml").write_text("name: bad\nextends: minmax\nprepend_rules: {a: 1}\n")
    with pytest.raises(RecipeError, match="must be lists"):
        load_recipe(tmp_path / "bad.yaml")
