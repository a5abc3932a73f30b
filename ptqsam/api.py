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

from ptqsam.bits import parse_bits, parse_bits_list
from ptqsam.errors import RecipeError

if TYPE_CHECKING:
    from ptqsam.analysis.sensitivity import SensitivityResult
    from ptqsam.calibration.runner import CalibrationReport
    from ptqsam.config import ExperimentConfig
    from ptqsam.instrument.recipe import Recipe
    from ptqsam.mixed_precision.allocation import Allocation

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

    return study(model, recipe, bits_list(bits), samples, *args, **kwargs)


def bits_list(bits: str | Sequence[str | tuple[int, int]]) -> list[tuple[int, int]]:
    """Bit-widths as ``--bits`` takes them (``"W4A4,W8A8"``), or a list of labels or pairs.

    >>> bits_list("W4A4,W8A8") == bits_list(["W4A4", (8, 8)]) == [(4, 4), (8, 8)]
    True
    """
    return parse_bits_list(bits) if isinstance(bits, str) else [bit_arguments(b, []) for b in bits]


def allocate_bits(study: "SensitivityResult | str | Path", budgets: str | Sequence[str], metric: str = "mse",
                  candidates: Sequence[int] | None = None, name: str | None = None, out: str | Path | None = None,
                  model: Any = None) -> tuple["Allocation", "Recipe"]:
    """``ptqsam allocate STUDY --budget ...``: bits per group of a sensitivity study (a result or
    the folder ``ptqsam sensitivity`` wrote) under budgets (``"W6A6"`` or ``"size_mb=1.5"``, one or
    a list), as :func:`ptqsam.mixed_precision.allocate` chooses them; the allocation and the mixed
    recipe (written to ``out`` when given). ``model``: the float model the study measured (default:
    the one its folder records).

    >>> study = sensitivity_study(model, "minmax", "W4A4,W8A8", samples, "block")
    >>> allocation, recipe = allocate_bits(study, "W6A6", out="mixed.yaml", model=model)
    >>> allocation.costs["weight_bits"] <= 6, sorted({rule.spec["bits"] for rule in recipe.rules})
    (True, [4, 8])
    """
    from ptqsam.mixed_precision.recipes import write_recipe
    from ptqsam.mixed_precision.workflow import allocate_study

    result = _study(study)
    allocation, recipe, comments = allocate_study(result, _study_model(result, model), _texts(budgets), metric,
                                                  name, candidates)
    if out is not None:
        write_recipe(out, recipe, comments)
    return allocation, recipe


def accuracy_control(study: "SensitivityResult | str | Path", target: float, start: str = "W4A4",
                     raise_to: str = "W8A8", control_images: int = 16, max_steps: int | None = None,
                     metric: str = "mse", model: Any = None,
                     config: "ExperimentConfig | Mapping[str, Any] | None" = None,
                     **changes: Any) -> tuple[dict[str, Any], "Recipe"]:
    """``ptqsam accuracy-control STUDY --target ...``: from uniform ``start``, raise the study's most
    sensitive groups to ``raise_to`` (a label or ``"float"``) until the mIoU loss on
    ``control_images`` held-out images is within ``target``. The data: ``config`` (default: the
    study's settings on the command's data, :data:`ptqsam.constants.CONTROL_DEFAULTS`; it must
    calibrate on the study's images) with ``changes`` (``images=``,
    ``synthetic_images=``, ``out=``, ...); writes ``recipe.yaml`` and ``control.json`` under its
    ``out``. Returns the summary the command prints and the recipe (the step loop alone is
    :func:`ptqsam.mixed_precision.accuracy_control`).

    >>> study = sensitivity_study(model, "minmax", "W4A4,W8A8", samples, "block")
    >>> given = {"images": str(data.images_dir), "annotations": str(data.annotations_path), "calib_images": 1}
    >>> summary, recipe = accuracy_control(study, 1.0, control_images=1, model=model, config=given, out="control")
    >>> summary["reached"], summary["verify_images"], recipe.name
    (True, 1, 'minmax-control-1.0')
    """
    from ptqsam.constants import CONTROL_DEFAULTS
    from ptqsam.mixed_precision.workflow import check_control, control_bits, control_study, write_control

    check_control(target, control_images, max_steps)  # before the study is read
    low, high = control_bits(start, raise_to)
    result = _study(study)
    if config is None:  # as the command: the study's settings, the command's data
        config = {**result.settings.get("config", {}), "images": None, "annotations": None, **CONTROL_DEFAULTS}
    config = experiment_config(config, **changes)
    summary, recipe, comments = control_study(result, _study_model(result, model, config.device), config,
                                              low, high, target, control_images, max_steps,
                                              metric, Path(config.out) / "recipe.yaml")
    write_control(config.out, summary, recipe, comments)
    return summary, recipe


