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
    assert commands[:2] == ['pip install -e ".[test]" && ptqsam demo', "pytest -q"]
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = BLOCKS[index].replace("/tmp/synthetic", str(tmp_path / "synthetic"))
    exec(compile(code, f"README block {index}", "exec"), {})


def test_demo_table_is_generated_from_the_committed_results():
    """A change that alters the demo's numbers must regenerate both (`ptqsam demo --publish .`)."""
    from ptqsam.demo import REPORT, readme_block, readme_table

    root = README.parent
    assert readme_block(README.read_text()) == readme_table(root / REPORT)
    settings = json.loads((root / REPORT).read_text())["settings"]
    assert settings["calib_sets"] == 3 and settings["float_sites"] == "ptq4sam"
