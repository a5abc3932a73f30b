"""Degradation reports: each quantized run against the float run on the same images and prompts,
with the significance of every number (:mod:`.significance`)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ptqsam.constants import FLOAT
from ptqsam.evaluation.significance import LEVEL, add_significance
from ptqsam.io import write_json_atomic, write_text_atomic

#: Metric keys of a run's ``metrics`` dict that get a delta column, in table order.
METRIC_KEYS = (
    "miou", "miou_small", "miou_medium", "miou_large", "agreement",
    "AP", "AP50", "AP75", "APs", "APm", "APl",
)
#: Settings of a run copied beside its numbers when present.
RUN_FIELDS = ("float_list", "quantized_sites", "checkpoint", "num_images", "num_prompts", "reference_drop_bug")
#: Size-bucket mIoU keys (the markdown table shows their Δ only).
BUCKETS = ("miou_small", "miou_medium", "miou_large")
#: Column titles of the markdown table.
TITLES = {"miou": "mIoU", "miou_small": "small", "miou_medium": "medium", "miou_large": "large",
          "agreement": "agreement with float masks"}
#: marks the recipe of a row calibrated with PTQ4SAM's QDrop bug reproduced on purpose
BUG_MARK = " †"
BUG_NOTE = ("† reproduces PTQ4SAM's reference-code QDrop bug on purpose: half of each layer input stays float at "
            "evaluation; not a quantized result.")


def degradation_rows(runs: Iterable[Mapping[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """One row per run with its metrics and ``delta_<metric>`` = run − float of the same model, and
    the significance fields of :func:`~ptqsam.evaluation.significance.add_significance` (bootstrap
    generator seeded by ``seed``).

    Each run is ``{"model", "recipe", "bits", "metrics": {...}}`` (a sweep cell record; with
    ``runs``, one entry per calibration set and ``metrics`` their mean); the float run has recipe
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
    add_significance(rows, runs, seed, METRIC_KEYS)
    return sorted(rows, key=_row_order)


def _row_order(row: Mapping[str, Any]) -> tuple:
    """Float first, then recipes by name, then bit-widths from wide to narrow."""
    bits = str(row["bits"]).upper()
    weight_bits = int(bits[1:].split("A")[0]) if bits.startswith("W") else 99
    return (row["model"], row["recipe"] != FLOAT, row["recipe"], -weight_bits, bits)


def _all_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every field of the rows: names, metrics with their delta and spread, intervals, settings."""
    cols = ["results", "model", "recipe", "bits"]
    for key in METRIC_KEYS:
        cols += [f"{prefix}{key}{suffix}" for prefix in ("", "delta_") for suffix in ("", "_std", "_min", "_max")
                 if prefix == "" or suffix == ""]
    cols += ["miou_ci_low", "miou_ci_high", "delta_miou_ci_low", "delta_miou_ci_high", "calib_sets",
             "inside_spread_of", *RUN_FIELDS]
    return [c for c in cols if any(c in r for r in rows)]


def _number(value: Any, signed: bool = False, digits: int = 4) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    if math.isnan(value):
        return "nan"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text.replace("-", "−")


def _with_std(row: Mapping[str, Any], key: str, signed: bool = False) -> str:
    """``mean ± std`` (the std of the metric over calibration sets, when there are several); a Δ
    (``signed``) of the float row itself is ``–``."""
    if signed and row["recipe"] == FLOAT:
        return "–"
    value = row.get(f"delta_{key}" if signed else key)
    std = row.get(f"{key}_std")
    return _number(value, signed) + (f" ± {_number(std)}" if isinstance(value, float) and std is not None else "")


def _delta_range(row: Mapping[str, Any]) -> str:
    """Δ mIoU's min … max over calibration sets; ``1 set`` where one set measured no spread."""
    if not all(isinstance(row.get(k), float) for k in ("miou_min", "miou_max", "delta_miou")):
        return "–"
    if row.get("calib_sets", 2) < 2:
        return "1 set"
    base = row["miou"] - row["delta_miou"]
    return f"{_number(row['miou_min'] - base, True)} … {_number(row['miou_max'] - base, True)}"


def _interval(row: Mapping[str, Any], key: str, signed: bool = False) -> str:
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    return "–" if low is None else f"{_number(low, signed, 3)} … {_number(high, signed, 3)}"


#: a table column: its title and the text of a row's cell
Column = tuple[str, Callable[[Mapping[str, Any]], str]]


