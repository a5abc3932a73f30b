"""The sensitivity, allocate, accuracy-control and pareto commands end to end (random testbed, a recipe
that quantizes the decoder's final attention only, to keep it quick)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import ptqsam
from ptqsam.calibration import calibrate
from ptqsam.cli import main
from ptqsam.errors import AllocationError
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


def _study(run, tmp_path):
    """``final.yaml`` (:data:`RECIPE`) and its sensitivity study under ``sens``; the command's output."""
    (tmp_path / "final.yaml").write_text(yaml.safe_dump(RECIPE))
    result = run("sensitivity", "--recipe", "final.yaml", "--bits", "W4A4,W8A8", "--split-roles", "--calib-images", "1",
                 "--out", "sens")
    assert result.exit_code == 0, result.output
    return result


def test_sensitivity_allocate_control_and_pareto(run, tmp_path, monkeypatch):
    result = _study(run, tmp_path)
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


def test_the_python_api_gives_what_the_commands_give(run, tmp_path):
    _study(run, tmp_path)
    printed = json.loads(run("allocate", "sens", "--budget", "W6A6", "--out", "mixed.yaml").output)
    allocation, recipe = ptqsam.allocate_bits("sens", "W6A6", out="api.yaml")
    assert {"recipe": "mixed.yaml", **allocation.summary()} == printed
    assert (tmp_path / "api.yaml").read_text() == (tmp_path / "mixed.yaml").read_text()
    assert recipe.to_dict() == load_recipe(str(tmp_path / "mixed.yaml")).to_dict()

    control = ["--target", "0.0", "--max-steps", "2", "--control-images", "1"]
    printed = json.loads(run("accuracy-control", "sens", *control, "--synthetic-images", "3", "--out", "c").output)
    summary, recipe = ptqsam.accuracy_control("sens", 0.0, max_steps=2, control_images=1, synthetic_images=3,
                                              out="c_api")
    assert {**summary, "recipe": "c/recipe.yaml"} == printed and printed["verify_images"] == 2
    assert (tmp_path / "c_api" / "recipe.yaml").read_text() == (tmp_path / "c" / "recipe.yaml").read_text()
    assert recipe.name == "final-attention-control-0.0"

    pareto = ["--recipe", "final.yaml", "--bits", "W4A4,W8A8", "--mixed", "mixed.yaml", "--synthetic-images", "2",
              "--calib-images", "1"]
    assert run("pareto", *pareto, "--out", "p").exit_code == 0
    rows = ptqsam.pareto_front("final.yaml", "W4A4,W8A8", mixed=["mixed.yaml"], synthetic_images=2, calib_images=1,
                               out="p_api")
    written = json.loads((tmp_path / "p" / "pareto.json").read_text())["rows"]
    assert json.loads(json.dumps(rows)) == written and [r["bits"] for r in rows] == ["float", "W4A4", "W8A8", "mixed"]


def test_a_study_made_in_python_needs_its_model(random_testbed, tiny_dataset):
    study = ptqsam.sensitivity_study(random_testbed(), "minmax", "W8A8", ptqsam.calibration_samples(tiny_dataset, 1, 0),
                                     "block")
    with pytest.raises(AllocationError, match="does not record its model .*or pass the model"):
        ptqsam.allocate_bits(study, "W8A8")


def test_pareto_offers_no_detections(run):
    """pareto tabulates mIoU of ground-truth prompts: detector boxes (mask AP only) mean nothing there."""
    assert "--detections" not in run("pareto", "--help").output.partition("Options:")[2]
    refused = run("pareto", "--detections", "dets.json", "--out", "p")
    assert refused.exit_code == 2 and "pareto measures mIoU with ground-truth prompts: --detections" in refused.output
    assert not Path("p").exists()
    refused = run("pareto", "--prompt", "detections")
    assert refused.exit_code == 2 and "Invalid value for '--prompt'" in refused.output


@pytest.mark.parametrize("option, setting, message", [
    ("--target", "nan", "target must be a finite number >= 0, got nan"),
    ("--control-images", "0", "control_images must be >= 1, got 0"),
    ("--max-steps", "-1", "max_steps must be >= 0, got -1")])
def test_accuracy_control_checks_its_settings_first(run, tmp_path, option, setting, message):
    """Before the study is read (this one is not a study); the command names its flag."""
    (tmp_path / "s.json").write_text("{}")
    refused = run("accuracy-control", "s.json", "--target", "0.1", option, setting)
    flag = option + message[message.index(" must"):]
    assert refused.exit_code == 1 and f"error: {flag}" in refused.output
    value = float(setting) if option == "--target" else int(setting)
    with pytest.raises(AllocationError, match=f"^{message}$"):
        ptqsam.accuracy_control("s.json", **{"target": 0.1, option[2:].replace("-", "_"): value})


def test_accuracy_control_calibrates_as_its_study_did(run, tmp_path, monkeypatch):
    """A study made with reconstruction settings ranks its groups on models calibrated with them: the
    control's models must be calibrated the same way (they were calibrated without them)."""
    import dataclasses

    from ptqsam.analysis.sensitivity import load_sensitivity
    from ptqsam.mixed_precision import workflow

    _study(run, tmp_path)
    study = load_sensitivity(tmp_path / "sens")
    study = dataclasses.replace(study, settings={**study.settings, "reconstruction": {"iterations": 2}})
    seen, calibrate_ = [], workflow.calibrate

    def recording(*args, **kwargs):
        seen.append(kwargs.get("reconstruction"))
        return calibrate_(*args, **kwargs)

    monkeypatch.setattr(workflow, "calibrate", recording)
    ptqsam.accuracy_control(study, 1.0, control_images=1, synthetic_images=3, out="c")
    assert seen == [{"iterations": 2}, {"iterations": 2}]  # the start and the raised bits
