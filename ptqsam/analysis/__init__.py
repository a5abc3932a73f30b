"""Activation analysis: float statistics of sites, per-site quantization error, quantizer grids."""

from ptqsam.analysis.activations import (SiteStats, ValueSampler, collect_site_values, decoder_keys,
                                         site_quantization_error, site_statistics)
from ptqsam.analysis.grids import GridLevels, grid_levels

__all__ = [
    "GridLevels", "SiteStats", "ValueSampler", "collect_site_values", "decoder_keys", "grid_levels",
    "site_quantization_error", "site_statistics",
]