def report_columns(rows: Sequence[Mapping[str, Any]]) -> list[Column]:
    """The columns of the report table of ``rows`` (the markdown and LaTeX tables show these cells)."""
    has = lambda key: any(key in r for r in rows)  # noqa: E731
    level = f"{LEVEL:.0%}"
    columns: list[Column] = [
        ("model", lambda r: str(r["model"])), ("recipe", _recipe), ("bits", lambda r: str(r["bits"]))]
    if has("float_list"):
        columns.append(("float list", lambda r: str(r.get("float_list", "–"))))
    if has("quantized_sites"):
        columns.append(("sites", lambda r: str(r.get("quantized_sites", "–"))))
    for key in [k for k in METRIC_KEYS if has(k)]:
        title = TITLES.get(key, key)
        if key not in BUCKETS:  # the size buckets show their Δ only
            columns.append((title, lambda r, key=key: _with_std(r, key)))
        if key == "miou" and has("miou_ci_low"):
            columns.append((f"mIoU {level} CI", lambda r: _interval(r, "miou")))
        if has(f"delta_{key}"):
            columns.append((f"Δ {title}", lambda r, key=key: _with_std(r, key, signed=True)))
        if key == "miou" and has("miou_min"):
            columns.append(("Δ mIoU min … max", _delta_range))
        if key == "miou" and has("delta_miou_ci_low"):
            columns.append((f"Δ mIoU {level} CI", lambda r: _interval(r, "delta_miou", signed=True)))
    if has("inside_spread_of"):
        columns.append(("not told apart from", lambda r: _not_told_apart(r, rows)))
    return columns


def _not_told_apart(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """The recipes a row is not told apart from; ``none`` when it is told apart from every other
    recipe at its model and bits, ``–`` when there is no other to compare with (or it is float)."""
    if row["recipe"] == FLOAT:
        return "–"
    if row.get("inside_spread_of"):
        return ", ".join(row["inside_spread_of"])
    others = [r for r in rows if r is not row and r["recipe"] != FLOAT and r["model"] == row["model"]
              and r["bits"] == row["bits"]]
    return "none" if others else "–"


def markdown_table(rows: Sequence[Mapping[str, Any]], leading: Sequence[Column] = ()) -> str:
    """A readable markdown table: metrics as ``mean ± std`` over calibration sets (where there are
    several), Δ mIoU's min … max, bootstrap intervals, and for each quantized row the recipes at the
    same bit-width whose mIoU it is not told apart from (:mod:`.significance`); a row reproducing
    PTQ4SAM's drop bug is marked (:data:`BUG_MARK`, :data:`BUG_NOTE`). ``leading``: columns put
    first (a comparison's results folder)."""
    return _markdown([*leading, *report_columns(rows)], rows)


def _markdown(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| " + " | ".join(title for title, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows]
    if any(row.get("reference_drop_bug") for row in rows):
        lines += ["", BUG_NOTE]
    if one_set_note(columns, rows):
        lines += ["", ONE_SET_NOTE]
    return "\n".join(lines) + "\n"


#: below a table with rows calibrated on one calibration set
ONE_SET_NOTE = ("One calibration set per cell: the spread over calibration sets is not measured, and 'not told "
                "apart' rests on the instance bootstrap alone, which does not see the calibration draw "
                "(calib_sets: 3 or more measures it).")


def one_set_note(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a table of ``columns`` needs :data:`ONE_SET_NOTE`: it says what is told apart, and a
    row's cell was calibrated on one calibration set."""
    return any(title == "not told apart from" for title, _ in columns) and any(r.get("calib_sets") == 1 for r in rows)


def _recipe(row: Mapping[str, Any]) -> str:
    return str(row["recipe"]) + (BUG_MARK if row.get("reference_drop_bug") else "")


#: the columns of :func:`summary_table`: names, mIoU, Δ mIoU ± std and agreement, at most ~80 characters wide
SUMMARY_COLUMNS: tuple[Column, ...] = (
    ("model", lambda r: str(r["model"])), ("recipe", _recipe), ("bits", lambda r: str(r["bits"])),
    ("mIoU", lambda r: _number(r.get("miou"))), ("Δ mIoU", lambda r: _with_std(r, "miou", signed=True)),
    ("agreement", lambda r: _number(r.get("agreement"), digits=3)))


def summary_table(rows: Sequence[Mapping[str, Any]], leading: Sequence[Column] = ()) -> str:
    """A narrow markdown table of ``rows`` for a terminal: mIoU, Δ mIoU (± std over calibration sets)
    and agreement with the float masks; the report's files hold every column."""
    return _markdown([*leading, *SUMMARY_COLUMNS], rows)


def table_width(table: str) -> int:
    """The width in characters of a markdown table's widest row (notes below it wrap on their own)."""
    return max((len(line) for line in table.splitlines() if line.startswith("|")), default=0)


def screen_table(rows: Sequence[Mapping[str, Any]], full_table: str | Path, width: int = 80,
                 leading: Sequence[Column] = ()) -> str:
    """What a terminal ``width`` columns wide shows of a report: its markdown table when it fits,
    else :func:`summary_table` and a line naming ``full_table``, the file with every column."""
    table = markdown_table(rows, leading)
    if table_width(table) <= width:
        return table
    note = f"summary; the full table ({table_width(table)} characters wide): {full_table}\n"
    return summary_table(rows, leading) + note


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_all_columns(rows), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ";".join(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows])
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
