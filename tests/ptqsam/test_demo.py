"""The demo's published results: README table regenerated from the copied report, the BIG note."""

from __future__ import annotations

import json

import pytest

from ptqsam.demo import bimodal_note, publish, readme_block, readme_table, report_path, table_marks
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
    (start, end), (other_start, other_end) = table_marks("report"), table_marks("other")
    (root / "README.md").write_text(f"intro\n{start}\n| stale |\n{end}\nmid\n{other_start}\n| old |\n{other_end}\n")
    written = publish(results, root, ["degradation.png"])
    assert (root / report_path("report")).read_text() == (results / "report.json").read_text()
    assert (root / "docs" / "figures" / "degradation.png").read_bytes() == b"png"
    text = (root / "README.md").read_text()
    assert readme_block(text) == readme_table(root / report_path("report")) and "stale" not in text
    assert text.startswith(f"intro\n{start}\n| model |") and f"\n{end}\nmid\n{other_start}\n| old |\n" in text
    assert root / "README.md" in written
    publish(results, root, ["degradation.png"])
    assert (root / "README.md").read_text() == text  # idempotent
    publish(results, root, [], name="other")  # a second published report, its own table
    assert readme_block((root / "README.md").read_text(), "other") == readme_table(root / report_path("other"))
    assert readme_block((root / "README.md").read_text()) == readme_block(text)


def test_publish_refuses_a_readme_without_the_marks(tmp_path):
    results, root = _results(tmp_path), tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text("no table here\n")
    with pytest.raises(PtqsamError, match="no table"):
        publish(results, root, [])
    assert not (root / report_path("report")).exists()


def _record(flags):
    return {"recipe": "ptq4sam", "runs": [{"calibration": {"bimodal": {f"attn{i}": {"bimodal": flag}
                                                                       for i, flag in enumerate(flags)}}}]}


def test_bimodal_note_says_whether_the_fold_ever_triggered():
    assert "never triggered" in bimodal_note([_record([False, False, False])])
    assert "none of the 3" in bimodal_note([_record([False, False, False])])
    assert bimodal_note([_record([True, False])]).startswith("bimodal fold (BIG): 1 of 2")
    assert bimodal_note([{"recipe": "minmax", "runs": [{"calibration": {"bimodal": {}}}]}]) is None
