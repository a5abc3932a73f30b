"""Mixed recipes: written, read back by the recipe system, exactly the intended bits per site; a model
assembled from uniform calibrations equals calibrating the mixed recipe."""

from __future__ import annotations

import random

import pytest
import torch

from ptqsam.calibration import calibrate, calibration_samples
from ptqsam.errors import AllocationError, RecipeError
from ptqsam.inference import SamRunner
from ptqsam.instrument import attach, attached_quantizers, load_recipe, quantizing, sites
from ptqsam.mixed_precision.recipes import assemble, base_rule_index, mixed_recipe, write_recipe


@pytest.fixture(scope="module")
def site_names():
    from ptqsam.models import build_model

    model = build_model("testbed")
    attach(model, "ptq4sam", 8, 8)
    return list(sites(model)), list(attached_quantizers(model))


def test_written_recipe_round_trips_with_exactly_the_intended_bits(site_names, tmp_path):
    every_site, quantized = site_names
    rng = random.Random(0)
    intended = {name: rng.choice((3, 4, 6, 8)) for name in quantized if rng.random() < 0.9}  # the rest: float
    base = load_recipe("ptq4sam")
    recipe = mixed_recipe(base, intended, "ptq4sam-mixed-test", "a test")
    path = write_recipe(tmp_path / "mixed.yaml", recipe, ["budget: weight_bits <= 5", "predicted: 4.9"])
    text = path.read_text()
    assert text.startswith("# budget: weight_bits <= 5\n# predicted: 4.9\n")
    loaded = load_recipe(str(path))
    assert loaded == recipe
    for w_bits, a_bits in ((2, 2), (8, 16)):  # the --bits given with it change nothing
        specs = loaded.specs_for(every_site, w_bits, a_bits)
        assert {name: spec.bits for name, spec in specs.items()} == intended
    base_specs = base.specs_for(every_site, 8, 8)
    for name, spec in loaded.specs_for(every_site, 8, 8).items():  # everything but the bits is the base's
        assert spec.to_dict() == {**base_specs[name].to_dict(), "bits": intended[name]}
    assert loaded.transforms == base.transforms and loaded.keep_float == base.keep_float
    assert all(r.spec["bits"] in (3, 4, 6, 8) for r in loaded.rules)


def test_sites_the_base_does_not_quantize_are_refused():
    base = load_recipe("ptq4sam")
    assert base_rule_index(base, "mask_decoder.transformer.layers.0.self_attn.q_proj.weight") == 1
    for site in ("image_encoder.patch_embed.proj.weight", "image_encoder.blocks.0.attn.logits"):
        with pytest.raises(RecipeError, match="does not quantize"):
            mixed_recipe(base, {site: 4}, "bad")


def test_assembled_model_equals_calibrating_the_mixed_recipe(tiny_dataset):
    from ptqsam.models import build_model

    samples = calibration_samples(tiny_dataset, 1, seed=0)
    exclude = ("image_encoder.*",)
    uniform = []
    for bits in (4, 8):
        uniform.append(build_model("testbed"))
        calibrate(uniform[-1], "minmax", bits, bits, samples, exclude, progress=False)
    quantized = list(attached_quantizers(uniform[0]))
    rng = random.Random(1)
    intended = {name: rng.choice((4, 8)) for name in quantized if rng.random() < 0.8}
    assembled = assemble(uniform, intended)
    direct = build_model("testbed")
    calibrate(direct, mixed_recipe(load_recipe("minmax"), intended, "mixed"), 8, 8, samples, exclude, progress=False)
    got, expected = attached_quantizers(assembled), attached_quantizers(direct)
    assert set(got) == set(expected) == set(intended)
    for name, quantizer in expected.items():
        assert quantizer.spec == got[name].spec
        for key, value in quantizer.state_dict().items():
            assert torch.equal(value, got[name].state_dict()[key]), (name, key)
    outputs = []
    for model in (assembled, direct):
        runner = SamRunner(model)
        with quantizing(model), torch.inference_mode():
            p = samples[0].prompts
            outputs.append(runner.decode(runner.embed(samples[0].image), p.boxes, p.points, p.point_labels))
    assert torch.equal(outputs[0].low_res_logits, outputs[1].low_res_logits)
    assert set(attached_quantizers(uniform[0])) == set(quantized)  # the sources are left as they were
    with pytest.raises(AllocationError, match="no model was calibrated at 6 bits"):
        assemble(uniform, {quantized[0]: 6})
    with pytest.raises(AllocationError, match="carry no calibrated quantizer"):
        assemble(uniform, {"image_encoder.blocks.0.attn.qkv.weight": 4})
