"""Adding a quantizer kind is one module with a decorator: the kind of docs/extending.md, outside the
package, runs through a recipe (library and CLI), calibrates, quantizes, and its state saves and loads."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ptqsam.calibration import calibrate, calibration_samples, load_calibrated, save_calibrated
from ptqsam.cli import main
from ptqsam.errors import RecipeError
from ptqsam.instrument import attached_quantizers, load_recipe, quantizing
from ptqsam.inference import SamRunner
from quantizers import QUANTIZERS

#: the quantizer kind of docs/extending.md ("A quantizer kind"), as a module outside the package
TOY_MODULE = re.search(r"```python\n# file: pow2_quantizer.py\n(.*?)```",
                       (Path(__file__).resolve().parents[2] / "docs" / "extending.md").read_text(), flags=re.S)[1]

RECIPE = """\
name: toy
description: power-of-two weights, minmax inputs
imports: [pow2_quantizer]
rules:
  - include: ["*.weight"]
    spec: {bits: W, quantizer: pow2}
  - include: ["*.input"]
    spec: {bits: A, observer: minmax}
"""


@pytest.fixture
def toy_recipe(tmp_path, monkeypatch):
    (tmp_path / "pow2_quantizer.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "toy.yaml"
    path.write_text(RECIPE)
    yield path
    QUANTIZERS.unregister("pow2")
    import sys
    sys.modules.pop("pow2_quantizer", None)


def test_a_toy_kind_runs_through_a_recipe(toy_recipe, tiny_dataset, random_testbed, tmp_path):
    samples = calibration_samples(tiny_dataset, 1, seed=0)
    model = random_testbed()
    report = calibrate(model, load_recipe(toy_recipe), 4, 8, samples, progress=False)
    weights = {n: q for n, q in attached_quantizers(model).items() if n.endswith(".weight") and n not in report.unreached}
    assert weights and all(type(q).kind == "pow2" and q.is_calibrated for q in weights.values())
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
    summaries = [r["quantizer"] for r in rows if "quantizer" in r]
    assert summaries and all(s.startswith("pow2 4b") for s in summaries) and any("step 2^" in s for s in summaries)


def test_a_recipe_naming_a_missing_module_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(RECIPE.replace("pow2_quantizer", "no_such_module_xyz"))
    with pytest.raises(RecipeError, match="cannot import 'no_such_module_xyz'"):
        load_recipe(path)
