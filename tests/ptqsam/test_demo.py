"""The demo's published results: README table regenerated from the copied report, the BIG note."""

from __future__ import annotations

import json

import pytest

from ptqsam.demo import REPORT, TABLE_END, TABLE_START, bimodal_note, publish, readme_block, readme_table
from ptqsam.errors import PtqsamError

ROWS = [{"model": "testbed", "recipe": "float", "bits": "float", "miou": 0.61},
        {"model": "testbed", "recipe": "minmax", "bits": "W4A4", "miou": 0.5, "delta_miou": -0.11}]


def _results(tmp_path):
    results = tmp_path / "results"
    (results / "plots").mkdir(parents=True)
    (results / "report.json").write_text(json.dumps({"settings": {}, "rows": ROWS}))
    (results / "plots" / "degradation.png").write_bytes(b"png")
    return results


def test_publish_copies_the_report_and_figures_and_regenerates_the_readme_table(tmp_path):
    results, root = _results(tmp_path), tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text(f"intro\n{TABLE_START}\n| stale |\n{TABLE_END}\noutro\n")
    written = publish(results, root, ["degradation.png"])
    assert (root / REPORT).read_text() == (results / "report.json").read_text()
    assert (root / "docs" / "figures" / "degradation.png").read_bytes() == b"png"
    text = (root / "README.md").read_text()
    assert readme_block(text) == readme_table(root / REPORT) and "stale" not in text
    assert text.startswith(f"intro\n{TABLE_START}\n| model |") and text.endswith(f"\n{TABLE_END}\noutro\n")
    assert root / "README.md" in written
    publish(results, root, ["degradation.png"])
    assert (root / "README.md").read_text() == text  # idempotent


def test_publish_refuses_a_readme_without_the_marks(tmp_path):
    results, root = _results(tmp_path), tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text("no table here\n")
    with pytest.raises(PtqsamError, match="no demo table"):
        publish(results, root, [])
    assert not (root / REPORT).exists()


def _record(flags):
    return {"recipe": "ptq4sam", "runs": [{"calibration": {"bimodal": {f"attn{i}": {"bimodal": flag}
                                                                       for i, flag in enumerate(flags)}}}]}


def test_bimodal_note_says_whether_the_fold_ever_triggered():
    assert "never triggered" in bimodal_note([_record([False, False, False])])
    assert "none of the 3" in bimodal_note([_record([False, False, False])])
    assert bimodal_note([_record([True, False])]).startswith("bimodal fold (BIG): 1 of 2")
    assert bimodal_note([{"recipe": "minmax", "runs": [{"calibration": {"bimodal": {}}}]}]) is None
