"""Figures of the activation analysis and of sweep reports, each written as PNG and PDF.

Every function takes data (never a model), draws on its own :class:`~matplotlib.figure.Figure`
with the non-interactive Agg canvas (no pyplot: nothing global is opened, so nothing is left open),
writes ``<out_stem>.png`` (at :data:`DPI`) and ``<out_stem>.pdf`` atomically, and returns their paths.
"""

from __future__ import annotations

import json
import math
from itertools import cycle
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ptqsam.analysis.grids import GridLevels, grid_levels
from ptqsam.bits import bits_order, parse_bits
from ptqsam.constants import FLOAT
from ptqsam.errors import AnalysisError, RecipeError
from ptqsam.evaluation.significance import LEVEL
from ptqsam.io import write_atomic
from ptqsam.plots.colours import recipe_colour
from quantizers.modules.base import Quantizer
from quantizers.transforms.bimodal import BimodalResult

DPI = 150
HISTOGRAM_BINS = 120
#: At most this many grid levels are drawn per set (every k-th level beyond that).
MAX_LEVEL_LINES = 64
#: Metrics of a report row drawn by :func:`plot_degradation` (key, axis label), in panel order.
DEGRADATION_METRICS = (("miou", "mIoU"), ("AP", "mask AP"),
                       ("agreement", "agreement: mean IoU with the float model's masks"))
#: Colours of the dashed float lines, one per model.
FLOAT_COLOURS = ("black", "0.45", "0.7")
SHORT_PREFIXES = (("mask_decoder.transformer.", "decoder."), ("mask_decoder.", "decoder."),
                  ("image_encoder.", "encoder."), ("prompt_encoder.", "prompt."))
SITE_KIND_COLOURS = {"weight": "tab:blue", "input": "tab:orange", "query": "tab:green", "key": "tab:red",
                     "value": "tab:purple", "probs": "tab:brown", "matmul_a": "tab:pink", "matmul_b": "tab:olive"}
LEVEL_COLOURS = {"levels": "tab:blue", "low range": "tab:orange", "high range": "tab:green"}
_TAB10 = [f"tab:{c}" for c in ("blue", "orange", "green", "red", "purple", "brown", "pink", "gray", "olive", "cyan")]


class PlotFiles(NamedTuple):
    """The two files one plot function wrote."""

    png: Path
    pdf: Path


# --------------------------------------------------------------------------- site histograms


def plot_site_histogram(
    values: torch.Tensor | np.ndarray, quantizer: Quantizer, title: str, out_stem: str | Path
) -> PlotFiles:
    """Histogram of one site's values with its quantizer's grid drawn over it.

    Uniform: the levels ``(q − z)·Δ`` (every k-th when there are many) and the clip range; per
    channel only the widest clip range. Log: the levels ``s·2^(−q/τ)`` on a log x axis (zeros,
    which a log axis cannot show, are counted in the legend). Twin: both ranges' levels in two
    colours and the split.

    Arguments:
      values: the site's values (e.g. :attr:`ptqsam.analysis.SiteStats.values`).
      quantizer: the site's calibrated quantizer.
      title: first line of the title (the grid's parameters form the second).
      out_stem: output path without suffix.
    """
    data = _finite_values(values, "values")
    grid = grid_levels(quantizer)
    fig, ax = _single_axes((9.0, 5.0))
    if grid.log_axis:
        low, high = _draw_log_histogram(ax, data, grid)
    else:
        low, high = _draw_linear_histogram(ax, data, grid)
    for name, levels in grid.levels.items():
        _draw_levels(ax, name, levels, low, high)
    if not grid.levels:
        _draw_lines(ax, grid.clip, "tab:red", "--", f"widest clip range [{grid.clip[0]:.4g}, {grid.clip[1]:.4g}]")
    elif grid.kind == "uniform":
        _draw_lines(ax, grid.clip, "tab:red", "--", f"clip range [{grid.clip[0]:.4g}, {grid.clip[1]:.4g}]")
    if grid.split is not None:
        _draw_lines(ax, [grid.split], "black", "-.", f"split = {grid.split:.4g}", width=1.6)
    ax.set_title(f"{title}\n{grid.description}", fontsize=10)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    return _save(fig, out_stem)


