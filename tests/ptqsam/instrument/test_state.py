"""Calibrated state: save, load into a fresh model, identical outputs; mismatches refused."""

from __future__ import annotations

import pytest
import torch

from ptqsam.errors import CheckpointError, RecipeError
from ptqsam.instrument import (
    attach,
    attached_quantizers,
    load_recipe,
    load_state,
    observing,
    quantizing,
    save_state,
)
from quantizers import Mode


@pytest.fixture
def calibrated(make_vit_sam, sam_io, tmp_path):
    """A small SAM with minmax W6A6 calibrated on one input, its quantized output and its state."""
    model = make_vit_sam()
    attach(model, "minmax", 6, 6)
    img = sam_io.image(64)
    with observing(model):
        sam_io.predict(model, img, sam_io.prompts(64)["box+mask"])
    for quantizer in attached_quantizers(model).values():
        quantizer.finalize()
    path = tmp_path / "state" / "minmax.pt"
    signs = {"mask_decoder.transformer.final_attn_token_to_image": torch.tensor([1.0, -1.0])}
    save_state(model, path, "minmax", "small", 6, 6, extra={"bimodal_signs": signs})
    with quantizing(model):
        expected = sam_io.predict(model, img, sam_io.prompts(64)["points"])
    return model, path, expected


def test_round_trip_gives_identical_outputs(calibrated, make_vit_sam, sam_io):
    model, path, expected = calibrated
    fresh = make_vit_sam()
    info = load_state(fresh, path, recipe="minmax", model_type="small")
    assert (info.model_type, info.recipe, info.w_bits, info.a_bits) == ("small", load_recipe("minmax"), 6, 6)
    assert torch.equal(info.extra["bimodal_signs"]["mask_decoder.transformer.final_attn_token_to_image"],
                       torch.tensor([1.0, -1.0]))
    assert list(info.quantizers) == list(attached_quantizers(model))
    assert all(q.is_calibrated and q.mode is Mode.OFF for q in info.quantizers.values())
    for name, quantizer in info.quantizers.items():
        original = attached_quantizers(model)[name]
        assert quantizer.spec == original.spec
        for key, value in original.state_dict().items():
            assert torch.equal(quantizer.state_dict()[key], value), (name, key)
    with quantizing(fresh):
        got = sam_io.predict(fresh, sam_io.image(64), sam_io.prompts(64)["points"])
    sam_io.assert_identical(expected, got)
    assert [p.name for p in path.parent.iterdir()] == ["minmax.pt"]  # no temporary file left


def test_saved_modes_are_restored(make_vit_sam, calibrated, tmp_path):
    model, _, _ = calibrated
    path = tmp_path / "quantizing.pt"
    with quantizing(model):
        save_state(model, path, "minmax", "small", 6, 6)
    info = load_state(make_vit_sam(), path)
    assert {q.mode for q in info.quantizers.values()} == {Mode.QUANTIZE}


def test_mismatched_recipe_or_model_type_is_refused(calibrated, make_vit_sam):
    _, path, _ = calibrated
    with pytest.raises(RecipeError, match="recipe 'minmax'.*requested recipe 'log-sqrt2'"):
        load_state(make_vit_sam(), path, recipe="log-sqrt2")
    with pytest.raises(RecipeError, match="model type 'small', not 'vit_b'"):
        load_state(make_vit_sam(), path, model_type="vit_b")


def test_state_for_another_architecture_is_refused(calibrated, make_tiny_vit_sam):
    _, path, _ = calibrated
    with pytest.raises(RecipeError, match="sites the model lacks.*image_encoder.patch_embed.proj"):
        load_state(make_tiny_vit_sam(), path)


def test_save_refuses_quantizers_the_recipe_does_not_describe(calibrated, tmp_path):
    model, _, _ = calibrated
    with pytest.raises(RecipeError, match="not what recipe 'minmax' at W8A8 specifies"):
        save_state(model, tmp_path / "x.pt", "minmax", "small", 8, 8)
    with pytest.raises(RecipeError, match="not what recipe 'log-sqrt2'"):
        save_state(model, tmp_path / "x.pt", "log-sqrt2", "small", 6, 6)
    assert not (tmp_path / "x.pt").exists()


