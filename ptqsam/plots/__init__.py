"""Figures: :mod:`.charts` draws from data (histograms with grids, BIG keys, softmax values,
sensitivity, degradation curves); :mod:`.cell` makes the figures of one finished sweep cell."""

from ptqsam.plots.charts import (DPI, PlotFiles, bit_width_order, plot_bimodal_keys, plot_degradation, plot_report,
                                 plot_sensitivity, plot_site_histogram, plot_softmax_distributions)

__all__ = ["DPI", "PlotFiles", "bit_width_order", "plot_bimodal_keys", "plot_degradation", "plot_report",
           "plot_sensitivity", "plot_site_histogram", "plot_softmax_distributions"]
