"""The demo's results beyond the sweep: what its bimodal fold did, and its published copy (a
committed ``docs/demo/<name>.json``, the figures in ``docs/figures/`` and the README table generated
from that file, so published numbers cannot go stale)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from ptqsam.errors import PtqsamError
from ptqsam.evaluation.report import markdown_table
from ptqsam.io import write_text_atomic

#: where published reports go, relative to the repository root
REPORTS = Path("docs/demo")
#: the name of the demo's own published report (``docs/demo/report.json``)
DEMO_REPORT = "report"
#: where the demo's figures are published, relative to the repository root
FIGURES = Path("docs/figures")


def report_path(name: str) -> Path:
    """The published report ``name``, relative to the repository root."""
    return REPORTS / f"{name}.json"


def table_marks(name: str) -> tuple[str, str]:
    """The README comments around the table generated from the published report ``name``."""
    return (f"<!-- table generated from {report_path(name).as_posix()} by `ptqsam demo --publish`; do not edit -->",
            f"<!-- end of the table of {report_path(name).as_posix()} -->")


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


def readme_table(report: str | Path) -> str:
    """The README table of a published report: the markdown table of its rows."""
    return markdown_table(json.loads(Path(report).read_text())["rows"])


def readme_block(readme_text: str, name: str = DEMO_REPORT) -> str:
    """The table generated from the published report ``name`` in the README text."""
    start, end = table_marks(name)
    first, last = readme_text.find(start), readme_text.find(end)
    if first < 0 or last < first:
        raise PtqsamError(f"the README has no table between {start!r} and {end!r}")
    return readme_text[first + len(start):last].strip("\n") + "\n"


def publish(results: str | Path, root: str | Path, figures: Iterable[str], name: str = DEMO_REPORT) -> list[Path]:
    """Copy a demo's ``report.json`` to ``root/docs/demo/<name>.json`` and its ``figures`` (file
    names under ``results/plots``) to ``root/docs/figures/``, then regenerate the README's table of
    that report from the copy."""
    results, root = Path(results), Path(root)
    readme = root / "README.md"
    text = readme.read_text()
    readme_block(text, name)  # fail before copying anything when the marks are missing
    written = []
    for source, target in [(results / "report.json", root / report_path(name)),
                           *[(results / "plots" / figure, root / FIGURES / figure) for figure in figures]]:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written.append(target)
    start, end = table_marks(name)
    first, last = text.index(start) + len(start), text.index(end)
    write_text_atomic(readme, text[:first] + "\n" + readme_table(root / report_path(name)) + text[last:])
    return [*written, readme]
