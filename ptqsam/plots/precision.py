"""Figures of sensitivity studies and mixed precision, drawn from data (as :mod:`.charts`).

:func:`plot_group_ranking` (the top-k groups), :func:`plot_block_heatmap` (every group, laid out
by block: readable with hundreds of groups) and :func:`plot_pareto` (cost against mIoU).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.patches import Patch

from ptqsam.analysis.sensitivity import METRIC_LABELS, SensitivityResult
from ptqsam.constants import FLOAT
from ptqsam.errors import AnalysisError
from ptqsam.models.blocks import PARTS, part_of
from ptqsam.plots.charts import PlotFiles, _figure, _save, _short, ranked_bars
from ptqsam.plots.colours import recipe_colour

PART_COLOURS = dict(zip(PARTS, ("tab:blue", "tab:green", "tab:orange")))
#: Title of the heat-map panel of the groups outside every block.
OUTSIDE = "outside blocks"
#: Column of a group that is a whole block (sensitivity at block granularity).
WHOLE = "whole block"
MIXED = "mixed"
#: Height a heat-map panel needs besides its rows: title and rotated column labels.
ROW_LABELS_INCHES = 1.5


def plot_sensitivity_result(result: SensitivityResult, out_dir: str | Path, metric: str = "mse",
                            top: int = 20) -> list[Path]:
    """:func:`plot_group_ranking` (``top_<bits>_<role>``) and :func:`plot_block_heatmap`
    (``blocks_<bits>_<role>``) of every bit-width and role of a study, under ``out_dir``."""
    blocks = {g.name: g.block for g in result.groups}
    recipe = result.settings["recipe"]["name"]
    label_of_score = score_label(METRIC_LABELS[metric], result.settings["mode"])
    files: list[Path] = []
    for label in result.settings["bits"]:
        for role in result.settings["roles"]:
            scores = result.scores(metric, role, label)
            if not scores:
                continue
            title = f"{recipe} {label}, {role} sites of each group, {result.settings['mode'].replace('_', ' ')}"
            stem = f"{label}_{role}"
            files += plot_group_ranking(scores, Path(out_dir) / f"top_{stem}", label_of_score, top, title)
            files += plot_block_heatmap(scores, blocks, Path(out_dir) / f"blocks_{stem}", label_of_score, title)
    return files


def score_label(metric: str, mode: str) -> str:
    """What a study's score is: the damage itself (``only``), or the damage removed by keeping the
    group float while all the rest is quantized (``all_but``; negative where that adds damage)."""
    return metric if mode == "only" else f"{metric} removed by keeping the group float"


def plot_group_ranking(scores: Mapping[str, float], out_stem: str | Path, metric: str, top: int = 20,
                       title: str = "") -> PlotFiles:
    """Horizontal bars of the ``top`` largest scores (largest first), coloured by model part; the
    x axis is logarithmic when the scores shown are positive and span more than two decades.

    Arguments:
      scores: group name -> score (larger = more sensitive).
      out_stem: output path without suffix.
      metric: the score's name (x-axis label).
      top: how many groups to show.
      title: first line of the title.
    """
    scores = _check_scores(scores)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise AnalysisError(f"top must be a positive integer, got {top!r}")
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:top]
    names = [n for n, _ in ranked]
    fig, ax, log_axis = ranked_bars(ranked, [PART_COLOURS[part_of(n)] for n in names], 10.5, ".3g")
    ax.set_xlabel(metric + (" (log scale)" if log_axis else ""))
    ax.set_title(f"{title}\ntop {len(names)} of {len(scores)} groups".strip(), fontsize=10)
    parts = list(dict.fromkeys(part_of(n) for n in names))
    ax.legend([Patch(color=PART_COLOURS[p]) for p in parts], parts, fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out_stem)


def plot_block_heatmap(scores: Mapping[str, float], blocks: Mapping[str, str | None], out_stem: str | Path,
                       metric: str, title: str = "") -> PlotFiles:
    """Every group's score in a heat map per kind of block: a panel holds the blocks whose groups
    have the same names inside the block (e.g. every ViT block), one row per block, one column per
    group; groups outside every block form a last panel. Shared logarithmic colour scale; scores
    <= 0 are grey.

    Arguments:
      scores: group name -> score.
      blocks: group name -> the block holding it (None: outside every block), in model order.
      out_stem: output path without suffix.
      metric: the score's name (colour-bar label).
      title: the figure's title.
    """
    scores = _check_scores(scores)
    missing = [name for name in scores if name not in blocks]
    if missing:
        raise AnalysisError(f"no block given for group(s) {missing[:5]}")
    panels = _panels({name: blocks[name] for name in blocks if name in scores})
    positive = [v for v in scores.values() if v > 0]
    norm = LogNorm(min(positive), max(positive)) if positive else None
    rows_per_panel = [len(rows) for _, rows, _ in panels]
    fig = _figure((12.0, 1.0 + sum(0.3 * n + ROW_LABELS_INCHES for n in rows_per_panel)))
    axes = fig.subplots(len(panels), 1, gridspec_kw={"height_ratios": rows_per_panel}, squeeze=False)[:, 0]
    image = None
    for ax, (label, rows, columns) in zip(axes, panels):
        grid = np.array([[scores.get(_group_name(row, col), np.nan) for col in columns] for row in rows], dtype=float)
        masked = np.ma.masked_where(~(grid > 0), grid)
        ax.imshow(np.where(np.isnan(grid), np.nan, 1.0), cmap="Greys", vmin=0, vmax=4, aspect="auto")
        image = ax.imshow(masked, cmap="viridis", norm=norm, aspect="auto")
        ax.set_yticks(range(len(rows)), [_short(r) for r in rows], fontsize=7)
        ax.set_xticks(range(len(columns)), [_short(c) for c in columns], fontsize=7, rotation=40, ha="right")
        ax.set_title(label, fontsize=9, loc="left")
    if image is not None and norm is not None:
        fig.colorbar(image, ax=list(axes), label=f"{metric} (log scale; grey: <= 0)", shrink=0.8)
    fig.suptitle(title or f"{metric} of every group, by block", fontsize=11)
    return _save(fig, out_stem)


def _panels(blocks: Mapping[str, str | None]) -> list[tuple[str, list[str], list[str]]]:
    """``(label, row names, column names)`` per panel: blocks grouped by the tuple of their groups'
    names inside the block (:data:`WHOLE` for a group that is the block), in model order; then the
    groups outside every block (one column)."""
    inside: dict[str, list[str]] = {}
    outside = []
    for name, block in blocks.items():
        if name == block:  # a group that is a whole block (block granularity)
            inside.setdefault(block, []).append(WHOLE)
        elif block is None or not name.startswith(block + "."):
            outside.append(name)
        else:
            inside.setdefault(block, []).append(name[len(block) + 1:])
    by_signature: dict[tuple[str, ...], list[str]] = {}
    for block, columns in inside.items():
        by_signature.setdefault(tuple(columns), []).append(block)
    panels = [(f"{len(rows)} block(s) like {_short(rows[0])}", rows, list(columns))
              for columns, rows in by_signature.items()]
    if outside:
        panels.append((OUTSIDE, [OUTSIDE], outside))
    return panels


def _group_name(row: str, column: str) -> str:
    """The group drawn in a heat-map cell (see :func:`_panels`)."""
    if row == OUTSIDE:
        return column
    return row if column == WHOLE else f"{row}.{column}"


def plot_pareto(rows: Sequence[Mapping[str, Any]], out_stem: str | Path, title: str = "") -> PlotFiles:
    """mIoU against model size and against GBOPs: uniform bit-widths joined by a line in their
    recipe's colour, mixed recipes as markers of their own (each its recipe's colour and a marker of
    its own, named in the legend: labels beside nearby points would overlap), the float mIoU as a
    dashed line. Colours are :func:`~ptqsam.plots.colours.recipe_colour`'s, as in every figure.

    Arguments:
      rows: :func:`ptqsam.mixed_precision.pareto_rows` rows (``label``, ``bits``, ``size_mb``,
        ``gbops``, ``miou``; ``bits`` is ``float``, ``mixed`` or a uniform label).
      out_stem: output path without suffix.
      title: the figure's title.
    """
    rows = list(rows)
    bad = [r.get("label") for r in rows if not all(_finite(r.get(k)) for k in ("size_mb", "gbops", "miou"))]
    if not rows or bad:
        raise AnalysisError(f"pareto rows need finite size_mb, gbops and miou; bad rows: {bad}" if rows else
                            "no pareto rows to plot")
    fig = _figure((12.0, 4.8))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (key, label) in zip(axes, (("size_mb", "model size (MB)"), ("gbops", "GBOPs"))):
        # joined in the order of the panel's own cost (W8A4 costs less than W6A6 in BOPs, not in size)
        uniform = sorted((r for r in rows if r["bits"] not in (FLOAT, MIXED)), key=lambda r: r[key])
        if uniform:
            ax.plot([r[key] for r in uniform], [r["miou"] for r in uniform], "o-", color=_uniform_colour(uniform),
                    label="uniform")
            for r in uniform:
                ax.annotate(r["bits"], (r[key], r["miou"]), xytext=(4, -10), textcoords="offset points", fontsize=8)
        mixed = [r for r in rows if r["bits"] == MIXED]
        for index, r in enumerate(mixed):
            ax.plot([r[key]], [r["miou"]], MIXED_MARKERS[index % len(MIXED_MARKERS)],
                    color=recipe_colour(r.get("recipe") or r["label"]), label=r["label"])
        for r in rows:
            if r["bits"] == FLOAT:
                ax.axhline(r["miou"], color="black", linestyle=(0, (5, 3)), linewidth=1.2, label="float")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title or "Cost against mIoU", fontsize=11)
    return _save(fig, out_stem)


#: markers of the mixed recipes, one each (two recipe names may share a colour)
MIXED_MARKERS = ("D", "s", "^", "v", "P", "X", "*", "h")


def _uniform_colour(uniform: Sequence[Mapping[str, Any]]) -> str:
    """The uniform line's colour: its recipe's (:func:`~ptqsam.plots.colours.recipe_colour`), black
    when the uniform rows mix recipes."""
    recipes = {r.get("recipe") for r in uniform}
    return recipe_colour(recipes.pop()) if len(recipes) == 1 and None not in recipes else "black"


def _check_scores(scores: Mapping[str, float]) -> dict[str, float]:
    if not scores:
        raise AnalysisError("no scores to plot")
    bad = [n for n, v in scores.items() if not _finite(v)]
    if bad:
        raise AnalysisError(f"scores must be finite numbers; bad values at {bad[:5]}")
    return {n: float(v) for n, v in scores.items()}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
