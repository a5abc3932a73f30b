"""Degradation rows and their JSON / CSV / markdown forms."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ptqsam.evaluation.report import degradation_rows, markdown_table, write_report
from ptqsam.evaluation.significance import bootstrap_interval

RUNS = [
    {"model": "m", "recipe": "minmax", "bits": "W4A4", "metrics": {"miou": 0.5, "AP": 0.2}},
    {"model": "m", "recipe": "float", "bits": "float", "metrics": {"miou": 0.8, "AP": 0.4}},
    {"model": "m", "recipe": "minmax", "bits": "W8A8", "metrics": {"miou": 0.79, "AP": 0.41}},
]


def test_deltas_against_the_float_run_and_order():
    rows = degradation_rows(RUNS)
    assert [r["bits"] for r in rows] == ["float", "W8A8", "W4A4"]
    assert rows[0]["delta_miou"] == 0.0
    assert abs(rows[1]["delta_miou"] - (0.79 - 0.8)) < 1e-12
    assert abs(rows[2]["delta_AP"] - (0.2 - 0.4)) < 1e-12


def test_written_files(tmp_path):
    rows = degradation_rows(RUNS)
    paths = write_report(rows, tmp_path, {"seed": 0})
    assert json.loads(paths["json"].read_text())["settings"] == {"seed": 0}
    table = list(csv.DictReader(paths["csv"].open()))
    assert table[2]["bits"] == "W4A4" and float(table[2]["delta_miou"]) == rows[2]["delta_miou"]
    text = markdown_table(rows)
    assert "| m | minmax | W4A4 | 0.5000 | −0.3000 | 0.2000 | −0.2000 |" in text
    assert paths["markdown"].read_text() == text
    assert not list(tmp_path.glob(".*tmp"))


def test_run_settings_travel_with_the_numbers():
    runs = [dict(RUNS[1], checkpoint="abc123", num_images=4, num_prompts=17)]
    row = degradation_rows(runs)[0]
    assert (row["checkpoint"], row["num_images"], row["num_prompts"]) == ("abc123", 4, 17)
    from ptqsam.evaluation.report import csv_text

    header = csv_text([row]).splitlines()[0].split(",")
    assert header[-3:] == ["checkpoint", "num_images", "num_prompts"]


def _cell(recipe: str, runs: list[tuple[float, list[float]]], bits: str = "W4A4") -> dict:
    """A sweep cell record: one (mIoU, per-instance IoUs) per calibration set."""
    return {"model": "m", "recipe": recipe, "bits": bits, "float_list": "ptq4sam", "quantized_sites": 12,
            "metrics": {"miou": float(np.mean([m for m, _ in runs]))},
            "runs": [{"calib_seed": i, "metrics": {"miou": m},
                      "instance_ious": [[0, k, v] for k, v in enumerate(ious)]} for i, (m, ious) in enumerate(runs)]}


FLOAT_CELL = {"model": "m", "recipe": "float", "bits": "float", "metrics": {"miou": 0.8},
              "instance_ious": [[0, k, v] for k, v in enumerate([0.9, 0.7, 0.8, 0.8])]}


def test_spread_over_calibration_sets_and_intervals_in_rows_and_table():
    runs = [FLOAT_CELL, _cell("a", [(0.6, [0.7, 0.5, 0.6, 0.6]), (0.64, [0.74, 0.54, 0.64, 0.64])])]
    row = degradation_rows(runs, seed=3)[1]
    assert row["calib_sets"] == 2 and row["miou_min"] == 0.6 and row["miou_max"] == 0.64
    assert row["miou_std"] == pytest.approx(np.std([0.6, 0.64], ddof=1))
    assert row["miou_ci_low"] <= 0.62 <= row["miou_ci_high"]
    assert row["delta_miou_ci_low"] <= -0.18 <= row["delta_miou_ci_high"]
    assert (row["float_list"], row["quantized_sites"]) == ("ptq4sam", 12)
    line = markdown_table(degradation_rows(runs, seed=3)).splitlines()[3]
    assert line.startswith("| m | a | W4A4 | ptq4sam | 12 | 0.6200 ± 0.0283 |")
    assert "| −0.1800 ± 0.0283 | −0.2000 … −0.1600 |" in line


def test_differences_inside_the_spread_are_marked():
    good = [0.9, 0.8, 0.85, 0.75] * 10
    noisy = [v + d for v, d in zip(good, [0.09, -0.11, 0.04, -0.06] * 10)]  # 0.01 lower, per-instance noise
    runs = [FLOAT_CELL,
            _cell("best", [(0.825, good), (0.825, good)]),
            _cell("overlaps-best", [(0.80, [v - 0.025 for v in good]), (0.83, [v + 0.005 for v in good])]),
            _cell("far", [(0.40, [v - 0.425 for v in good]), (0.41, [v - 0.415 for v in good])]),
            _cell("noisy", [(0.815, noisy), (0.815, noisy)]),
            _cell("other-bits", [(0.825, good), (0.825, good)], bits="W8A8")]
    marks = {r["recipe"]: r.get("inside_spread_of") for r in degradation_rows(runs) if r["bits"] == "W4A4"}
    assert marks["overlaps-best"] == ["best", "noisy"]  # calibration ranges 0.80 … 0.83 overlap both
    assert marks["far"] == []  # far below all, with a tight paired difference
    # no range overlap with "best" (0.815 vs 0.825), but the paired per-instance difference is noise
    assert marks["noisy"] == ["best", "overlaps-best"] and marks["best"] == ["overlaps-best", "noisy"]
    table = markdown_table(degradation_rows(runs))
    assert table.split("| best |")[1].splitlines()[0].endswith("| overlaps-best, noisy |")


def test_one_calibration_set_shows_no_range_and_says_the_spread_is_unmeasured():
    good = [0.9, 0.8, 0.85, 0.75] * 10
    runs = [FLOAT_CELL, _cell("a", [(0.825, good)]), _cell("far", [(0.40, [v - 0.425 for v in good])]),
            _cell("alone", [(0.8, good)], bits="W8A8")]
    table = markdown_table(degradation_rows(runs))
    lines = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| m |")}
    assert "| +0.0250 | 1 set |" in lines["a"]  # not a zero-width min … max range
    assert lines["a"].endswith("| none |") and lines["far"].endswith("| none |")  # told apart from each other
    assert lines["alone"].endswith("| – |") and lines["float"].endswith("| – |")  # nothing to tell apart from
    assert "One calibration set per cell: the spread over calibration sets is not measured" in table
    two_sets = [FLOAT_CELL, _cell("a", [(0.825, good), (0.83, good)])]
    assert "One calibration set" not in markdown_table(degradation_rows(two_sets))


def test_rows_that_no_test_compares_are_not_told_apart():
    """Detection prompts give AP alone (no instance IoUs, and one calibration set: no mIoU range):
    nothing was tested, so no row may read as told apart from another."""
    runs = [{"model": "m", "recipe": "float", "bits": "float", "metrics": {"AP": 0.2}},
            {"model": "m", "recipe": "a", "bits": "W6A6", "metrics": {"AP": 0.171}},
            {"model": "m", "recipe": "b", "bits": "W6A6", "metrics": {"AP": 0.174}}]
    marks = {r["recipe"]: r.get("inside_spread_of") for r in degradation_rows(runs)}
    assert marks["a"] == ["b"] and marks["b"] == ["a"]


def test_bootstrap_interval_is_deterministic_for_a_seed():
    values = np.random.default_rng(1).uniform(size=200).tolist()
    first = bootstrap_interval(values, seed=7)
    assert first == bootstrap_interval(values, seed=7)
    assert first != bootstrap_interval(values, seed=8)
    low, high = first
    assert low < float(np.mean(values)) < high
    assert (high - low) == pytest.approx(2 * 1.96 * np.std(values, ddof=1) / np.sqrt(200), rel=0.15)


def _wide_rows():
    runs = [FLOAT_CELL, _cell("ptq4sam-wide-tau", [(0.6, [0.7, 0.5, 0.6, 0.6]), (0.64, [0.74, 0.54, 0.64, 0.64])])]
    return degradation_rows(runs, seed=3)


def test_a_table_wider_than_the_terminal_is_summarised_and_names_its_file():
    from ptqsam.evaluation.report import screen_table, summary_table, table_width

    rows = _wide_rows()
    full = markdown_table(rows)
    assert table_width(full) > 80
    assert screen_table(rows, "out/report.md", width=table_width(full)) == full  # it fits: the table itself
    screen = screen_table(rows, "out/report.md", width=80)
    assert screen.startswith(summary_table(rows)) and screen.splitlines()[-1].endswith(": out/report.md")
    assert table_width(screen) <= 80
    assert "| m | ptq4sam-wide-tau | W4A4 | 0.6200 | −0.1800 ± 0.0283 |" in screen  # the markdown's numbers
    assert "| −0.1800 ± 0.0283 |" in full