def pareto_front(recipe: str = "ptq4sam", bits: str | Sequence[str | tuple[int, int]] = "W4A4,W6A6,W8A8",
                 mixed: Sequence[str | Path] = (), checkpoint: str | None = None,
                 config: "ExperimentConfig | Mapping[str, Any] | None" = None,
                 **changes: Any) -> list[dict[str, Any]]:
    """``ptqsam pareto``: size, BOPs and mIoU of ``recipe`` at each uniform bit-width and of each
    mixed recipe YAML (from :func:`allocate_bits` or :func:`accuracy_control`), calibrated and
    evaluated alike on the config's first model and data (default: the command's:
    :data:`ptqsam.constants.PARETO_DEFAULTS`), with ``changes`` (``models=``, ``calib_images=``,
    ``out=``, ...). Returns the rows (float first), also written to ``out/pareto.*``.

    >>> rows = pareto_front("minmax", "W8A8", synthetic_images=2, calib_images=1, out="pareto")
    >>> [(row["label"], row["bits"]) for row in rows]
    [('float', 'float'), ('minmax W8A8', 'W8A8')]
    """
    from ptqsam.constants import PARETO_DEFAULTS
    from ptqsam.mixed_precision.workflow import pareto_run, write_pareto_study

    config = experiment_config(PARETO_DEFAULTS if config is None else config, **changes)
    rows, settings = pareto_run(config, recipe, bits_list(bits), [str(path) for path in mixed], checkpoint)
    write_pareto_study(rows, settings, Path(config.out))
    return rows


def experiment_config(config: "ExperimentConfig | Mapping[str, Any] | str | Path",
                      **changes: Any) -> "ExperimentConfig":
    """An :class:`~ptqsam.config.ExperimentConfig` given as one, as its fields, or as a YAML file,
    with ``changes`` replacing fields.

    >>> experiment_config({"bits": "W4A4"}, seed=3).seed
    3
    """
    from ptqsam.config import ExperimentConfig

    if isinstance(config, (str, Path)):
        config = ExperimentConfig.from_yaml(config)
    elif not isinstance(config, ExperimentConfig):
        config = ExperimentConfig.from_dict(config)
    return config.replace(**changes) if changes else config


def _study(study: "SensitivityResult | str | Path") -> "SensitivityResult":
    from ptqsam.analysis.sensitivity import load_sensitivity

    return load_sensitivity(study) if isinstance(study, (str, Path)) else study


def _study_model(result: "SensitivityResult", model: Any, device: str = "cpu") -> Any:
    from ptqsam.mixed_precision.workflow import study_model

    return study_model(result, device) if model is None else model


def _texts(texts: str | Sequence[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


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
    from ptqsam.sweep import run_sweep as run

    return run(experiment_config(config, **changes), progress)


def run_demo(progress: bool = True, **options: Any) -> list[dict[str, Any]]:
    """``ptqsam demo``: the demo's sweep (options: those of :func:`ptqsam.demo.demo_config`, e.g.
    ``recipes``, ``bits``, ``images``, ``calib_sets``, ``out``) and its figures under ``out/plots``;
    returns the report's rows. With worker processes (the demo's default: 2) a script calling it
    needs the ``if __name__ == "__main__":`` guard (the workers are spawned and import it).

    >>> rows = run_demo(recipes=["minmax"], bits=["W8A8"], recon_recipe="", images=2, calib_images=1,
    ...                 calib_sets=1, workers=1, out="demo", progress=False)
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
