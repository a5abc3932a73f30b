"""ptqsam: post-training quantization research toolkit for SAM, TinySAM and MobileSAM.

The Python API mirrors the command line and is importable from here; bits are the command line's
labels (``"W4A4"``) or ``w_bits, a_bits`` as the library takes them::

    from ptqsam import build_model, calibrate, calibration_samples, evaluate, quantizing, run_sweep

    model = build_model("testbed")                                   # any command's --model / --checkpoint
    report = calibrate(model, "ptq4sam", "W4A4", samples)            # ptqsam calibrate
    with quantizing(model):
        result = evaluate(model, dataset)                            # ptqsam evaluate
    rows = run_sweep("sweep.yaml", out="results/x")                 # ptqsam sweep

| command | Python |
|---|---|
| ``calibrate`` | :func:`calibrate`, :func:`save_calibrated` |
| ``evaluate`` | :func:`load_calibrated`, :func:`calibrated_quantizing` or :func:`quantizing`, :func:`evaluate` |
| ``sweep`` / ``plot`` | :func:`run_sweep` / :func:`plot_report` |
| ``inspect`` | :func:`site_inventory`, :func:`site_statistics` |
| ``sensitivity`` | :func:`sensitivity_study` |
| ``allocate`` | :func:`allocate_bits` |
| ``accuracy-control`` | :func:`accuracy_control` |
| ``pareto`` | :func:`pareto_front` |
| ``demo`` | :func:`run_demo` |

Names are imported on first use (``import ptqsam`` stays light; the CLI's ``--help`` too).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: exported name -> the module defining it (imported on first access)
_EXPORTS = {
    "build_model": "ptqsam.models.zoo",
    "load_recipe": "ptqsam.instrument.recipe",
    "shipped_recipes": "ptqsam.instrument.recipe",
    "Recipe": "ptqsam.instrument.recipe",
    "generate_dataset": "ptqsam.data.synthetic",
    "CocoDataset": "ptqsam.data.coco",
    "Detections": "ptqsam.data.prompts",
    "calibration_samples": "ptqsam.data.samples",
    "calibrate": "ptqsam.api",
    "save_calibrated": "ptqsam.api",
    "load_calibrated": "ptqsam.calibration.saved",
    "calibrated_quantizing": "ptqsam.calibration.saved",
    "quantizing": "ptqsam.instrument.modes",
    "evaluate": "ptqsam.evaluation.evaluator",
    "EvalOptions": "ptqsam.evaluation.evaluator",
    "site_inventory": "ptqsam.instrument.inventory",
    "site_statistics": "ptqsam.analysis.activations",
    "sensitivity_study": "ptqsam.api",
    "allocate_bits": "ptqsam.api",
    "accuracy_control": "ptqsam.api",
    "pareto_front": "ptqsam.api",
    "ExperimentConfig": "ptqsam.config",
    "run_sweep": "ptqsam.api",
    "plot_report": "ptqsam.plots.charts",
    "run_demo": "ptqsam.api",
    "parse_bits": "ptqsam.bits",
    "bits_label": "ptqsam.bits",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ptqsam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
