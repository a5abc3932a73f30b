"""The demo's results beyond the sweep: what its bimodal fold did, and its published copy (the
committed ``docs/demo/report.json``, the figures in ``docs/figures/`` and the README table generated
from that file, so published numbers cannot go stale)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from ptqsam.errors import PtqsamError
from ptqsam.evaluation.report import markdown_table
from ptqsam.io import write_text_atomic

#: the committed results of the demo, relative to the repository root
REPORT = Path("docs/demo/report.json")
#: where the demo's figures are published, relative to the repository root
FIGURES = Path("docs/figures")
#: the marks around the generated table in the README
TABLE_START = "<!-- demo table: generated from docs/demo/report.json by `ptqsam demo --publish .`; do not edit -->"
TABLE_END = "<!-- end of demo table -->"


def bimodal_note(records: Iterable[Mapping[str, Any]]) -> str | None:
    """One line saying how often the bimodal fold (BIG) found bimodal keys in the calibrations of
    the cell records, or None when no recipe had the fold."""
    checks = [entry["bimodal"] for record in records for run in record.get("runs", [])
              for entry in run["calibration"].get("bimodal", {}).values()]
    if not checks:
        return None
    found = sum(checks)
    if found:
        return f"bimodal fold (BIG): {found} of {len(checks)} checked token→image key projections were bimodal and folded"
    return (f"bimodal fold (BIG): none of the {len(checks)} checked token→image key projections was bimodal, so the "
            "fold never triggered: the testbed's keys are unimodal and BIG is not exercised by this demo")


def cell_records(results: str | Path) -> list[dict[str, Any]]:
    """The cell files of a sweep's results folder."""
    return [json.loads(path.read_text()) for path in sorted(Path(results).glob("cells/*.json"))]


def readme_table(report_path: str | Path) -> str:
    """The README's demo table: the markdown table of ``report.json``'s rows."""
    return markdown_table(json.loads(Path(report_path).read_text())["rows"])


def readme_block(readme_text: str) -> str:
    """The generated table in the README text (between :data:`TABLE_START` and :data:`TABLE_END`)."""
    start, end = readme_text.find(TABLE_START), readme_text.find(TABLE_END)
    if start < 0 or end < start:
        raise PtqsamError(f"the README has no demo table between {TABLE_START!r} and {TABLE_END!r}")
    return readme_text[start + len(TABLE_START):end].strip("\n") + "\n"


def publish(results: str | Path, root: str | Path, figures: Iterable[str]) -> list[Path]:
    """Copy a demo's ``report.json`` to ``root/docs/demo/``, its ``figures`` (file names under
    ``results/plots``) to ``root/docs/figures/``, and regenerate the README's table from the copy."""
    results, root = Path(results), Path(root)
    readme = root / "README.md"
    text = readme.read_text()
    readme_block(text)  # fail before copying anything when the marks are missing
    written = []
    for source, target in [(results / "report.json", root / REPORT),
                           *[(results / "plots" / name, root / FIGURES / name) for name in figures]]:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written.append(target)
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    write_text_atomic(readme, text[:start] + "\n" + readme_table(root / REPORT) + text[end:])
    return [*written, readme]
