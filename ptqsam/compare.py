"""Several results folders side by side: one table, one figure, and the settings that differ.

A results folder is a sweep's (its ``report.json``: rows and settings) or a folder of ``evaluate
--out`` records (:mod:`ptqsam.evaluation.records`; their report rows are made here, each quantized
record's Δ's against the folder's float record). Every row keeps its numbers and its Δ's against the
float run of its own folder; a ``results`` field names the folder. Significance marks ("not told
apart from") compare recipes within a folder only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ptqsam.constants import FLOAT
from ptqsam.errors import PtqsamError
from ptqsam.evaluation.records import check_reference
from ptqsam.evaluation.report import Column, csv_text, degradation_rows, markdown_table
from ptqsam.io import write_json_atomic, write_text_atomic

#: settings never listed as differences: where results went, and hashes that change with anything else
IGNORED = ("out", "cell_fingerprints")
#: the column naming each row's results folder
RESULTS_COLUMN: tuple[Column, ...] = (("results", lambda row: str(row["results"])),)
#: the longest text a difference's value is shown with
SHOWN = 60


@dataclass(frozen=True)
class Results:
    """One results folder: its ``label`` in tables and figures, its report rows and its settings
    (flattened to dotted keys)."""

    label: str
    path: str
    rows: list[dict[str, Any]]
    settings: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Comparison:
    """The results compared, their rows (each with its folder's ``results`` label) and the settings
    that differ: ``key -> {label: value}`` (a setting a folder lacks is ``None`` there)."""

    results: list[Results]
    rows: list[dict[str, Any]]
    differences: dict[str, dict[str, Any]]


def compare_results(paths: Sequence[str | Path]) -> Comparison:
    """The comparison of the results folders ``paths`` (two or more)."""
    if len(paths) < 2:
        raise PtqsamError(f"compare needs two results folders or more, got {len(paths)}")
    labels = _labels([Path(p) for p in paths])
    results = [load_results(path, label) for path, label in zip(paths, labels)]
    rows = [{"results": r.label, **row} for r in results for row in r.rows]
    return Comparison(results, rows, differences(results))


def load_results(path: str | Path, label: str) -> Results:
    """A sweep's results folder (``report.json``) or a folder of ``evaluate --out`` records."""
    folder = Path(path)
    if not folder.is_dir():
        raise PtqsamError(f"results folder {folder} not found")
    report = folder / "report.json"
    if report.is_file():
        data = _json(report)
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise PtqsamError(f"{report} has no 'rows' list: not a sweep's report")
        return Results(label, str(folder), data["rows"], flatten(data.get("settings", {})))
    named = {path: data for path, data in ((path, _json(path)) for path in sorted(folder.glob("*.json")))
             if isinstance(data, dict) and {"recipe", "metrics", "fingerprint"} <= set(data)}
    if not named:
        raise PtqsamError(f"{folder} holds neither a report.json (a sweep) nor `evaluate --out` records")
    _check_baselines(named)
    records = list(named.values())
    seed = records[0]["fingerprint"]["settings"].get("evaluation", {}).get("seed", 0)
    shared = _shared([flatten(r["fingerprint"]["settings"]) for r in records])
    return Results(label, str(folder), degradation_rows(records, seed), shared)


def _check_baselines(records: Mapping[Path, Mapping[str, Any]]) -> None:
    """PtqsamError unless each model has at most one float record in the folder and every other
    record of that model was evaluated as the float one was (same checkpoint, images, prompts and
    options): the Δ's of a record are taken against it."""
    floats: dict[str, Path] = {}
    for path, record in records.items():
        if record["recipe"] == FLOAT:
            if record["model"] in floats:
                raise PtqsamError(f"{floats[record['model']]} and {path} are both float runs of {record['model']}: "
                                  "the Δ's would be taken against either; keep one per folder")
            floats[record["model"]] = path
    for path, record in records.items():
        base = floats.get(record["model"])
        if base is not None and base != path:
            check_reference(records[base], record["model"], record.get("checkpoint"),
                            record["fingerprint"].get("settings", {}).get("evaluation", {}),
                            f"the float run {base}, against which {path} is compared,")


def differences(results: Sequence[Results]) -> dict[str, dict[str, Any]]:
    """The settings whose values are not the same in every results folder."""
    keys = sorted({key for r in results for key in r.settings if key.split(".")[0] not in IGNORED})
    return {key: {r.label: r.settings.get(key) for r in results} for key in keys
            if len({json.dumps(r.settings.get(key), sort_keys=True) for r in results}) > 1}


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"a.b": value}`` (lists are values)."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences_table(comparison: Comparison) -> str:
    """The settings that differ as a markdown table (one column per results folder)."""
    labels = [r.label for r in comparison.results]
    if not comparison.differences:
        return "No setting differs between " + ", ".join(labels) + ".\n"
    lines = ["| setting | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    lines += [f"| {key} | " + " | ".join(_shown(values[label]) for label in labels) + " |"
              for key, values in comparison.differences.items()]
    return "\n".join(lines) + "\n"


def differences_text(comparison: Comparison) -> str:
    """The settings that differ as a list for a terminal (a line per setting wraps better than a
    table row)."""
    if not comparison.differences:
        return differences_table(comparison)
    return "settings that differ:\n" + "".join(
        f"- {key}: " + "; ".join(f"{label} {_shown(value)}" for label, value in values.items()) + "\n"
        for key, values in comparison.differences.items())


def write_comparison(comparison: Comparison, out: str | Path) -> dict[str, Path]:
    """``compare.md`` (the settings that differ, then the table), ``compare.csv``, ``compare.json``
    (folders, settings that differ, rows) and ``compare.png``/``.pdf`` (the degradation figure, one
    line style per folder), each written atomically."""
    from ptqsam.plots import plot_degradation

    out = Path(out)
    markdown = (f"Settings that differ:\n\n{differences_table(comparison)}\n"
                f"{markdown_table(comparison.rows, RESULTS_COLUMN)}")
    data = {"results": [{"label": r.label, "path": r.path} for r in comparison.results],
            "differences": comparison.differences, "rows": comparison.rows}
    figure = plot_degradation(comparison.rows, out / "compare")
    return {"markdown": write_text_atomic(out / "compare.md", markdown),
            "csv": write_text_atomic(out / "compare.csv", csv_text(comparison.rows)),
            "json": write_json_atomic(out / "compare.json", data), "png": figure.png, "pdf": figure.pdf}


def _labels(paths: Sequence[Path]) -> list[str]:
    """Each folder's name, or its path as given where two folders share a name."""
    names = [path.resolve().name for path in paths]
    labels = [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths)]
    if len(set(labels)) < len(labels):
        raise PtqsamError(f"results folders given twice: {sorted({x for x in labels if labels.count(x) > 1})}")
    return labels


def _shared(settings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The settings on which every record of a folder that has them agrees (the recipe, bits and
    state differ per record; the calibration settings of the states, which the float run lacks,
    are kept where the quantized records agree)."""
    keys = dict.fromkeys(key for record in settings for key in record)
    return {key: values[0] for key in keys
            for values in [[record[key] for record in settings if key in record]] if all(v == values[0] for v in values)}


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PtqsamError(f"cannot read {path}: {error}") from None


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    text = text.replace("|", "\\|")
    return text if len(text) <= SHOWN else text[:SHOWN - 1] + "…"
