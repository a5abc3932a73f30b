"""``ptqsam compare``: two small sweeps (and a folder of ``evaluate --out`` records) in one table,
one figure and the settings that differ."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from ptqsam.cli import main
from ptqsam.compare import compare_results, flatten
from ptqsam.config import ExperimentConfig
from ptqsam.errors import PtqsamError
from ptqsam.evaluation.latex import latex_table
from ptqsam.sweep import run_sweep


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory, random_testbed_module):
    """Two tiny sweeps of the random testbed: minmax on 2 calibration images, log-sqrt2 on 1."""
    root = tmp_path_factory.mktemp("compare")
    for name, recipe, calib in (("sweep_a", "minmax", 2), ("sweep_b", "log-sqrt2", 1)):
        run_sweep(ExperimentConfig.from_dict({"recipes": [recipe], "bits": ["W8A8", "W4A4"], "synthetic_images": 2,
                                              "calib_images": calib, "out": str(root / name)}), progress=False)
    return root


def _report_rows(folder):
    return json.loads((folder / "report.json").read_text())["rows"]


def test_two_sweeps_in_one_table_and_figure_with_the_settings_that_differ(two_sweeps, tmp_path):
    a, b, out = two_sweeps / "sweep_a", two_sweeps / "sweep_b", tmp_path / "cmp"
    result = CliRunner().invoke(main, ["compare", str(a), str(b), "--out", str(out),
                                       "--latex", str(tmp_path / "t.tex")])
    assert result.exit_code == 0, result.output
    comparison = compare_results([a, b])
    # every row keeps its own numbers (and Δ's against its own float run), named by its folder
    assert comparison.rows == [{"results": "sweep_a", **row} for row in _report_rows(a)] + [
        {"results": "sweep_b", **row} for row in _report_rows(b)]
    assert set(comparison.differences) >= {"recipes", "calib_images"}
    assert comparison.differences["recipes"] == {"sweep_a": ["minmax"], "sweep_b": ["log-sqrt2"]}
    assert "synthetic_images" not in comparison.differences and "out" not in comparison.differences
    markdown = (out / "compare.md").read_text()
    assert "| recipes | [\"minmax\"] | [\"log-sqrt2\"] |" in markdown and "| calib_images | 2 | 1 |" in markdown
    assert "| sweep_b | testbed | log-sqrt2 | W4A4 |" in markdown
    assert "| sweep_a | testbed | float | float |" in markdown
    assert "- calib_images: sweep_a 2; sweep_b 1\n" in result.stdout
    assert "| sweep_a | testbed | minmax | W8A8 |" in result.stdout
    table = list(csv.DictReader((out / "compare.csv").open()))
    assert [(r["results"], r["recipe"], r["bits"]) for r in table] == [
        (r["results"], r["recipe"], r["bits"]) for r in comparison.rows]
    assert float(table[2]["delta_miou"]) == comparison.rows[2]["delta_miou"]
    data = json.loads((out / "compare.json").read_text())
    assert data["rows"] == comparison.rows and data["differences"]["calib_images"] == {"sweep_a": 2, "sweep_b": 1}
    assert (out / "compare.png").stat().st_size > 0 and (out / "compare.pdf").stat().st_size > 0
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temp file
    latex = (tmp_path / "t.tex").read_text()
    assert latex == latex_table(comparison.rows, (("results", lambda row: row["results"]),))
    assert r"sweep\_a & testbed & float" in latex


def test_a_folder_of_evaluate_records_compares_with_a_sweep(two_sweeps, tmp_path, random_testbed, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    state = str(two_sweeps / "sweep_a" / "states" / "testbed__minmax__W4A4__calib0.pt")
    folder = tmp_path / "evaluated"
    float_out, quantized_out = str(folder / "float.json"), str(folder / "minmax.json")
    assert runner.invoke(main, ["evaluate", "--eval-images", "2", "--out", float_out]).exit_code == 0
    done = runner.invoke(main, ["evaluate", "--eval-images", "2", "--state", state, "--reference", float_out,
                                "--out", quantized_out])
    assert done.exit_code == 0, done.output
    comparison = compare_results([two_sweeps / "sweep_a", folder])
    rows = [row for row in comparison.rows if row["results"] == "evaluated"]
    assert [(r["recipe"], r["bits"]) for r in rows] == [("float", "float"), ("minmax", "W4A4")]
    record = json.loads((folder / "minmax.json").read_text())
    assert rows[1]["miou"] == record["metrics"]["miou"]
    assert rows[1]["delta_miou"] == record["against_reference"]["delta_miou"]
    assert "evaluation.data.annotations" in comparison.differences or "evaluation.data.images" in comparison.differences
    # Δ's are taken against the folder's float run: a second one, or a record evaluated otherwise, is refused
    other = str(tmp_path / "center.json")
    assert runner.invoke(main, ["evaluate", "--eval-images", "2", "--prompt", "center_point", "--state", state,
                                "--out", other]).exit_code == 0
    (folder / "center.json").write_text((tmp_path / "center.json").read_text())
    with pytest.raises(PtqsamError, match=r"float\.json, against which .*center\.json is compared, was evaluated "
                                          r"under other settings \(evaluation\.prompt differ"):
        compare_results([two_sweeps / "sweep_a", folder])
    (folder / "center.json").unlink()
    (folder / "float2.json").write_text((folder / "float.json").read_text())
    with pytest.raises(PtqsamError, match="are both float runs of testbed"):
        compare_results([two_sweeps / "sweep_a", folder])


def test_compare_refuses_what_it_cannot_compare(two_sweeps, tmp_path):
    with pytest.raises(PtqsamError, match="two results folders or more"):
        compare_results([two_sweeps / "sweep_a"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PtqsamError, match="neither a report.json"):
        compare_results([two_sweeps / "sweep_a", tmp_path / "empty"])
    with pytest.raises(PtqsamError, match="given twice"):
        compare_results([two_sweeps / "sweep_a", two_sweeps / "sweep_a"])
    failed = CliRunner().invoke(main, ["compare", str(two_sweeps / "sweep_a"), str(tmp_path / "empty")])
    assert failed.exit_code == 1 and failed.stderr.startswith("error:") and "Traceback" not in failed.output


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": {}, "f": None}) == {"a.b": 1, "a.c.d": [2], "e": {}, "f": None}


def test_a_sweeps_float_cell_is_a_reference_and_evaluate_repeats_the_sweeps_numbers(two_sweeps, random_testbed):
    sweep = two_sweeps / "sweep_a"
    data = next((sweep / "data").glob("synthetic-n2-*"))
    result = CliRunner().invoke(main, ["evaluate", "--images", str(data / "images"), "--annotations",
                                       str(data / "annotations.json"), "--state",
                                       str(sweep / "states" / "testbed__minmax__W4A4__calib0.pt"),
                                       "--reference", str(sweep / "cells" / "testbed__float__float.json")])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    row = next(r for r in _report_rows(sweep) if (r["recipe"], r["bits"]) == ("minmax", "W4A4"))
    assert record["metrics"]["miou"] == row["miou"] and record["metrics"]["agreement"] == row["agreement"]
    assert record["against_reference"]["delta_miou"] == row["delta_miou"]
    assert (record["against_reference"]["delta_miou_ci_low"], record["against_reference"]["delta_miou_ci_high"]) == (
        row["delta_miou_ci_low"], row["delta_miou_ci_high"])


def test_folders_of_states_calibrated_otherwise_list_what_made_the_states(tmp_path, random_testbed, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for folder, images in (("one", "1"), ("two", "2")):
        state = f"{folder}.pt"
        calibrated = runner.invoke(main, ["calibrate", "--recipe", "minmax", "--bits", "W4A4", "--calib-images", images,
                                          "--out", state])
        assert calibrated.exit_code == 0, calibrated.output
        assert runner.invoke(main, ["evaluate", "--eval-images", "2", "--out", f"{folder}/float.json"]).exit_code == 0
        assert runner.invoke(main, ["evaluate", "--eval-images", "2", "--state", state, "--reference",
                                    f"{folder}/float.json", "--out", f"{folder}/minmax.json"]).exit_code == 0
    comparison = compare_results([tmp_path / "one", tmp_path / "two"])
    assert "state_settings.calibration_image_ids" in comparison.differences  # was: "No setting differs"
    rows = {r["results"]: r for r in comparison.rows if r["recipe"] == "minmax"}
    assert rows["one"]["inside_spread_of"] == []  # alone at its bits in its folder: nothing to tell apart
