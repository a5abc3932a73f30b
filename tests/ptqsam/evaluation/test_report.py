"""Degradation rows and their JSON / CSV / markdown forms."""

from __future__ import annotations

import csv
import json

from ptqsam.evaluation.report import degradation_rows, markdown_table, write_report

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
    assert "| m | minmax | W4A4 | 0.5000 | -0.3000 |" in text
    assert paths["markdown"].read_text() == text
    assert not list(tmp_path.glob(".*tmp"))


def test_run_settings_travel_with_the_numbers():
    runs = [dict(RUNS[1], checkpoint="abc123", num_images=4, num_prompts=17)]
    row = degradation_rows(runs)[0]
    assert (row["checkpoint"], row["num_images"], row["num_prompts"]) == ("abc123", 4, 17)
    from ptqsam.evaluation.report import csv_text

    header = csv_text([row]).splitlines()[0].split(",")
    assert header[-3:] == ["checkpoint", "num_images", "num_prompts"]
