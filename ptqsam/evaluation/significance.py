"""How much a comparison's numbers can be trusted: the spread of a cell over its calibration sets,
bootstrap intervals over the evaluated instances, and which differences between recipes lie inside
them.

- Spread: a quantized cell calibrated on k calibration sets keeps every run; each metric gets its
  mean, sample standard deviation (k ≥ 2) and min/max over the runs.
- Bootstrap: the evaluated instances are resampled with replacement (``BOOTSTRAP_SAMPLES`` times,
  generator seeded by the sweep's seed, so the interval is deterministic); the 95 % percentile
  interval of the mean IoU. A cell's per-instance IoU is its mean over the calibration sets, so the
  interval is the one of the cell's mean mIoU. Δ mIoU gets the paired interval (the same resampled
  instances for the cell and the float run).
- Inside the spread: two recipes at the same model and bit-width are not told apart when their
  mIoU ranges over the calibration sets overlap, or when the paired bootstrap interval of their
  per-instance IoU difference contains 0. Either source of noise then explains the difference.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ptqsam.constants import FLOAT

BOOTSTRAP_SAMPLES = 2000
LEVEL = 0.95
#: a record's key for its calibration runs (:mod:`ptqsam.sweep`)
RUNS = "runs"


def spread(values: Sequence[Any]) -> dict[str, float] | None:
    """``mean``, ``min``, ``max`` and (two values or more) the sample ``std`` (ddof 1) of
    ``values``; None when one is not a finite number."""
    if not values or not all(_is_number(v) for v in values):
        return None
    array = np.asarray(values, dtype=np.float64)
    stats = {"mean": float(array.mean()), "min": float(array.min()), "max": float(array.max())}
    if len(array) > 1:
        stats["std"] = float(array.std(ddof=1))
    return stats


def mean_metrics(metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The runs' metrics merged: a value all runs share is kept (counts), numbers are averaged,
    anything else (a bucket one run lacks) is None."""
    merged: dict[str, Any] = {}
    for key in metrics[0]:
        values = [m.get(key) for m in metrics]
        if all(v == values[0] for v in values):
            merged[key] = values[0]
        else:
            stats = spread(values)
            merged[key] = None if stats is None else stats["mean"]
    return merged


def bootstrap_interval(values: Sequence[float], seed: int, samples: int = BOOTSTRAP_SAMPLES,
                       level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (instances resampled with replacement;
    the same ``seed`` and length resample the same instances, so two calls pair up)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or not len(array):
        raise ValueError(f"bootstrap needs a non-empty 1-D sequence, got shape {array.shape}")
    picks = np.random.default_rng(seed).integers(0, len(array), size=(samples, len(array)))
    means = array[picks].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def instance_ious(record: Mapping[str, Any]) -> dict[tuple[int, int], float]:
    """``(image_id, annotation_id) -> IoU`` of a cell record; with calibration runs, the mean over
    them (the instance's IoU in the cell's mean mIoU). Empty when the record kept none."""
    tables = [run.get("instance_ious", []) for run in record.get(RUNS, [record])]
    if not tables or not all(tables):
        return {}
    sums: dict[tuple[int, int], float] = {}
    for table in tables:
        for image_id, annotation_id, iou in table:
            sums[(image_id, annotation_id)] = sums.get((image_id, annotation_id), 0.0) + iou
    return {key: total / len(tables) for key, total in sums.items()}


def add_significance(rows: Sequence[dict[str, Any]], records: Sequence[Mapping[str, Any]], seed: int,
                     keys: Sequence[str]) -> None:
    """Add to each row (in place; ``rows[i]`` from ``records[i]``): the spread fields of the metrics
    ``keys`` (``<metric>_std``/``_min``/``_max``, ``calib_sets``), ``miou_ci_low``/``_high``,
    ``delta_miou_ci_low``/``_high`` (paired with the float run of the model) and
    ``inside_spread_of`` (the recipes at the same model and bits this row is not told apart from)."""
    ious = [instance_ious(r) for r in records]
    floats = {r["model"]: i for i, r in enumerate(records) if r["recipe"] == FLOAT}
    for row, record, table in zip(rows, records, ious):
        row.update(_spread_fields(record, keys))
        if table:
            row["miou_ci_low"], row["miou_ci_high"] = bootstrap_interval(list(table.values()), seed)
        base = ious[floats[record["model"]]] if record["model"] in floats else {}
        if table and base and record["recipe"] != FLOAT:
            row["delta_miou_ci_low"], row["delta_miou_ci_high"] = _paired(table, base, seed)
    for i, row in enumerate(rows):
        if row["recipe"] != FLOAT:
            row["inside_spread_of"] = [other["recipe"] for j, other in enumerate(rows)
                                       if j != i and other["recipe"] != FLOAT and other["model"] == row["model"]
                                       and other["bits"] == row["bits"]
                                       and _inside_spread(row, other, ious[i], ious[j], seed)]


def _spread_fields(record: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    runs = record.get(RUNS)
    if not runs:
        return {}
    fields: dict[str, Any] = {"calib_sets": len(runs)}
    for key in keys:
        stats = spread([run["metrics"].get(key) for run in runs])
        if stats is not None:
            fields.update({f"{key}_{name}": value for name, value in stats.items() if name != "mean"})
    return fields


def _paired(table: Mapping, base: Mapping, seed: int) -> tuple[float, float]:
    common = [key for key in table if key in base]
    return bootstrap_interval([table[key] - base[key] for key in common], seed)


def _inside_spread(row: Mapping, other: Mapping, table: Mapping, other_table: Mapping, seed: int) -> bool:
    """Whether two rows are not told apart: their mIoU ranges over calibration sets overlap, or the
    paired bootstrap interval of their per-instance IoU differences holds 0. Rows with neither (AP
    alone: detection prompts give no instance IoUs) were not tested, so not told apart either."""
    ranges = all(_is_number(r.get(k)) for r in (row, other) for k in ("miou_min", "miou_max"))
    if ranges and max(row["miou_min"], other["miou_min"]) <= min(row["miou_max"], other["miou_max"]):
        return True
    if table and other_table:
        low, high = _paired(table, other_table, seed)
        return low <= 0.0 <= high
    return not ranges


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
