"""The Python API's thin wrappers: the library functions that take ``w_bits, a_bits`` also take the
command line's bit label (``"W4A4"``, :func:`ptqsam.bits.parse_bits`), and the sweep and the demo
take what their commands take. Everything else is exported from :mod:`ptqsam` as the library
defines it.

The examples run as doctests (``tests/ptqsam/test_api.py``) on the names of this walk-through::

    >>> from ptqsam import build_model, calibration_samples, CocoDataset, generate_dataset
    >>> data = generate_dataset("synthetic", count=2, seed=0)
    >>> dataset = CocoDataset(data.images_dir, data.annotations_path)
    >>> samples = calibration_samples(dataset, count=1, seed=0)
    >>> model = build_model("testbed")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

from ptqsam.bits import parse_bits
from ptqsam.errors import RecipeError

if TYPE_CHECKING:
    from ptqsam.analysis.sensitivity import SensitivityResult
    from ptqsam.calibration.runner import CalibrationReport
    from ptqsam.config import ExperimentConfig

#: bits as the command line writes them (``"W4A8"``), as a pair ``(4, 8)``, or ``w_bits`` followed by
#: ``a_bits`` among the positional arguments
Bits = Union[str, tuple[int, int], int]


def bit_arguments(bits: Bits, rest: Sequence[Any]) -> tuple[Any, ...]:
    """``bits`` and the positional arguments after it as ``(w_bits, a_bits, *rest)``: a label or a
    pair is split, an int is ``w_bits`` and ``rest`` starts with ``a_bits``.

    >>> bit_arguments("W4A8", ["samples"]), bit_arguments((4, 8), []), bit_arguments(4, [8, "samples"])
    ((4, 8, 'samples'), (4, 8), (4, 8, 'samples'))
    """
    if isinstance(bits, str):
        return (*parse_bits(bits), *rest)
    if isinstance(bits, tuple):
        if len(bits) != 2:
            raise RecipeError(f"bits as a pair are (w_bits, a_bits), got {bits!r}")
        return (*bits, *rest)
    return (bits, *rest)


def calibrate(model: Any, recipe: Any, bits: Bits, *args: Any,
              **kwargs: Any) -> "CalibrationReport":
    """``ptqsam calibrate``: :func:`ptqsam.calibration.calibrate` with ``bits`` a label, a pair, or
    ``w_bits, a_bits`` as there; the other arguments as there.

    >>> report = calibrate(model, "minmax", "W8A8", samples, progress=False)
    >>> report.image_ids == [samples[0].image_id]
    True
    """
    from ptqsam.calibration.runner import calibrate as run

    return run(model, recipe, *bit_arguments(bits, args), **kwargs)


def save_calibrated(model: Any, path: str | Path, report: "CalibrationReport", recipe: Any, model_type: str,
                    bits: Bits, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The end of ``ptqsam calibrate``: :func:`ptqsam.calibration.save_calibrated` with ``bits`` a
    label, a pair, or ``w_bits, a_bits`` as there. :func:`ptqsam.load_calibrated` loads the file into
    a freshly built model.

    >>> report = calibrate(model, "minmax", "W8A8", samples, progress=False)
    >>> stamp = save_calibrated(model, "minmax_w8a8.pt", report, "minmax", "testbed", "W8A8")
    >>> from ptqsam import build_model, load_calibrated
    >>> load_calibrated(build_model("testbed"), "minmax_w8a8.pt").w_bits
    8
    """
    from ptqsam.calibration.saved import save_calibrated as save

    return save(model, path, report, recipe, model_type, *bit_arguments(bits, args), **kwargs)


def sensitivity_study(model: Any, recipe: Any, bits: str | Sequence[str | tuple[int, int]], samples: Sequence[Any],
                      *args: Any, **kwargs: Any) -> "SensitivityResult":
    """``ptqsam sensitivity``: :func:`ptqsam.analysis.sensitivity_study` with ``bits`` labels
    (``"W4A4,W8A8"`` or a list of labels or pairs); the other arguments as there.

    >>> study = sensitivity_study(model, "minmax", "W8A8", samples, "block")
    >>> study.settings["bits"]
    ['W8A8']
    """
    from ptqsam.analysis.sensitivity import sensitivity_study as study

    labels = [label for label in bits.split(",") if label.strip()] if isinstance(bits, str) else bits
    return study(model, recipe, [bit_arguments(label, []) for label in labels], samples, *args, **kwargs)


def run_sweep(config: "ExperimentConfig | Mapping[str, Any] | str | Path", progress: bool = True,
              **changes: Any) -> list[dict[str, Any]]:
    """``ptqsam sweep CONFIG``: run a sweep given as an :class:`~ptqsam.config.ExperimentConfig`, its
    fields as a mapping, or a YAML file; ``changes`` replace fields (``out=...``, ``device=...``, as
    the command's options do). Returns the report's rows (also written to ``out/report.*``);
    :func:`ptqsam.plot_report` draws them.

    >>> rows = run_sweep({"recipes": ["minmax"], "bits": ["W8A8", "W4A4"], "synthetic_images": 2,
    ...                   "calib_images": 1}, progress=False, out="sweep")
    >>> [(row["recipe"], row["bits"]) for row in rows]
    [('float', 'float'), ('minmax', 'W8A8'), ('minmax', 'W4A4')]
    """
    from ptqsam.config import ExperimentConfig
    from ptqsam.sweep import run_sweep as run

    if isinstance(config, (str, Path)):
        config = ExperimentConfig.from_yaml(config)
    elif not isinstance(config, ExperimentConfig):
        config = ExperimentConfig.from_dict(config)
    return run(config.replace(**changes) if changes else config, progress)


def run_demo(progress: bool = True, **options: Any) -> list[dict[str, Any]]:
    """``ptqsam demo``: the demo's sweep (options: those of :func:`ptqsam.demo.demo_config`, e.g.
    ``recipes``, ``bits``, ``images``, ``calib_sets``, ``out``) and its figures under ``out/plots``;
    returns the report's rows. With worker processes (the demo's default: 2) a script calling it
    needs the ``if __name__ == "__main__":`` guard (the workers are spawned and import it).

    >>> rows = run_demo(recipes=["minmax"], bits=["W8A8"], images=2, calib_images=1, calib_sets=1,
    ...                 workers=1, out="demo", progress=False)
    >>> [row["recipe"] for row in rows]
    ['float', 'minmax']
    """
    from ptqsam.demo import demo_config, demo_figures
    from ptqsam.distributed import is_main
    from ptqsam.sweep import run_sweep as run

    config = demo_config(**options)
    rows = run(config, progress)
    if is_main():
        demo_figures(config)
    return rows
