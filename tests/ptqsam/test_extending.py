"""Adding a quantizer kind is one module with a decorator: a toy kind, outside the package, runs
through a recipe (library and CLI), calibrates, quantizes, and its state saves and loads."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch
from click.testing import CliRunner

from ptqsam.calibration import calibrate, calibration_samples, load_calibrated, save_calibrated
from ptqsam.cli import main
from ptqsam.errors import RecipeError
from ptqsam.instrument import attached_quantizers, load_recipe, quantizing
from ptqsam.inference import SamRunner
from quantizers import QUANTIZERS

TOY_MODULE = '''
import torch
from quantizers import Quantizer, register_quantizer
from quantizers.functional.uniform import fake_quantize, quant_range


@register_quantizer("toy_pow2")
class PowerOfTwoQuantizer(Quantizer):
    """Signed symmetric uniform grid whose step is a power of two."""

    def __init__(self, spec):
        super().__init__(spec)
        self.register_buffer("amax", torch.zeros(()))
        self.register_buffer("scale", torch.ones(1))

    def observe(self, x, *context):
        self.amax = torch.maximum(self.amax, x.abs().max())

    def _finalize(self):
        qmax = 2 ** (self.spec.bits - 1) - 1
        self.scale = torch.exp2(torch.ceil(torch.log2(self.amax.clamp(min=1e-12) / qmax))).reshape(1)

    def fake_quantize(self, x):
        qmin, qmax = quant_range(self.spec.bits, signed=True)
        return fake_quantize(x, self.scale, torch.zeros(1, dtype=torch.int32), qmin, qmax)
'''

RECIPE = """\
name: toy
description: power-of-two weights, minmax inputs
imports: [toy_parts]
rules:
  - include: ["*.weight"]
    spec: {bits: W, quantizer: toy_pow2}
  - include: ["*.input"]
    spec: {bits: A, observer: minmax}
"""


@pytest.fixture
def toy_recipe(tmp_path, monkeypatch):
    (tmp_path / "toy_parts.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "toy.yaml"
    path.write_text(RECIPE)
    yield path
    QUANTIZERS.unregister("toy_pow2")
    import sys
    sys.modules.pop("toy_parts", None)


def test_a_toy_kind_runs_through_a_recipe(toy_recipe, tiny_dataset, random_testbed, tmp_path):
    samples = calibration_samples(tiny_dataset, 1, seed=0)
    model = random_testbed()
    report = calibrate(model, load_recipe(toy_recipe), 4, 8, samples, progress=False)
    weights = {n: q for n, q in attached_quantizers(model).items() if n.endswith(".weight") and n not in report.unreached}
    assert weights and all(type(q).kind == "toy_pow2" and q.is_calibrated for q in weights.values())
    for quantizer in weights.values():
        assert math.log2(float(quantizer.scale)).is_integer()
    runner = SamRunner(model)
    sample = samples[0]
    with quantizing(model), torch.inference_mode():
        before = runner.decode(runner.embed(sample.image), sample.prompts.boxes).low_res_logits
    save_calibrated(model, tmp_path / "toy.pt", report, load_recipe(toy_recipe), "testbed", 4, 8)
    fresh = random_testbed()
    load_calibrated(fresh, tmp_path / "toy.pt", load_recipe(toy_recipe), "testbed")
    runner = SamRunner(fresh)
    with quantizing(fresh), torch.inference_mode():
        after = runner.decode(runner.embed(sample.image), sample.prompts.boxes).low_res_logits
    assert torch.equal(before, after)


def test_the_cli_takes_a_recipe_with_its_own_parts(toy_recipe, random_testbed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["calibrate", "--recipe", str(toy_recipe), "--bits", "W4A8",
                                       "--calib-images", "1", "--out", "toy.pt"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    inspected = CliRunner().invoke(main, ["inspect", "--state", "toy.pt", "--kind", "weight", "--json"])
    rows = json.loads(inspected.stdout)
    assert rows and all(r["quantizer"].startswith("toy_pow2 4b") for r in rows if "quantizer" in r)


def test_a_recipe_naming_a_missing_module_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(RECIPE.replace("toy_parts", "no_such_module_xyz"))
    with pytest.raises(RecipeError, match="cannot import 'no_such_module_xyz'"):
        load_recipe(path)