def _draw_linear_histogram(ax: Axes, data: np.ndarray, grid: GridLevels) -> tuple[float, float]:
    low, high = min(data.min(), grid.clip[0]), max(data.max(), grid.clip[1])
    pad = 0.03 * (high - low) if high > low else 0.5
    low, high = low - pad, high + pad
    counts, _, _ = ax.hist(data, bins=HISTOGRAM_BINS, histtype="stepfilled", color="0.6",
                           label=f"values (n={data.size:,})", zorder=2)
    _count_axis(ax, counts)
    ax.set_xlim(low, high)
    ax.set_xlabel("value")
    return low, high


def _draw_log_histogram(ax: Axes, data: np.ndarray, grid: GridLevels) -> tuple[float, float]:
    if data.min() < 0:
        raise AnalysisError(f"a {grid.kind} grid is drawn on a log axis: values must be >= 0, got {data.min():.4g}")
    positive = data[data > 0]
    if positive.size == 0:
        raise AnalysisError("every value is 0: nothing to show on a log axis")
    low, high = positive.min() / 1.5, max(positive.max(), grid.clip[1]) * 1.5
    zeros = data.size - positive.size
    label = f"values (n={data.size:,}; {zeros:,} zeros not shown)" if zeros else f"values (n={data.size:,})"
    bins = np.geomspace(low, high, HISTOGRAM_BINS + 1)
    counts, _, _ = ax.hist(positive, bins=bins, histtype="stepfilled", color="0.6", label=label, zorder=2)
    _count_axis(ax, counts)
    _log_x(ax, low, high)
    ax.set_xlabel("value (log scale)")
    return low, high


def _count_axis(ax: Axes, counts: np.ndarray) -> None:
    """A log count axis when the counts span more than two decades (heavy tails), else linear."""
    nonzero = counts[counts > 0]
    if nonzero.max() > 100 * nonzero.min():
        ax.set_yscale("log")
        ax.set_ylabel("count (log scale)")
    else:
        ax.set_ylabel("count")


def _draw_levels(ax: Axes, name: str, levels: np.ndarray, low: float, high: float) -> None:
    """The levels within the x range [low, high] (on a log axis low > 0 leaves the zero level out)."""
    in_view = levels[(levels >= low) & (levels <= high)]
    shown, step = _thin(in_view)
    what = "grid levels" if name == "levels" else f"{name} levels"
    thinning = f", 1 in {step} drawn" if step > 1 else ""
    _draw_lines(ax, shown, LEVEL_COLOURS[name], "-", f"{what} ({in_view.size} of {levels.size} in view{thinning})",
                width=0.7, alpha=0.7)


def _thin(levels: np.ndarray) -> tuple[np.ndarray, int]:
    step = max(1, math.ceil(levels.size / MAX_LEVEL_LINES))
    return levels[::step], step


def _draw_lines(ax: Axes, xs: Sequence[float] | np.ndarray, colour: str, style: str, label: str,
                width: float = 1.4, alpha: float = 1.0) -> None:
    """Vertical lines spanning the axes' height, one legend entry."""
    ax.vlines(xs, 0, 1, transform=ax.get_xaxis_transform(), colors=colour, linestyles=style, linewidth=width,
              alpha=alpha, label=label, zorder=3)


# --------------------------------------------------------------------------- bimodal keys


def plot_bimodal_keys(
    before: torch.Tensor | np.ndarray,
    after: torch.Tensor | np.ndarray,
    detection_before: BimodalResult,
    title: str,
    out_stem: str | Path,
    detection_after: BimodalResult | None = None,
) -> PlotFiles:
    """Decoder keys before and after the bimodal sign fold, side by side on a shared x axis:
    histograms, the detection's Gaussian KDE and its peaks.

    Arguments:
      before, after: sampled keys (:func:`ptqsam.analysis.decoder_keys`) before and after the fold.
      detection_before: :func:`~quantizers.transforms.bimodal.detect_bimodal` of ``before``.
      title: the figure's title (e.g. the attention's name).
      out_stem: output path without suffix.
      detection_after: optionally, the detection of ``after`` (its KDE and peaks are drawn too).
    """
    panels = (("before sign fold", _finite_values(before, "keys before"), detection_before),
              ("after sign fold", _finite_values(after, "keys after"), detection_after))
    fig = _figure((12.0, 5.0))
    axes = fig.subplots(1, 2, sharex=True)
    for ax, (label, data, detection) in zip(axes, panels):
        ax.hist(data, bins=HISTOGRAM_BINS, density=True, histtype="stepfilled", color="0.65", label="histogram")
        label += f" (n={data.size:,})"
        if detection is not None:
            _draw_detection(ax, detection)
            peaks = len(detection.peaks)
            label += f": {'bimodal' if detection.is_bimodal else 'not bimodal'}, {peaks} peak{'s' * (peaks != 1)}"
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("key value (k_proj output)")
        ax.set_ylabel("density")
    handles, labels = _unique_legend(axes)
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, out_stem)


