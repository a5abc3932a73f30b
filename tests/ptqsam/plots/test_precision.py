"""Sensitivity and Pareto figures: files written, every group drawn, bad data refused."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from ptqsam.analysis.groups import Group
from ptqsam.analysis.sensitivity import Damage, SensitivityResult, SensitivityRow
from ptqsam.errors import AnalysisError
from ptqsam.plots.precision import (OUTSIDE, WHOLE, _group_name, _panels, plot_block_heatmap, plot_group_ranking,
                                    plot_pareto, plot_sensitivity_result, score_label)

#: 120 groups: 12 encoder blocks of 6 products, 2 decoder layers of 20, 8 groups outside every block.
BLOCKS = {**{f"image_encoder.blocks.{b}.attn.{p}": f"image_encoder.blocks.{b}"
             for b in range(12) for p in ("qkv", "proj", "query@key", "probs@value", "lin1", "lin2")},
          **{f"mask_decoder.transformer.layers.{b}.unit{p}": f"mask_decoder.transformer.layers.{b}"
             for b in range(2) for p in range(20)},
          **{f"mask_decoder.output_hypernetworks_mlps.{i}.layers.0": None for i in range(8)}}
SCORES = {name: float(v) for name, v in zip(BLOCKS, np.random.default_rng(0).lognormal(-3, 2, len(BLOCKS)))}


def _png(files) -> np.ndarray:
    assert files.png.is_file() and files.pdf.read_bytes().startswith(b"%PDF")
    image = imread(files.png)
    assert float(image[..., :3].std()) > 0.05
    return image


def test_panels_lay_out_every_group_once():
    panels = _panels(BLOCKS)
    cells = [(row, col) for _, rows, cols in panels for row in rows for col in cols]
    assert len(cells) == len(BLOCKS)
    assert [len(rows) for _, rows, _ in panels] == [12, 2, 1]
    assert panels[-1][0] == OUTSIDE and len(panels[-1][2]) == 8


def test_groups_that_are_whole_blocks_are_laid_out_in_their_blocks():
    blocks = {**{f"image_encoder.blocks.{b}": f"image_encoder.blocks.{b}" for b in range(12)},
              "mask_decoder.transformer.layers.0": "mask_decoder.transformer.layers.0", "image_encoder.neck": None}
    panels = _panels(blocks)
    assert [(rows, cols) for _, rows, cols in panels] == [
        ([*(f"image_encoder.blocks.{b}" for b in range(12)), "mask_decoder.transformer.layers.0"], [WHOLE]),
        ([OUTSIDE], ["image_encoder.neck"])]
    assert sorted(_group_name(row, col) for _, rows, cols in panels for row in rows for col in cols) == sorted(blocks)


def test_an_all_but_study_labels_its_scores_as_damage_removed():
    assert score_label("mask-logit MSE", "only") == "mask-logit MSE"
    assert score_label("mask-logit MSE", "all_but") == "mask-logit MSE removed by keeping the group float"


def test_ranking_and_heatmap_with_a_hundred_groups(tmp_path):
    ranking = _png(plot_group_ranking(SCORES, tmp_path / "top", "mask-logit MSE", top=15, title="t"))
    assert ranking.shape[1] >= 1000
    _png(plot_block_heatmap({**SCORES, next(iter(SCORES)): 0.0}, BLOCKS, tmp_path / "blocks", "MSE"))
    with pytest.raises(AnalysisError, match="no block given"):
        plot_block_heatmap({"elsewhere": 1.0}, BLOCKS, tmp_path / "x", "MSE")
    with pytest.raises(AnalysisError, match="finite"):
        plot_group_ranking({"image_encoder.a": float("nan")}, tmp_path / "x", "MSE")
    with pytest.raises(AnalysisError, match="top"):
        plot_group_ranking(SCORES, tmp_path / "x", "MSE", top=0)


def test_every_bits_and_role_of_a_study_is_drawn(tmp_path):
    groups = [Group("mask_decoder.transformer.layers.0.mlp.lin1", ("w",), ("a",), "mask_decoder.transformer.layers.0"),
              Group("mask_decoder.iou_prediction_head.layers.0", ("w2",), ("a2",), None)]
    rows = [SensitivityRow(g.name, role, bits, bits, Damage(0.1 * bits + i, 0.9, 0.01))
            for i, g in enumerate(groups) for role in ("weight", "activation") for bits in (4, 8)]
    study = SensitivityResult({"recipe": {"name": "minmax"}, "bits": ["W4A4", "W8A8"],
                               "roles": ["weight", "activation"], "mode": "only"}, groups, rows)
    written = plot_sensitivity_result(study, tmp_path, "iou_error", top=5)
    assert sorted(p.name for p in written if p.suffix == ".png") == sorted(
        f"{kind}_{bits}_{role}.png" for kind in ("top", "blocks") for bits in ("W4A4", "W8A8")
        for role in ("weight", "activation"))


def test_pareto_figure(tmp_path):
    rows = [{"label": "float", "bits": "float", "size_mb": 15.2, "gbops": 890.0, "miou": 0.61},
            *({"label": f"ptq4sam {b}", "bits": b, "size_mb": s, "gbops": g, "miou": m}
              for b, s, g, m in (("W4A4", 2.2, 14.0, 0.55), ("W6A6", 3.1, 31.0, 0.60), ("W8A8", 4.0, 56.0, 0.61))),
            {"label": "w5a5", "bits": "mixed", "size_mb": 2.7, "gbops": 22.0, "miou": 0.59}]
    _png(plot_pareto(rows, tmp_path / "pareto"))
    with pytest.raises(AnalysisError, match="finite"):
        plot_pareto([{**rows[0], "miou": None}], tmp_path / "x")
    with pytest.raises(AnalysisError, match="no pareto rows"):
        plot_pareto([], tmp_path / "x")


def test_each_pareto_panel_joins_the_uniform_points_in_its_own_cost_order(tmp_path, monkeypatch):
    import ptqsam.plots.precision as precision

    figures = []
    monkeypatch.setattr(precision, "_save", lambda fig, stem: figures.append(fig))
    rows = [{"label": f"minmax {b}", "bits": b, "size_mb": s, "gbops": g, "miou": m}  # W8A4: more MB, fewer BOPs
            for b, s, g, m in (("W6A6", 3.1, 36.0, 0.60), ("W8A4", 4.0, 32.0, 0.58), ("W4A4", 2.2, 16.0, 0.50))]
    plot_pareto(rows, tmp_path / "pareto")
    size, bops = (list(ax.lines[0].get_xdata()) for ax in figures[0].axes[:2])
    assert size == [2.2, 3.1, 4.0] and bops == [16.0, 32.0, 36.0]
