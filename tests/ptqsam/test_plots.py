"""Plots: every function writes a non-empty PNG and PDF of one figure (the PNG's pixel size is the
PDF page size at the module's DPI), deterministically; bad data raises AnalysisError."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from ptqsam import plots
from ptqsam.errors import AnalysisError
from quantizers import QuantSpec, Quantizer, build_quantizer
from quantizers.transforms.bimodal import detect_bimodal

RNG_SEED = 0
ROWS = [
    {"model": "testbed", "recipe": "float", "bits": "float", "miou": 0.71, "agreement": 1.0},
    {"model": "testbed", "recipe": "minmax", "bits": "W8A8", "miou": 0.70, "agreement": 0.96, "AP": 0.39},
    {"model": "testbed", "recipe": "minmax", "bits": "W4A4", "miou": 0.20, "agreement": 0.25, "AP": None},
    {"model": "testbed", "recipe": "minmax", "bits": "W6A6", "miou": 0.55, "agreement": 0.70, "AP": 0.30},
    {"model": "testbed", "recipe": "ptq4sam", "bits": "w6a6", "miou": 0.62, "agreement": 0.80},
    {"model": "testbed", "recipe": "ptq4sam", "bits": "W4A4", "miou": 0.41, "agreement": 0.50},
]


def _assert_plot(files: plots.PlotFiles, stem: Path) -> np.ndarray:
    """Both files exist where asked, are non-empty and show the same figure; returns the pixels."""
    assert files == (Path(f"{stem}.png"), Path(f"{stem}.pdf"))
    pdf = files.pdf.read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    page = re.search(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", pdf)
    width_pt, height_pt = float(page.group(1)), float(page.group(2))
    image = imread(files.png)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[:2] == (round(height_pt / 72 * plots.DPI), round(width_pt / 72 * plots.DPI))
    assert image.shape[1] >= 1000  # wide enough to read at a glance
    assert float(image[..., :3].std()) > 0.05  # not blank
    return image


def _calibrated(data: torch.Tensor, **spec) -> Quantizer:
    quantizer = build_quantizer(QuantSpec(**spec))
    quantizer.observe(data)
    quantizer.finalize()
    return quantizer


def _softmax_values(n: int = 4000) -> torch.Tensor:
    logits = torch.randn(n // 50, 50, generator=torch.Generator().manual_seed(RNG_SEED)) * 3
    return torch.softmax(logits, dim=-1)  # rows of 50: the (N, M) layout the log quantizer needs


def _gelu_values(n: int = 4000) -> torch.Tensor:
    return torch.nn.functional.gelu(torch.randn(n, generator=torch.Generator().manual_seed(RNG_SEED)) * 2)


HISTOGRAM_CASES = {
    "uniform_affine": lambda: (v := torch.randn(5000) * 2, _calibrated(v, bits=8)),
    "uniform_per_channel": lambda: (w := torch.randn(16, 64), _calibrated(
        w, bits=4, symmetric=True, granularity={"kind": "channel", "axis": 0})),
    "log": lambda: (p := _softmax_values(), _calibrated(p, bits=4, quantizer="log", quantizer_options={"taus": [2]})),
    "twin_softmax": lambda: (p := _softmax_values(), _calibrated(p, bits=6, quantizer="twin_softmax")),
    "twin_gelu": lambda: (g := _gelu_values(), _calibrated(g, bits=6, quantizer="twin_gelu")),
}


@pytest.mark.parametrize("case", sorted(HISTOGRAM_CASES))
def test_site_histogram_for_each_quantizer_kind(tmp_path: Path, case: str) -> None:
    torch.manual_seed(RNG_SEED)
    values, quantizer = HISTOGRAM_CASES[case]()
    stem = tmp_path / "nested" / case
    _assert_plot(plots.plot_site_histogram(values, quantizer, f"site {case}", stem), stem)


def test_site_histogram_shows_zeros_of_a_log_site_and_rejects_negative_values(tmp_path: Path) -> None:
    probs = torch.cat([_softmax_values(), torch.zeros(2, 50)])
    quantizer = _calibrated(probs, bits=4, quantizer="log", quantizer_options={"taus": [1, 2]})
    _assert_plot(plots.plot_site_histogram(probs, quantizer, "with zeros", tmp_path / "zeros"), tmp_path / "zeros")
    with pytest.raises(AnalysisError, match="must be >= 0"):
        plots.plot_site_histogram(probs - 0.5, quantizer, "negative", tmp_path / "negative")


@pytest.mark.parametrize("values, message", [
    (torch.empty(0), "empty"),
    (torch.tensor([1.0, float("inf")]), "NaN or Inf"),
])
def test_site_histogram_rejects_bad_values(tmp_path: Path, values, message) -> None:
    quantizer = _calibrated(torch.randn(100), bits=8)
    with pytest.raises(AnalysisError, match=message):
        plots.plot_site_histogram(values, quantizer, "bad", tmp_path / "bad")


def test_site_histogram_needs_a_calibrated_quantizer(tmp_path: Path) -> None:
    with pytest.raises(AnalysisError, match="not calibrated"):
        plots.plot_site_histogram(torch.randn(100), build_quantizer(QuantSpec(bits=8)), "x", tmp_path / "x")
    assert not list(tmp_path.iterdir())


def _bimodal_keys() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(RNG_SEED)
    signs = torch.where(torch.rand(32, generator=generator) < 0.5, -1.0, 1.0)
    keys = (torch.randn(512, 32, generator=generator) * 0.4 + 1.5) * signs
    return keys.reshape(-1), (keys * signs).reshape(-1)


def test_bimodal_keys(tmp_path: Path) -> None:
    before, after = _bimodal_keys()
    detection, detection_after = detect_bimodal(before), detect_bimodal(after)
    assert detection.is_bimodal and not detection_after.is_bimodal  # the data the plot is meant for
    stem = tmp_path / "bimodal"
    files = plots.plot_bimodal_keys(before, after, detection, "layer 0 keys", stem, detection_after=detection_after)
    _assert_plot(files, stem)
    with pytest.raises(AnalysisError, match="keys after is empty"):
        plots.plot_bimodal_keys(before, torch.empty(0), detection, "layer 0 keys", tmp_path / "bad")


def test_softmax_distributions_with_zeros_and_different_sample_sizes(tmp_path: Path) -> None:
    values = {
        "image_encoder.blocks.0.attn.probs": _softmax_values(4000),
        "mask_decoder.transformer.layers.0.self_attn.probs": torch.cat([_softmax_values(500), torch.zeros(1, 50)]),
        "mask_decoder.transformer.final_attn_token_to_image.probs": _softmax_values(1000).numpy(),
    }
    stem = tmp_path / "softmax"
    _assert_plot(plots.plot_softmax_distributions(values, stem), stem)


@pytest.mark.parametrize("values, message", [
    ({}, "is empty"),
    ({"a.probs": torch.tensor([0.5, -0.1])}, "negative values at"),
    ({"a.probs": torch.zeros(10)}, "every post-softmax value is 0"),
])
def test_softmax_distributions_reject_bad_values(tmp_path: Path, values, message) -> None:
    with pytest.raises(AnalysisError, match=message):
        plots.plot_softmax_distributions(values, tmp_path / "bad")


def test_sensitivity_shows_the_top_sites(tmp_path: Path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    errors = {f"mask_decoder.transformer.layers.{i}.self_attn.{kind}": float(rng.uniform(1e-4, 1.0) ** 2)
              for i in range(9) for kind in ("q_proj.input", "q_proj.weight", "probs", "key", "value")}
    stem = tmp_path / "sensitivity"
    tall = _assert_plot(plots.plot_sensitivity(errors, stem, top=30), stem)
    fewer = _assert_plot(plots.plot_sensitivity(errors, tmp_path / "top3", top=3), tmp_path / "top3")
    assert fewer.shape[0] < tall.shape[0]  # the figure grows with the bars shown


@pytest.mark.parametrize("errors, top, message", [
    ({}, 30, "is empty"),
    ({"a.input": float("nan")}, 30, "bad values at"),
    ({"a.input": -1.0}, 30, "bad values at"),
    ({"a.input": 0.1}, 0, "top must be"),
])
def test_sensitivity_rejects_bad_input(tmp_path: Path, errors, top, message) -> None:
    with pytest.raises(AnalysisError, match=message):
        plots.plot_sensitivity(errors, tmp_path / "bad", top=top)


def test_bit_width_order() -> None:
    assert plots.bit_width_order(["W8A8", "w4a4", "W6A6", "W8A4", "W4A4", "W16A16"]) == [
        "W4A4", "W6A6", "W8A4", "W8A8", "W16A16"]
    with pytest.raises(AnalysisError, match="W<bits>A<bits>"):
        plots.bit_width_order(["W8"])


def test_degradation_is_deterministic_and_has_one_panel_per_metric_present(tmp_path: Path) -> None:
    first = plots.plot_degradation(ROWS, tmp_path / "a")
    three = _assert_plot(first, tmp_path / "a")
    shuffled = ROWS[:]
    random.Random(RNG_SEED).shuffle(shuffled)
    second = plots.plot_degradation(shuffled, tmp_path / "b")
    assert first.png.read_bytes() == second.png.read_bytes()
    assert first.pdf.read_bytes() == second.pdf.read_bytes()
    miou_only = [{k: v for k, v in row.items() if k not in ("AP", "agreement")} for row in ROWS]
    one = _assert_plot(plots.plot_degradation(miou_only, tmp_path / "one"), tmp_path / "one")
    assert one.shape[1] < three.shape[1]


def test_degradation_draws_the_spread_over_calibration_sets(tmp_path: Path) -> None:
    plain = plots.plot_degradation(ROWS, tmp_path / "plain")
    spread = [{**row, "miou_min": row["miou"] - 0.02, "miou_max": row["miou"] + 0.01} if row["recipe"] != "float"
              else row for row in ROWS]
    bars = plots.plot_degradation(spread, tmp_path / "bars")
    assert _assert_plot(bars, tmp_path / "bars").shape == _assert_plot(plain, tmp_path / "plain").shape
    assert bars.png.read_bytes() != plain.png.read_bytes()


def test_degradation_with_several_models(tmp_path: Path) -> None:
    rows = ROWS + [{**row, "model": "tinysam", "miou": row["miou"] - 0.05} for row in ROWS]
    _assert_plot(plots.plot_degradation(rows, tmp_path / "models"), tmp_path / "models")


@pytest.mark.parametrize("rows, message", [
    ([], "no report rows"),
    ([{"model": "m", "recipe": "minmax"}], "lacks"),
    ([{"model": "m", "recipe": "minmax", "bits": "W8A8", "loss": 1.0}], "no row has any of the metrics"),
    ([{"model": "m", "recipe": "float", "bits": "float", "miou": 0.7}], "only float"),
    ([{"model": "m", "recipe": "minmax", "bits": "8bit", "miou": 0.7}], "W<bits>A<bits>"),
    ([{"model": "m", "recipe": "minmax", "bits": "W8A8", "miou": 0.7},
      {"model": "m", "recipe": "minmax", "bits": "w8a8", "miou": 0.6}], "several rows"),
])
def test_degradation_rejects_bad_rows(tmp_path: Path, rows, message) -> None:
    with pytest.raises(AnalysisError, match=message):
        plots.plot_degradation(rows, tmp_path / "bad")


def test_plot_report_reads_a_sweep_report(tmp_path: Path) -> None:
    report = tmp_path / "sweep" / "report.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"settings": {"model": "testbed"}, "rows": ROWS}))
    files = plots.plot_report(report, tmp_path / "figures")
    _assert_plot(files, tmp_path / "figures" / "degradation")
    with pytest.raises(AnalysisError, match="cannot read report"):
        plots.plot_report(tmp_path / "missing.json", tmp_path / "figures")
    report.write_text(json.dumps({"settings": {}}))
    with pytest.raises(AnalysisError, match="no 'rows' list"):
        plots.plot_report(report, tmp_path / "figures")