def _draw_detection(ax: Axes, detection: BimodalResult) -> None:
    """The KDE curve, and each peak as a marker with its value."""
    ax.plot(detection.grid, detection.density, color="tab:blue", linewidth=1.8, label="Gaussian KDE")
    for peak in detection.peaks:
        height = float(np.interp(peak, detection.grid, detection.density))
        ax.plot([peak], [height], "v", color="tab:red", markersize=8, label="KDE peak")
        ax.annotate(f"{peak:.3g}", (peak, height), xytext=(0, 9), textcoords="offset points", ha="center",
                    fontsize=8, color="tab:red")


# --------------------------------------------------------------------------- softmax distributions


def plot_softmax_distributions(
    values_by_site: Mapping[str, torch.Tensor | np.ndarray], out_stem: str | Path
) -> PlotFiles:
    """Post-softmax value distributions, one step line per attention, on a log x axis.

    Each line is the fraction of that site's values per logarithmic bin (so samples of different
    sizes compare); zeros cannot sit on a log axis and are given in the legend.

    Arguments:
      values_by_site: site name -> post-softmax values (``*.probs`` sites).
      out_stem: output path without suffix.
    """
    if not values_by_site:
        raise AnalysisError("values_by_site is empty")
    arrays = {name: _finite_values(v, f"values of {name}") for name, v in values_by_site.items()}
    negative = [name for name, data in arrays.items() if data.min() < 0]
    if negative:
        raise AnalysisError(f"post-softmax values must be >= 0; negative values at {negative}")
    positive = [data[data > 0] for data in arrays.values()]
    if not any(p.size for p in positive):
        raise AnalysisError("every post-softmax value is 0: nothing to show on a log axis")
    low = min(p.min() for p in positive if p.size) / 1.5
    high = max(1.0, max(p.max() for p in positive if p.size))
    bins = np.geomspace(low, high, HISTOGRAM_BINS + 1)
    fig, ax = _single_axes((11.0, 5.5))
    styles = cycle([(c, s) for s in ("-", "--", ":", "-.") for c in _TAB10])
    handles, labels = [], []
    for (name, data), pos in zip(arrays.items(), positive):
        colour, style = next(styles)
        zeros = data.size - pos.size
        ax.hist(pos, bins=bins, weights=np.full(pos.size, 1.0 / data.size), histtype="step", color=colour,
                linestyle=style, linewidth=1.3)
        handles.append(Line2D([], [], color=colour, linestyle=style, linewidth=1.3))
        labels.append(_short(name) + (f" ({100 * zeros / data.size:.1f}% zeros)" if zeros else ""))
    _log_x(ax, low, high)
    ax.set_yscale("log")
    ax.set_xlabel("attention probability (log scale)")
    ax.set_ylabel("fraction of values per bin")
    ax.set_title("Post-softmax attention distributions")
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, title="site")
    return _save(fig, out_stem)


# --------------------------------------------------------------------------- sensitivity


