"""Activation analysis: float statistics of sites, per-site quantization error, quantizer grids;
sensitivity of the model to quantizing each group of sites."""

from ptqsam.analysis.activations import (SiteStats, ValueSampler, collect_site_values, decoder_keys,
                                         site_quantization_error, site_statistics)
from ptqsam.analysis.grids import GridLevels, grid_levels
from ptqsam.analysis.groups import GRANULARITIES, ROLES, Group, model_groups
from ptqsam.analysis.sensitivity import (METRICS, MODES, Damage, SensitivityResult, SensitivityRow, load_sensitivity,
                                         sensitivity_study)

__all__ = [
    "GRANULARITIES", "METRICS", "MODES", "ROLES", "Damage", "Group", "SensitivityResult", "SensitivityRow",
    "load_sensitivity", "model_groups", "sensitivity_study",
    "GridLevels", "SiteStats", "ValueSampler", "collect_site_values", "decoder_keys", "grid_levels",
    "site_quantization_error", "site_statistics",
]
