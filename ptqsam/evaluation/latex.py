"""Paper export: a report's table as LaTeX (booktabs), the same cells as the markdown table.

The columns and every cell's text come from :func:`~ptqsam.evaluation.report.report_columns`, so
the numbers and Δ's are the markdown's, character for character up to LaTeX escaping: ``−``
becomes ``$-$``, ``±`` ``$\\pm$``, ``…`` ``\\ldots{}``, ``Δ`` ``$\\Delta$``, ``†`` ``$^\\dagger$``, a missing
value's ``–`` ``--``, and LaTeX's special characters (``_ % & # $ { } ~ ^ \\``, and ``< > |``,
which the default font encoding prints as other glyphs) are escaped.
The table needs ``\\usepackage{booktabs}``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ptqsam.evaluation.report import BUG_NOTE, ONE_SET_NOTE, Column, one_set_note, report_columns

#: each character LaTeX would misread, and what is written instead: its special characters escaped,
#: the report's non-ASCII symbols in LaTeX (one pass over the text: no escape is escaped again)
LATEX_CHARACTERS = str.maketrans({
    "\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "−": "$-$", "±": r"$\pm$", "…": r"\ldots{}", "Δ": r"$\Delta$", "†": r"$^\dagger$", "–": "--", "→": r"$\to$"})
#: columns of text (left-aligned); the others hold numbers (right-aligned)
TEXT_COLUMNS = ("results", "model", "recipe", "bits", "float list", "not told apart from")


def latex_text(text: str) -> str:
    """``text`` as LaTeX: special characters escaped, the report's symbols in LaTeX."""
    return text.translate(LATEX_CHARACTERS)


def latex_table(rows: Sequence[Mapping[str, Any]], leading: Sequence[Column] = ()) -> str:
    """A booktabs ``tabular`` of the report rows: the markdown table's columns and cells
    (:func:`~ptqsam.evaluation.report.markdown_table`, ``leading`` columns first), with its † note
    below the rule when a row has one."""
    columns = [*leading, *report_columns(rows)]
    spec = "".join("l" if title in TEXT_COLUMNS else "r" for title, _ in columns)
    line = lambda cells: " & ".join(latex_text(cell) for cell in cells) + r" \\"  # noqa: E731
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", line(title for title, _ in columns), r"\midrule"]
    lines += [line(cell(row) for _, cell in columns) for row in rows]
    lines.append(r"\bottomrule")
    notes = [note for note, applies in ((BUG_NOTE, any(row.get("reference_drop_bug") for row in rows)),
                                        (ONE_SET_NOTE, one_set_note(columns, rows))) if applies]
    for note in notes:
        lines.append(rf"\multicolumn{{{len(columns)}}}{{l}}{{\footnotesize {latex_text(note)}}} \\")
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"