def plot_sensitivity(errors_by_site: Mapping[str, float], out_stem: str | Path, top: int = 30,
                     subject: str = "") -> PlotFiles:
    """Horizontal bars of the per-site relative quantization error, the ``top`` largest first.

    The x axis is logarithmic when the errors shown span more than two decades; bars are coloured
    by site kind (the last part of the name).

    Arguments:
      errors_by_site: site name -> relative error (:func:`ptqsam.analysis.site_quantization_error`).
      out_stem: output path without suffix.
      top: how many sites to show.
      subject: what was measured, for the title (e.g. ``ptq4sam W4A4, 4 calibration images``).
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise AnalysisError(f"top must be a positive integer, got {top!r}")
    if not errors_by_site:
        raise AnalysisError("errors_by_site is empty")
    bad = [n for n, e in errors_by_site.items() if not (isinstance(e, (int, float)) and math.isfinite(e) and e >= 0)]
    if bad:
        raise AnalysisError(f"relative errors must be finite and >= 0; bad values at {bad}")
    ranked = sorted(errors_by_site.items(), key=lambda item: (-item[1], item[0]))[:top]
    names = [n for n, _ in ranked]
    kinds = [name.rpartition(".")[2] for name in names]
    fig, ax, log_axis = ranked_bars(ranked, [SITE_KIND_COLOURS.get(k, "tab:gray") for k in kinds], 11.0, ".2e")
    scale = " (log scale)" if log_axis else ""
    ax.set_xlabel(r"relative quantization error  $\|q(x) - x\|^2 / \|x\|^2$" + scale)
    ax.set_title(f"Per-site quantization error (top {len(names)} of {len(errors_by_site)} sites)"
                 + (f"\n{subject}" if subject else ""))
    handles = [Patch(color=SITE_KIND_COLOURS.get(k, "tab:gray")) for k in dict.fromkeys(kinds)]
    ax.legend(handles, list(dict.fromkeys(kinds)), title="site kind", fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out_stem)


def ranked_bars(ranked: Sequence[tuple[str, float]], colours: Sequence[str], width: float,
                value_format: str) -> tuple[Figure, Axes, bool]:
    """Horizontal bars of ``(name, value)`` pairs, the first on top, each annotated with its value
    (``value_format``); the x axis is logarithmic when the values are positive and span more than
    two decades. Returns the figure, its axes and whether the axis is logarithmic."""
    names, values = [n for n, _ in ranked], np.array([v for _, v in ranked], dtype=np.float64)
    fig, ax = _single_axes((width, 1.6 + 0.28 * len(names)))
    rows = np.arange(len(names))[::-1]
    ax.barh(rows, values, color=list(colours), height=0.7)
    ax.set_yticks(rows, [_short(n) for n in names], fontsize=8)
    ax.set_ylim(-0.6, len(names) - 0.4)
    log_axis = bool(values.min() > 0 and values.max() / values.min() > 100)
    if log_axis:
        ax.set_xscale("log")
    for row, value in zip(rows, values):
        ax.annotate(format(value, value_format), (value, row), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=7)
    ax.margins(x=0.12)
    return fig, ax, log_axis


# --------------------------------------------------------------------------- degradation


def plot_degradation(rows: Sequence[Mapping[str, Any]], out_stem: str | Path) -> PlotFiles:
    """Metrics against bit-width, one line per recipe (per source and recipe when rows come from
    several models or results folders: colour = recipe, line style = source), the float value as a
    dashed horizontal line (one grey level per source; no band: its interval over the instances is
    much wider than the paired intervals of the Δ's, and would hide them); one panel per metric
    present (mIoU, AP, agreement with the float model's masks).

    Error bars: each point's min … max over its calibration sets where rows have them, else its 95 %
    bootstrap interval over the evaluated instances (mIoU); each panel says which. A recipe has the
    same colour in every figure (:func:`~ptqsam.plots.colours.recipe_colour`). The title names the
    model and the number of evaluated instances and images when every row shares them.
    Bit-widths are ordered by (weight, activation) bits: W4A4 < W6A6 < W8A8.

    Arguments:
      rows: report rows (:func:`ptqsam.evaluation.report.degradation_rows`, or ``report.json``'s
        ``"rows"``): dicts with ``model``, ``recipe``, ``bits`` and metric values; a ``results`` key
        (``ptqsam compare``) names the results folder a row comes from.
      out_stem: output path without suffix.
    """
    rows = _check_rows(rows)
    metrics = [(key, label) for key, label in DEGRADATION_METRICS if any(_metric(r, key) is not None for r in rows)]
    if not metrics:
        raise AnalysisError(f"no row has any of the metrics {[k for k, _ in DEGRADATION_METRICS]}")
    quantized = [r for r in rows if r["recipe"] != FLOAT]
    if not quantized:
        raise AnalysisError("the rows hold no quantized run (only float): nothing to plot against bits")
    bits = bit_width_order(r["bits"] for r in quantized)
    position = {b: i for i, b in enumerate(bits)}
    sources = sorted({_source(r) for r in rows})
    series = sorted({(_source(r), r["recipe"]) for r in quantized})
    fig = _figure((4.3 * len(metrics) + 2.4, 4.6))
    axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)[0])
    for ax, (key, label) in zip(axes, metrics):
        bars = set()
        for source, recipe in series:
            points = sorted((position[_bits_label(r["bits"])], _metric(r, key), r) for r in quantized
                            if _source(r) == source and r["recipe"] == recipe and _metric(r, key) is not None)
            if points:
                xs, ys, found = zip(*points)
                ax.plot(xs, ys, marker="o", color=recipe_colour(recipe), linestyle=_model_style(source, sources),
                        label=recipe if len(sources) == 1 else f"{source} / {recipe}")
                bars.add(_error_bars(ax, xs, ys, found, key, recipe_colour(recipe)))
        for r in rows:
            if r["recipe"] == FLOAT and _metric(r, key) is not None:
                ax.axhline(_metric(r, key), color=FLOAT_COLOURS[sources.index(_source(r)) % len(FLOAT_COLOURS)],
                           linestyle=(0, (5, 3)), linewidth=1.2,
                           label="float" if len(sources) == 1 else f"{_source(r)} / float")
        ax.set_xticks(range(len(bits)), bits)
        ax.set_xlim(-0.4, len(bits) - 0.6)
        ax.set_xlabel("bit-width (weights / activations)")
        ax.set_ylabel(label)
        notes = sorted(bars - {None})
        ax.set_title(label + "".join(f"\nbars: {note}" for note in notes), fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = _unique_legend(axes)
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    fig.suptitle("Degradation against bit-width" + _subject(rows))
    return _save(fig, out_stem)


def _source(row: Mapping[str, Any]) -> str:
    """Where a row comes from: its model, with the results folder in a comparison."""
    return f"{row['results']}: {row['model']}" if row.get("results") else str(row["model"])


def _error_bars(ax: Axes, xs: Sequence[int], ys: Sequence[float], rows: Sequence[Mapping[str, Any]], key: str,
                colour: str) -> str | None:
    """Each point's min … max over its calibration sets (two or more), else its bootstrap interval
    (when every point has one); what the bars are, or None when there are none."""
    spans, note = [_pair(r, f"{key}_min", f"{key}_max") for r in rows], None
    if all(span is not None and r.get("calib_sets", 2) > 1 for span, r in zip(spans, rows)):
        sets = sorted({r.get("calib_sets") for r in rows if r.get("calib_sets")})
        note = "min … max over " + (f"{sets[0]} calibration sets" if len(sets) == 1 else "the calibration sets")
    else:
        spans = [_pair(r, f"{key}_ci_low", f"{key}_ci_high") for r in rows]
        if all(span is not None for span in spans):
            note = f"{LEVEL:.0%} bootstrap interval over the instances"
    if note is not None:
        errors = np.array([[y - low for y, (low, _) in zip(ys, spans)], [high - y for y, (_, high) in zip(ys, spans)]])
        ax.errorbar(xs, ys, yerr=np.clip(errors, 0, None), fmt="none", ecolor=colour, capsize=3, alpha=0.7)
    return note


def _subject(rows: Sequence[Mapping[str, Any]]) -> str:
    """`` (model; N instances in M images)`` as far as every row shares them."""
    parts = []
    models = {str(r["model"]) for r in rows}
    if len(models) == 1:
        parts.append(models.pop())
    counts = {(r.get("num_prompts"), r.get("num_images")) for r in rows}
    if len(counts) == 1 and None not in (count := counts.pop()):
        parts.append(f"{count[0]} instances in {count[1]} images")
    return f" ({'; '.join(parts)})" if parts else ""


def plot_report(report_json_path: str | Path, out_dir: str | Path) -> PlotFiles:
    """:func:`plot_degradation` of a sweep's ``report.json``, written as ``<out_dir>/degradation``.

    Example (``ptqsam plot RESULTS``)::

        >>> from ptqsam import plot_report, run_sweep
        >>> rows = run_sweep({"bits": ["W8A8"], "synthetic_images": 2, "calib_images": 1}, progress=False, out="sweep")
        >>> files = plot_report("sweep/report.json", "sweep/plots")
        >>> files.png.name
        'degradation.png'
    """
    path = Path(report_json_path)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise AnalysisError(f"cannot read report {path}: {error}") from error
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
        raise AnalysisError(f"report {path} has no 'rows' list")
    return plot_degradation(report["rows"], Path(out_dir) / "degradation")


def _check_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    rows = list(rows)
    if not rows:
        raise AnalysisError("no report rows to plot")
    for row in rows:
        missing = [k for k in ("model", "recipe", "bits") if not isinstance(row, Mapping) or k not in row]
        if missing:
            raise AnalysisError(f"report row {row!r} lacks {missing}")
    seen = [(_source(r), r["recipe"], _bits_label(r["bits"])) for r in rows]
    duplicates = sorted({s for s in seen if seen.count(s) > 1})
    if duplicates:
        raise AnalysisError(f"several rows for the same (model, recipe, bits): {duplicates}")
    return rows


def _pair(row: Mapping[str, Any], low_key: str, high_key: str) -> tuple[float, float] | None:
    """``(row[low_key], row[high_key])`` when the row has both (a spread or an interval)."""
    low, high = _metric(row, low_key), _metric(row, high_key)
    return None if low is None or high is None else (low, high)


def _metric(row: Mapping[str, Any], key: str) -> float | None:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def bit_width_order(bits: Iterable[Any]) -> list[str]:
    """The distinct bit-width labels (upper-cased ``W<w>A<a>``) in x-axis order: by weight bits,
    then activation bits (W4A4 < W6A6 < W8A4 < W8A8)."""
    labels = [str(b) for b in bits]
    for label in labels:
        try:
            parse_bits(label)
        except RecipeError:
            raise AnalysisError(f"bits {label!r} is not of the form W<bits>A<bits> (e.g. W8A8)") from None
    return bits_order(labels)


def _bits_label(bits: Any) -> str:
    return str(bits).strip().upper()


def _model_style(model: str, models: list[str]) -> Any:
    return ("-", "--", ":", "-.")[models.index(model) % 4]


def _unique_legend(axes: Sequence[Axes]) -> tuple[list, list[str]]:
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries)


# --------------------------------------------------------------------------- shared


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _single_axes(size: tuple[float, float]) -> tuple[Figure, Axes]:
    fig = _figure(size)
    return fig, fig.add_subplot()


def _log_x(ax: Axes, low: float, high: float) -> None:
    """Log x axis over [low, high]; within three decades, plain labels at 1, 2 and 5 × 10^k only
    (matplotlib's default labels some minor ticks there too, and they overlap)."""
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    if math.log10(high / low) <= 3:
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def _save(fig: Figure, out_stem: str | Path) -> PlotFiles:
    """``<out_stem>.png`` and ``<out_stem>.pdf`` (PDF without a creation date: same data, same bytes)."""
    stem = str(out_stem)
    png = write_atomic(stem + ".png", lambda f: fig.savefig(f, format="png", dpi=DPI), mode="wb")
    pdf = write_atomic(stem + ".pdf", lambda f: fig.savefig(f, format="pdf", metadata={"CreationDate": None}),
                       mode="wb")
    return PlotFiles(png, pdf)


def _finite_values(values: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    """``values`` as a flat float64 array; empty or non-finite input raises."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    if data.size == 0:
        raise AnalysisError(f"{what} is empty")
    if not np.isfinite(data).all():
        raise AnalysisError(f"{what} holds NaN or Inf")
    return data


def _short(name: str) -> str:
    """A site name with its top-level module abbreviated (``mask_decoder.transformer.`` -> ``decoder.``)."""
    for prefix, short in SHORT_PREFIXES:
        if name.startswith(prefix):
            return short + name[len(prefix):]
    return name
