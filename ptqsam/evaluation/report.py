"""Degradation reports: each quantized run against the float run on the same images and prompts."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ptqsam.constants import FLOAT
from ptqsam.io import write_json_atomic, write_text_atomic

#: Metric keys of a run's ``metrics`` dict that get a delta column, in table order.
METRIC_KEYS = (
    "miou", "miou_small", "miou_medium", "miou_large", "agreement",
    "AP", "AP50", "AP75", "APs", "APm", "APl",
)
#: Settings of a run copied beside its numbers when present.
RUN_FIELDS = ("checkpoint", "num_images", "num_prompts", "reference_drop_bug")
#: marks the recipe of a row calibrated with PTQ4SAM's QDrop bug reproduced on purpose
BUG_MARK = " †"
BUG_NOTE = ("† reproduces PTQ4SAM's reference-code QDrop bug on purpose: half of each layer input stays float at "
            "evaluation; not a quantized result.")


def degradation_rows(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per run with its metrics and ``delta_<metric>`` = run − float of the same model.

    Each run is ``{"model", "recipe", "bits", "metrics": {...}}``; the float run has recipe
    ``"float"``. Rows of a model without a float run get no deltas.
    """
    runs = list(runs)
    floats = {r["model"]: r["metrics"] for r in runs if r["recipe"] == FLOAT}
    rows = []
    for run in runs:
        row: dict[str, Any] = {"model": run["model"], "recipe": run["recipe"], "bits": run["bits"]}
        row.update({key: run[key] for key in RUN_FIELDS if key in run})
        base = floats.get(run["model"], {})
        for key in METRIC_KEYS:
            value = run["metrics"].get(key)
            if value is None:
                continue
            row[key] = value
            if base.get(key) is not None:
                row[f"delta_{key}"] = value - base[key]
        rows.append(row)
    return sorted(rows, key=_row_order)


def _row_order(row: Mapping[str, Any]) -> tuple:
    """Float first, then recipes by name, then bit-widths from wide to narrow."""
    bits = str(row["bits"]).upper()
    weight_bits = int(bits[1:].split("A")[0]) if bits.startswith("W") else 99
    return (row["model"], row["recipe"] != FLOAT, row["recipe"], -weight_bits, bits)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols = ["model", "recipe", "bits"]
    for key in METRIC_KEYS:
        cols += [name for name in (key, f"delta_{key}") if any(name in r for r in rows)]
    return cols


def _all_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return _columns(rows) + [key for key in RUN_FIELDS if any(key in r for r in rows)]


def _cell(column: str, value: Any) -> str:
    if not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "nan"
    return f"{value:+.4f}" if column.startswith("delta_") else f"{value:.4f}"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A readable markdown table; deltas are signed."""
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(c, _marked(row, c)) for c in cols) + " |" for row in rows]
    if any(row.get("reference_drop_bug") for row in rows):
        lines += ["", BUG_NOTE]
    return "\n".join(lines) + "\n"


def _marked(row: Mapping[str, Any], column: str) -> Any:
    value = row.get(column, "")
    return f"{value}{BUG_MARK}" if column == "recipe" and row.get("reference_drop_bug") else value


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_all_columns(rows), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_report(
    rows: Sequence[Mapping[str, Any]], out_dir: str | Path, settings: Mapping[str, Any]
) -> dict[str, Path]:
    """``report.json`` (settings + rows), ``report.csv`` and ``report.md``, each written atomically."""
    out_dir = Path(out_dir)
    return {
        "json": write_json_atomic(out_dir / "report.json", {"settings": dict(settings), "rows": list(rows)}),
        "csv": write_text_atomic(out_dir / "report.csv", csv_text(rows)),
        "markdown": write_text_atomic(out_dir / "report.md", markdown_table(rows)),
    }
