"""The README's Python examples run as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples_and_install_and_test_commands():
    text = README.read_text()
    commands = re.findall(r"^\$ (.+)$", text, flags=re.M)
    assert commands[:2] == ['pip install -e ".[test]" && ptqsam demo', "pytest -q -n 2 --dist loadfile"]
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = BLOCKS[index].replace("/tmp/synthetic", str(tmp_path / "synthetic"))
    exec(compile(code, f"README block {index}", "exec"), {})


def test_demo_tables_are_generated_from_the_committed_results():
    """A change that alters the demo's numbers must regenerate both the file and the table
    (`ptqsam demo --publish .`, see "What the demo shows")."""
    from ptqsam.demo import REPORTS, readme_block, readme_table

    root = README.parent
    published = sorted((root / REPORTS).glob("*.json"))
    assert [p.stem for p in published] == ["report", "wide-tau"]
    for path in published:
        assert readme_block(README.read_text(), path.stem) == readme_table(path), path.name
        settings = json.loads(path.read_text())["settings"]
        assert settings["calib_sets"] == 3 and settings["float_sites"] == "ptq4sam"
