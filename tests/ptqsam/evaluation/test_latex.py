"""The LaTeX (booktabs) export: the markdown table's numbers, escaped."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ptqsam.evaluation.latex import latex_table, latex_text
from ptqsam.evaluation.report import BUG_MARK, markdown_table

#: the demo's published report: real rows with spreads, intervals and "not told apart from"
DEMO = Path(__file__).parents[3] / "docs" / "demo" / "report.json"
NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def _markdown_numbers(table: str) -> list[list[str]]:
    rows = [line for line in table.splitlines() if line.startswith("|")][2:]
    return [NUMBER.findall(line.replace("−", "-")) for line in rows]


def _latex_numbers(table: str) -> list[list[str]]:
    body = table.split(r"\midrule")[1].split(r"\bottomrule")[0]
    return [NUMBER.findall(line.replace("$-$", "-")) for line in body.strip().splitlines()]


def test_the_latex_table_has_the_markdown_numbers_and_booktabs_rules():
    rows = json.loads(DEMO.read_text())["rows"]
    latex = latex_table(rows)
    assert _latex_numbers(latex) == _markdown_numbers(markdown_table(rows))
    assert len(_latex_numbers(latex)) == len(rows) and all(_latex_numbers(latex))
    lines = latex.splitlines()
    assert lines[0].startswith(r"\begin{tabular}{lll") and lines[-1] == r"\end{tabular}"
    assert [line for line in lines if line in (r"\toprule", r"\midrule", r"\bottomrule")] == [
        r"\toprule", r"\midrule", r"\bottomrule"]
    header = lines[2].split(" & ")
    assert header[:3] == ["model", "recipe", "bits"] and r"$\Delta$ mIoU" in header and r"mIoU 95\% CI" in header
    assert all(line.endswith(r"\\") for line in lines[2:-2] if line != r"\midrule")
    assert all(line.count(" & ") == len(header) - 1 for line in lines[4:-2])
    assert "−" not in latex and "±" not in latex and "…" not in latex  # no raw unicode a LaTeX build chokes on


@pytest.mark.parametrize("text, latex", [
    ("ptq4sam_l", r"ptq4sam\_l"), ("95% CI", r"95\% CI"), ("a & b", r"a \& b"), ("#1 $x$", r"\#1 \$x\$"),
    ("{a}~^", r"\{a\}\textasciitilde{}\textasciicircum{}"), ("C:\\x", r"C:\textbackslash{}x"),
    ("−0.0019 ± 0.0007", r"$-$0.0019 $\pm$ 0.0007"), ("0.1 … 0.2", r"0.1 \ldots{} 0.2"), ("–", "--"),
    ("a<b>c|d", r"a\textless{}b\textgreater{}c\textbar{}d"),  # the default encoding prints ¡ ¿ —
])
def test_latex_text_escapes(text, latex):
    assert latex_text(text) == latex


def test_recipe_names_are_escaped_and_the_bug_note_kept():
    rows = [{"model": "sam_b", "recipe": "float", "bits": "float", "miou": 0.8},
            {"model": "sam_b", "recipe": "my_recipe", "bits": "W4A4", "miou": 0.5, "delta_miou": -0.3,
             "reference_drop_bug": True}]
    latex = latex_table(rows)
    assert r"sam\_b & my\_recipe" + latex_text(BUG_MARK) + r" & W4A4 & 0.5000 & $-$0.3000 \\" in latex
    assert r"\multicolumn{5}{l}{\footnotesize $^\dagger$ reproduces" in latex


def test_the_one_set_note_is_below_the_latex_table_too():
    from ptqsam.evaluation.report import ONE_SET_NOTE, degradation_rows

    records = [{"model": "m", "recipe": "float", "bits": "float", "metrics": {"miou": 0.8},
                "instance_ious": [[0, 0, 0.8], [0, 1, 0.7]]},
               {"model": "m", "recipe": "a", "bits": "W4A4", "metrics": {"miou": 0.7},
                "runs": [{"calib_seed": 0, "metrics": {"miou": 0.7}, "instance_ious": [[0, 0, 0.7], [0, 1, 0.7]]}]}]
    assert latex_text(ONE_SET_NOTE) in latex_table(degradation_rows(records))
