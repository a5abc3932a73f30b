"""The sensitivity, allocate, accuracy-control and pareto commands end to end (random testbed, a recipe
that quantizes the decoder's final attention only, to keep it quick)."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from ptqsam.calibration import calibrate
from ptqsam.cli import main
from ptqsam.instrument import load_recipe

FINAL = "mask_decoder.transformer.final_attn_token_to_image"
RECIPE = {"name": "final-attention", "rules": [
    {"include": [f"{FINAL}.*.weight"], "spec": {"bits": "W", "symmetric": True}},
    {"include": [f"{FINAL}.*.input", f"{FINAL}.query", f"{FINAL}.key", f"{FINAL}.value", f"{FINAL}.probs"],
     "spec": {"bits": "A", "symmetric": False}}]}


@pytest.fixture
def run(random_testbed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args), catch_exceptions=False)


def test_sensitivity_allocate_control_and_pareto(run, tmp_path, monkeypatch):
    (tmp_path / "final.yaml").write_text(yaml.safe_dump(RECIPE))
    result = run("sensitivity", "--recipe", "final.yaml", "--bits", "W4A4,W8A8", "--split-roles", "--calib-images", "1",
                 "--out", "sens")
    assert result.exit_code == 0, result.output
    assert "6 groups" in result.output and "most sensitive (mse, weight sites, W4A4)" in result.output
    assert (tmp_path / "sens" / "top_W4A4_activation.png").is_file()
    study = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    assert study["settings"]["model"] == "testbed" and study["passes"]["encoder"] == 2

    result = run("allocate", "sens", "--budget", "W6A6", "--out", "mixed.yaml")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["costs"]["weight_bits"] <= 6 and summary["costs"]["activation_bits"] <= 6
    text = (tmp_path / "mixed.yaml").read_text()
    assert "# Budget: weight_bits <= 6 (= W6A6), activation_bits <= 6 (= W6A6)." in text
    assert f"Study fingerprint {study['fingerprint']['hash']}." in text
    assert {r.spec["bits"] for r in load_recipe(str(tmp_path / "mixed.yaml")).rules} <= {4, 8}

    failed = run("allocate", "sens", "--budget", "W3A3", "--out", "none.yaml")
    assert failed.exit_code == 1 and "error: no choice of the candidate bits meets" in failed.output
    assert not (tmp_path / "none.yaml").exists()

    result = run("accuracy-control", "sens", "--target", "1.0", "--synthetic-images", "3", "--control-images", "1",
                 "--out", "control")
    assert result.exit_code == 0, result.output
    control = json.loads(result.output)
    assert control["reached"] and len(control["steps"]) == 1 and control["verify_images"] == 2
    assert load_recipe(str(tmp_path / "control" / "recipe.yaml")).name == "final-attention-control-1.0"

    result = run("pareto", "--recipe", "final.yaml", "--bits", "W4A4", "--mixed", "mixed.yaml",
                 "--synthetic-images", "2", "--calib-images", "1", "--out", "pareto")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "pareto" / "pareto.json").read_text())["rows"]
    assert [r["bits"] for r in rows] == ["float", "W4A4", "mixed"]
    assert (tmp_path / "pareto" / "pareto.png").is_file() and "| mixed |" in result.output

    from ptqsam.mixed_precision import pareto

    calibrations = []
    monkeypatch.setattr(pareto, "calibrate", lambda *a, **k: calibrations.append(a[2:4]) or calibrate(*a, **k))
    result = run("pareto", "--recipe", "final.yaml", "--bits", "W4A4,W8A8", "--mixed", "mixed.yaml",
                 "--synthetic-images", "2", "--calib-images", "1", "--out", "pareto")
    assert result.exit_code == 0, result.output
    assert calibrations == [(8, 8)]  # the runs of the first call are reused
    again = json.loads((tmp_path / "pareto" / "pareto.json").read_text())["rows"]
    assert [r["bits"] for r in again] == ["float", "W4A4", "W8A8", "mixed"]
    assert again[1] == rows[1] and again[3] == rows[2]

    failed = run("pareto", "--recipe", "final.yaml", "--bits", "W4A4", "--mixed", "final.yaml",
                 "--synthetic-images", "2", "--calib-images", "1", "--out", "pareto2")
    assert failed.exit_code == 1 and "explicit bits" in failed.output