def test_save_without_quantizers_and_unreadable_files_are_errors(make_vit_sam, tmp_path):
    with pytest.raises(RecipeError, match="no attached quantizers"):
        save_state(make_vit_sam(), tmp_path / "x.pt", "minmax", "small", 8, 8)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state(make_vit_sam(), tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_state(make_vit_sam(), tmp_path / "junk.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a ptqsam calibrated-state file"):
        load_state(make_vit_sam(), tmp_path / "other.pt")


@pytest.mark.parametrize("recipe", ["minmax", "ptq4vit", "ptq4sam", "log-sqrt2"])
@pytest.mark.parametrize("builder", ["make_vit_sam", "make_tiny_vit_sam"])
def test_every_shipped_recipe_calibrates_quantizes_and_round_trips(request, builder, recipe, sam_io, tmp_path):
    make = request.getfixturevalue(builder)
    model, img, points = make(), sam_io.image(64), sam_io.prompts(64)["points"]
    float_out = sam_io.predict(model, img, points)
    attach(model, recipe, 4, 4)
    with observing(model):
        sam_io.predict(model, img, sam_io.prompts(64)["box+mask"])
    for quantizer in attached_quantizers(model).values():
        quantizer.finalize()
    with quantizing(model):
        expected = sam_io.predict(model, img, points)
        save_state(model, tmp_path / "state.pt", recipe, builder, 4, 4)
    assert torch.isfinite(expected["low_res_logits"]).all()
    assert not torch.equal(expected["low_res_logits"], float_out["low_res_logits"])
    fresh = make()
    load_state(fresh, tmp_path / "state.pt", recipe=recipe, model_type=builder)
    sam_io.assert_identical(expected, sam_io.predict(fresh, img, points))


def test_other_weights_are_refused_unless_allowed(calibrated, make_vit_sam, caplog):
    _, path, _ = calibrated
    with pytest.raises(CheckpointError, match="calibrated on other weights.*--allow-other-weights"):
        load_state(make_vit_sam(seed=1), path)
    nudged = make_vit_sam()
    with torch.no_grad():
        next(nudged.parameters()).view(-1)[0] += 1e-6  # one weight of millions
    with pytest.raises(CheckpointError, match="other weights"):
        load_state(nudged, path)
    info = load_state(make_vit_sam(seed=1), path, allow_other_weights=True)
    assert info.weights_override and "applied anyway" in caplog.text
    same = load_state(make_vit_sam(), path)
    assert not same.weights_override and same.fingerprint["hash"] and same.fingerprint["settings"]["recipe"]["name"] == "minmax"


def _set(data, keys, value):
    for key in keys[:-1]:
        data = data[key]
    if value is KeyError:
        del data[keys[-1]]
    else:
        data[keys[-1]] = value


SITE = "image_encoder.blocks.0.attn.qkv.weight"


@pytest.mark.parametrize("keys, value, message", [
    (("sites",), KeyError, "'sites' is missing"),
    (("weights",), KeyError, "'weights' is missing"),
    (("fingerprint",), "abc", "'fingerprint' is missing or not a dict"),
    (("w_bits",), True, "'w_bits'"),
    (("version",), 1, "version 1"),
    (("sites", SITE), [1, 2], f"site {SITE!r}"),
    (("sites", SITE, "mode"), "bogus", f"site {SITE!r}"),
    (("sites", SITE, "state", "scale"), 3.0, f"site {SITE!r}"),
    (("sites", SITE, "state", "scale"), torch.full((4,), float("nan")), "NaN or Inf"),
    # edited files: the numbers would be reported under settings that did not make them
    (("w_bits",), 8, "its header disagrees with its fingerprint on bits"),
    (("recipe", "name"), "ptq4sam", "its header disagrees with its fingerprint on recipe"),
    (("fingerprint", "settings", "bits"), [8, 8], "fingerprint was altered"),
    (("sites", SITE, "spec", "bits"), 8, "hold specs that recipe 'minmax' at W6A6 does not give"),
])
def test_incomplete_or_corrupt_state_files_are_refused(calibrated, make_vit_sam, tmp_path, keys, value, message):
    _, path, _ = calibrated
    data = torch.load(path, weights_only=True)
    _set(data, keys, value)
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message):
        load_state(make_vit_sam(), tmp_path / "bad.pt")


def test_truncated_state_file_is_refused(calibrated, make_vit_sam, tmp_path):
    _, path, _ = calibrated
    content = path.read_bytes()
    for size in (0, 64, len(content) // 2):
        (tmp_path / "cut.pt").write_bytes(content[:size])
        with pytest.raises(CheckpointError, match="cannot read"):
            load_state(make_vit_sam(), tmp_path / "cut.pt")
