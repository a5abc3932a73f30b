"""Figures of one finished sweep cell, measured on the cell's calibration images."""

from __future__ import annotations

from pathlib import Path

from ptqsam.analysis import collect_site_values, site_quantization_error
from ptqsam.calibration import load_calibrated
from ptqsam.config import ExperimentConfig
from ptqsam.data.selection import calibration_set
from ptqsam.models import build_model
from ptqsam.plots.charts import plot_sensitivity, plot_site_histogram
from ptqsam.sweep import Cell, cell_recipe, evaluated_state


def plot_cell_sites(config: ExperimentConfig, cell: Cell, site: str) -> list[Path]:
    """Figures of a finished cell under ``out/plots``: ``site``'s float values with the cell's grid
    over them, and the per-site quantization error (sensitivity) of every calibrated site, both
    measured on the calibration images of the cell's first calibration set (with its state)."""
    model = build_model(cell.model, config.checkpoints.get(cell.model), seed=config.seed).to(config.device)
    seed = config.calibration_seeds()[0]
    info = load_calibrated(model, evaluated_state(config, cell, seed), cell_recipe(config, cell), cell.model)
    _, samples = calibration_set(config, seed)
    values = collect_site_values(model, samples, [site], seed=config.seed)[site].values
    stem = Path(config.out) / "plots" / f"{cell.stem}_{cell.bits}"
    subject = (f"{cell.label} {cell.bits}; {len(samples)} calibration images, "
               f"{sum(len(sample.prompts.ids) for sample in samples)} instances (calibration set {seed})")
    histogram = plot_site_histogram(values, info.quantizers[site], f"{site}\n{subject}",
                                    stem.with_name(f"site_{stem.name}"))
    sensitivity = plot_sensitivity(site_quantization_error(model, samples), stem.with_name(f"sensitivity_{stem.name}"),
                                   subject=subject)
    return [*histogram, *sensitivity]
