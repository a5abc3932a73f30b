"""The ptqsam CLI end to end (CliRunner), errors included."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from ptqsam.cli import main
from ptqsam.evaluation.latex import latex_table


@pytest.fixture
def run(random_testbed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # commands that default to ./results write there
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)
    return invoke


def test_help_lists_every_command(run):
    result = run("--help")
    for command in ("demo", "calibrate", "evaluate", "sweep", "plot", "inspect"):
        assert command in result.output
    assert "--bits" in run("calibrate", "--help").output


def test_inspect_builds_the_model_of_its_seed(run, tiny_dataset_dir, tmp_path):
    """A model without a checkpoint is random with ``--seed``: inspecting a state calibrated on the
    model of seed 3 needs the model of seed 3 (it was built with seed 0 and refused as other weights)."""
    data = ["--images", str(tiny_dataset_dir / "images"), "--annotations", str(tiny_dataset_dir / "annotations.json")]
    state = tmp_path / "seed3.pt"
    made = run("calibrate", *data, "--recipe", "minmax", "--bits", "W8A8", "--calib-images", "1", "--seed", "3",
               "--out", str(state))
    assert made.exit_code == 0, made.output
    inspected = run("inspect", "--state", str(state), "--seed", "3", "--kind", "probs", "--json")
    assert inspected.exit_code == 0, inspected.output
    assert len(json.loads(inspected.stdout)) == 13


def test_calibrate_then_evaluate(run, tiny_dataset_dir, tmp_path):
    data = ["--images", str(tiny_dataset_dir / "images"), "--annotations", str(tiny_dataset_dir / "annotations.json")]
    state = tmp_path / "state.pt"
    result = run("calibrate", *data, "--recipe", "minmax", "--bits", "W8A8", "--calib-images", "2", "--out", str(state))
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["images"]) == 2 and state.is_file()
    out = tmp_path / "metrics.json"
    result = run("evaluate", *data, "--state", str(state), "--out", str(out))
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    printed = json.loads(result.stdout)
    assert {k: v for k, v in written.items() if k in printed} == printed  # printed, then written
    assert set(written) - set(printed) == {"instance_ious"}  # the per-instance IoUs go to the file only
    assert (written["state"], written["recipe"], written["bits"]) == (str(state), "minmax", "W8A8")
    assert written["state_fingerprint"] and not written["weights_override"]
    assert written["fingerprint"]["settings"]["state_fingerprint"] == written["state_fingerprint"]
    best_of_three = written["metrics"]
    assert 0.0 <= best_of_three["miou"] <= 1.0
    single = run("evaluate", *data, "--state", str(state), "--single-mask")
    assert single.exit_code == 0 and json.loads(single.stdout)["metrics"]["count"] == best_of_three["count"]
    inspected = run("inspect", "--state", str(state), "--kind", "probs", "--json")
    rows = json.loads(inspected.stdout)
    assert len(rows) == 13 and all("quantizer" in r for r in rows)
    stats = run("inspect", *data, "--state", str(state), "--kind", "probs", "--stats-images", "1", "--json")
    assert stats.exit_code == 0, stats.output
    rows = json.loads(stats.stdout)
    assert len(rows) == 13
    assert all(0.0 <= r["stats"]["min"] <= r["stats"]["max"] <= 1.0 and r["stats"]["rel_error"] > 0 for r in rows)
    table = run("inspect", *data, "--kind", "probs", "--stats-images", "1")
    assert table.exit_code == 0 and "|x|p99.9" in table.output and "rel.err" not in table.output


def test_calibrate_without_images_generates_its_own_set(run, tmp_path):
    result = run("calibrate", "--recipe", "minmax", "--calib-images", "1", "--out", "s.pt")
    assert result.exit_code == 0, result.output
    folders = list((tmp_path / "results" / "calib_data").glob("synthetic-n1-*"))
    generated = json.loads((folders[0] / "annotations.json").read_text())
    assert len(folders) == 1 and len(generated["images"]) == 1 and not (tmp_path / "results" / "data").exists()


def test_sweep_and_plot(run, tmp_path):
    config = _tiny_sweep(tmp_path)
    result = run("sweep", str(config), "--latex", "table.tex")
    assert result.exit_code == 0, result.output
    assert "| testbed | minmax | W8A8 |" in result.output
    rows = json.loads((tmp_path / "res" / "report.json").read_text())["rows"]
    assert (tmp_path / "table.tex").read_text() == latex_table(rows) and "LaTeX table: table.tex" in result.stdout
    assert (tmp_path / "res" / "plots").is_dir()
    cell = tmp_path / "res" / "cells" / "testbed__minmax__W8A8.json"
    cell.write_bytes(b"")  # a zero-byte cell (a full disk, a crash) is computed again, not fatal
    rerun = run("sweep", str(config))
    assert rerun.exit_code == 0 and "Traceback" not in rerun.output and json.loads(cell.read_text())["metrics"]
    again = run("plot", str(tmp_path / "res"), "--out", str(tmp_path / "p"))
    assert again.exit_code == 0 and list((tmp_path / "p").glob("*.png"))


def test_demo_reduced(run, tmp_path):
    # one process: spawned workers would not see the random testbed weights this test patches in
    result = run("demo", "--out", str(tmp_path), "--images", "2", "--calib-images", "1", "--recipes", "ptq4sam",
                 "--recon-recipe", "ptq4sam-l", "--recon-iterations", "5", "--bits", "W8A8,W4A4", "--calib-sets", "2",
                 "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "| testbed | float | float |" in result.stdout and "| testbed | ptq4sam | W4A4 |" in result.stdout
    # the full table is wider than 80 columns: a summary on screen, the full table in report.md
    assert "the full table (" in result.stdout and str(tmp_path / "report.md") in result.stdout
    assert max(len(line) for line in result.stdout.splitlines() if line.startswith("|")) <= 80
    assert "| testbed | ptq4sam | W4A4 | ptq4sam |" in (tmp_path / "report.md").read_text()  # the protocol float list
    assert "cell 4/4 done" in result.stderr  # the overall line: float, ptq4sam x 2, ptq4sam-l
    assert "bimodal fold (BIG): none of the 18 checked" in result.output  # 3 cells (ptq4sam-l too) x 2 sets x 3
    figures = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert figures == {"degradation.png", "site_ptq4sam_W4A4.png", "sensitivity_ptq4sam_W4A4.png"}


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--checkpoint", "/nonexistent.pth"], "not found"),
    (["calibrate", "--recipe", "nope"], "nope"),
    (["calibrate", "--bits", "W1A8"], "weight bits"),
    (["calibrate", "--bits", "eight"], "eight"),
    (["plot", "."], "report.json"),
    (["inspect", "--stats-images", "-1"], "stats-images"),
    (["calibrate", "--search-rows", "0"], "--search-rows must be >= 1"),
    (["calibrate", "--seed", str(2**64)], "--seed must be <= 9223372036854775807"),  # torch's seeds are int64
    (["calibrate", "--calib-images", "0"], "--calib-images must be >= 1"),
    (["calibrate", "--recon-iterations", "0"], "--recon-iterations must be >= 1"),
    (["calibrate", "--detections", "dets.json"], "only with --prompt detections"),
    (["calibrate", "--images", "/x"], "--images and --annotations"),
    (["evaluate", "--images", "/x"], "--images and --annotations go together"),
    (["evaluate", "--eval-images", "-1"], "--eval-images must be >= 0"),
    (["demo", "--images", "0"], "--images must be >= 1"),
    (["demo", "--recon-iterations", "0"], "--recon-iterations must be >= 1"),
    (["sweep", "missing.yaml"], "not found"),
])
def test_errors_are_one_line_and_non_zero(run, args, message, tmp_path):
    result = run(*args)
    assert not (tmp_path / "results").exists()  # failed before any work
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and message in lines[-1]
    assert not any("Traceback" in line for line in lines)


def test_wrong_model_type_and_malformed_annotations(run, tmp_path, random_testbed):
    checkpoint = tmp_path / "testbed.pth"
    torch.save(random_testbed().state_dict(), checkpoint)
    result = run("evaluate", "--model", "tinysam", "--checkpoint", str(checkpoint))
    assert result.exit_code == 1 and "tinysam" in result.output
    (tmp_path / "images").mkdir()
    bad = tmp_path / "ann.json"
    bad.write_text('{"images": 3}')
    result = run("evaluate", "--images", str(tmp_path / "images"), "--annotations", str(bad))
    assert result.exit_code == 1 and "ann.json" in result.output


def test_debug_shows_traceback(random_testbed):
    result = CliRunner().invoke(main, ["--debug", "evaluate", "--checkpoint", "/nonexistent.pth"])
    assert result.exit_code == 1 and "Traceback" in result.output


def test_a_state_applied_to_other_weights_is_refused_unless_allowed(run, tiny_dataset_dir, tmp_path, random_testbed,
                                                                   caplog):
    data = ["--images", str(tiny_dataset_dir / "images"), "--annotations", str(tiny_dataset_dir / "annotations.json")]
    assert run("calibrate", *data, "--calib-images", "1", "--out", "s.pt").exit_code == 0
    other = tmp_path / "other.pth"
    torch.save(random_testbed(seed=1).state_dict(), other)
    refused = CliRunner().invoke(main, ["evaluate", *data, "--state", "s.pt", "--checkpoint", str(other)])
    assert refused.exit_code == 1 and "calibrated on other weights" in refused.stderr
    allowed = run("evaluate", *data, "--state", "s.pt", "--checkpoint", str(other), "--eval-images", "1",
                  "--allow-other-weights")
    assert allowed.exit_code == 0 and json.loads(allowed.stdout)["weights_override"] is True
    assert "applied anyway" in caplog.text


def test_a_result_that_cannot_be_written_is_printed_and_kept_beside(run, tiny_dataset_dir, tmp_path, monkeypatch):
    import ptqsam.io

    real = ptqsam.io.write_atomic

    def failing(path, write, mode="w"):
        if path.name == "metrics.json":
            raise OSError(28, "No space left on device")
        return real(path, write, mode)

    monkeypatch.setattr(ptqsam.io, "write_atomic", failing)
    data = ["--images", str(tiny_dataset_dir / "images"), "--annotations", str(tiny_dataset_dir / "annotations.json")]
    result = run("evaluate", *data, "--eval-images", "1", "--out", str(tmp_path / "metrics.json"))
    assert result.exit_code == 1
    printed = json.loads(result.stdout)
    rescued = list(tmp_path.glob("metrics.rescued-*.json"))
    kept = json.loads(rescued[0].read_text()) if len(rescued) == 1 else {}
    assert {k: v for k, v in kept.items() if k in printed} == printed
    assert "No space left on device" in result.stderr and str(rescued[0]) in result.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_more_calibration_images_than_usable_ones_is_said(run, tiny_dataset_dir, tmp_path, caplog):
    data = ["--images", str(tiny_dataset_dir / "images"), "--annotations", str(tiny_dataset_dir / "annotations.json")]
    result = run("calibrate", *data, "--calib-images", "9", "--out", "s.pt")
    assert result.exit_code == 0 and len(json.loads(result.stdout)["images"]) == 4
    assert "9 calibration images asked for, 4 used" in caplog.text


def _tiny_sweep(tmp_path):
    """A sweep config of one quantized cell (minmax W8A8) on 2 generated images, results in tmp_path/res."""
    config = tmp_path / "sweep.yaml"
    config.write_text(f"recipes: [minmax]\nbits: [W8A8]\nsynthetic_images: 2\ncalib_images: 1\n"
                      f"out: {tmp_path / 'res'}\n")
    return str(config)


def test_verbose_and_quiet_work_before_or_after_the_command(run, tmp_path, caplog):
    config = _tiny_sweep(tmp_path)
    shown = run("sweep", config)
    assert shown.exit_code == 0 and "cell 2/2 done" in shown.stderr  # the overall line, on stderr
    assert "| testbed | minmax | W8A8 |" in shown.stdout
    for args in (["sweep", config, "--quiet"], ["--quiet", "sweep", config], ["-q", "sweep", config]):
        quiet = run(*args)
        assert quiet.exit_code == 0, quiet.output
        assert "cell" not in quiet.stderr and "it/s" not in quiet.stderr  # no progress bar at all
        assert quiet.stdout == shown.stdout  # the same results
    for args in (["sweep", config, "-v"], ["-v", "sweep", config], ["sweep", "--verbose", config]):
        caplog.clear()
        assert run(*args).exit_code == 0
        assert "already done: skipped" in caplog.text  # an INFO message, shown with -v only
    caplog.clear()
    assert run("sweep", config).exit_code == 0 and "already done" not in caplog.text
    assert run("demo", "--help", "-v").exit_code == 0  # `ptqsam demo -v` parses
    both = CliRunner().invoke(main, ["sweep", config, "-v", "--quiet"])
    assert both.exit_code == 2 and "exclude each other" in both.stderr


def test_evaluate_records_what_it_evaluated_and_its_deltas_against_a_float_reference(run, tiny_dataset_dir, tmp_path):
    data = ["--images", str(tiny_dataset_dir / "images"), "--annotations", str(tiny_dataset_dir / "annotations.json")]
    assert run("calibrate", *data, "--recipe", "minmax", "--bits", "W4A4", "--calib-images", "1",
               "--out", "s.pt").exit_code == 0
    assert run("evaluate", *data, "--eval-images", "3", "--out", "float.json").exit_code == 0
    reference = json.loads((tmp_path / "float.json").read_text())
    assert (reference["recipe"], reference["bits"], reference["state"]) == ("float", "float", None)
    assert reference["reference_masks"] and len(reference["instance_ious"]) == reference["metrics"]["count"]
    result = run("evaluate", *data, "--eval-images", "3", "--state", "s.pt", "--reference", "float.json",
                 "--out", "q.json")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "q.json").read_text())
    assert (record["model"], record["recipe"], record["bits"], record["state"]) == ("testbed", "minmax", "W4A4", "s.pt")
    assert record["checkpoint"] == reference["checkpoint"] == "random-seed0"  # the weights id
    assert record["checkpoint_path"] is None and record["prompt"] == "box"
    assert record["image_ids"] == reference["image_ids"] and len(record["image_ids"]) == record["num_images"] == 3
    assert "reference_masks" not in record and 0.0 <= record["metrics"]["agreement"] <= 1.0
    against = record["against_reference"]
    assert against["reference"] == "float.json"
    assert against["delta_miou"] == record["metrics"]["miou"] - reference["metrics"]["miou"]
    assert against["delta_miou_ci_low"] <= against["delta_miou"] <= against["delta_miou_ci_high"]
    assert json.loads(result.stdout)["against_reference"] == against
    other = CliRunner().invoke(main, ["evaluate", *data, "--eval-images", "2", "--state", "s.pt",
                                      "--reference", "float.json"])
    assert other.exit_code == 1 and "evaluation.data" in other.stderr  # other images: refused before evaluating
    quantized = CliRunner().invoke(main, ["evaluate", *data, "--reference", "q.json"])
    assert quantized.exit_code == 1 and "not the record of a float run" in quantized.stderr


def test_error_messages_name_the_flags_typed_not_the_config_keys(run):
    for args in (["calibrate", "--calib-images", "0"], ["calibrate", "--search-rows", "0"],
                 ["demo", "--images", "0"], ["evaluate", "--images", "/x"]):
        line = run(*args).stderr.strip().splitlines()[-1]
        assert not any(key in line for key in ("calib_images", "search_rows", "synthetic_images", "config ")), line


def test_inspect_refuses_an_unknown_kind_naming_the_valid_ones(run):
    result = run("inspect", "--kind", "nonsense")
    assert result.exit_code == 2 and "sites" not in result.stdout
    assert "'nonsense' is not one of" in result.stderr and all(
        kind in result.stderr for kind in ("'weight'", "'input'", "'probs'", "'matmul_a'"))
    assert run("inspect", "--kind", "probs").exit_code == 0


def _detections(dataset, path, per_image: int = 3):
    """A detections file: ``per_image`` boxes on every image but the last (none there), unlike its
    ground truth (one box per instance)."""
    data = json.loads((dataset / "annotations.json").read_text())
    images = sorted(image["id"] for image in data["images"])
    boxes = [{"image_id": image, "category_id": 1, "bbox": [4 + 8 * k, 6 + 4 * k, 40, 30], "score": 0.9 - 0.1 * k}
             for image in images[:-1] for k in range(per_image)]
    path.write_text(json.dumps(boxes))
    return images


def test_calibrate_and_inspect_prompt_with_detector_boxes(run, five_images, tmp_path, caplog):
    data = ["--images", str(five_images / "images"), "--annotations", str(five_images / "annotations.json")]
    images = _detections(five_images, tmp_path / "dets.json")
    detections = ["--prompt", "detections", "--detections", str(tmp_path / "dets.json")]
    result = run("calibrate", *data, *detections, "--calib-images", "5", "--out", "s.pt")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["images"] == images[:-1] and printed["prompts"] == 3 * len(images[:-1])  # the detector's boxes
    assert "5 calibration images asked for, 4 used" in caplog.text and "have a detection in" in caplog.text
    stats = {}
    for prompt in (detections, []):
        inspected = run("inspect", *data, *prompt, "--kind", "probs", "--stats-images", "2", "--json")
        assert inspected.exit_code == 0, inspected.output
        stats[bool(prompt)] = [row["stats"] for row in json.loads(inspected.stdout)]
    assert len(stats[True]) == 13 and stats[True] != stats[False]  # the boxes prompted the statistics


def test_single_mask_output_of_the_testbed_is_warned_about(run, tiny_dataset_dir, caplog):
    from ptqsam.models import testbed

    data = ["--images", str(tiny_dataset_dir / "images"), "--annotations", str(tiny_dataset_dir / "annotations.json")]
    testbed._warn_single_mask.cache_clear()
    assert run("evaluate", *data, "--eval-images", "1").exit_code == 0
    assert "single-mask" not in caplog.text
    for _ in range(2):
        assert run("evaluate", *data, "--eval-images", "1", "--single-mask").exit_code == 0
    warnings = [r.getMessage() for r in caplog.records if "single-mask" in r.getMessage()]
    assert len(warnings) == 1 and "never trained" in warnings[0] and "\n" not in warnings[0]  # once, one line
