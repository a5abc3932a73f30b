"""The Python API importable from ``ptqsam``: every name imports, ``import ptqsam`` stays light, every
function's docstring example runs, and the CLI's bit labels give what ``w_bits, a_bits`` give."""

from __future__ import annotations

import doctest
import inspect
import pkgutil
import subprocess
import sys

import pytest
import torch
import yaml

import ptqsam
from ptqsam import api
from ptqsam.analysis import sensitivity_study
from ptqsam.calibration import calibrate
from ptqsam.data import CocoDataset, generate_dataset
from ptqsam.errors import RecipeError
from ptqsam.instrument import attached_quantizers
from ptqsam.models import build_model

FUNCTIONS = [name for name in ptqsam.__all__ if inspect.isfunction(getattr(ptqsam, name))]


def test_every_exported_name_imports():
    namespace: dict = {}
    exec("from ptqsam import *", namespace)
    assert set(ptqsam.__all__) <= set(namespace)
    assert {"build_model", "calibrate", "save_calibrated", "load_calibrated", "evaluate", "run_sweep",
            "plot_report", "site_inventory", "run_demo", "load_recipe"} <= set(FUNCTIONS)
    with pytest.raises(AttributeError, match="no_such_name"):
        ptqsam.no_such_name  # noqa: B018


def test_no_exported_name_is_a_submodule():
    """Importing ``ptqsam.sweep`` sets the attribute ``ptqsam.sweep``: an export of that name would flip."""
    submodules = {info.name for info in pkgutil.iter_modules(ptqsam.__path__)}
    assert not submodules & set(ptqsam.__all__)


def test_import_ptqsam_imports_no_torch():
    code = "import sys, ptqsam; print(sorted(m for m in ('torch', 'numpy', 'ptqsam.api') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _namespace(tmp_path, monkeypatch) -> dict:
    """What the examples start from (the walk-through of :mod:`ptqsam.api`), in a fresh folder."""
    monkeypatch.chdir(tmp_path)
    data = generate_dataset("synthetic", count=2, seed=0)
    dataset = CocoDataset(data.images_dir, data.annotations_path)
    return {"data": data, "dataset": dataset, "samples": ptqsam.calibration_samples(dataset, 1, seed=0),
            "model": build_model("testbed")}


def _examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(recurse=False)
    tests = [test for name in FUNCTIONS for test in finder.find(getattr(ptqsam, name), name)]
    return tests + [t for t in doctest.DocTestFinder().find(api) if t.examples and t.name.rpartition(".")[2] not in FUNCTIONS]


def test_every_exported_function_has_an_example():
    documented = {test.name.rpartition(".")[2] for test in _examples() if test.examples}
    assert set(FUNCTIONS) <= documented, set(FUNCTIONS) - documented


@pytest.mark.parametrize("test", _examples(), ids=lambda t: t.name)
def test_docstring_example_runs(test, tmp_path, monkeypatch):
    test.globs = {**test.globs, **_namespace(tmp_path, monkeypatch)}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test, out=lambda text: pytest.fail(text))
    assert runner.summarize(verbose=False).failed == 0


def _states(model) -> dict[str, torch.Tensor]:
    return {f"{site}.{key}": value for site, q in attached_quantizers(model).items()
            for key, value in q.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_labels_and_ints_calibrate_and_save_alike(tiny_dataset, random_testbed, tmp_path):
    samples = ptqsam.calibration_samples(tiny_dataset, 1, seed=0)
    states, files = [], []
    for index, bits in enumerate([("W4A6",), ("w4a6",), ((4, 6),), (4, 6)]):
        model = random_testbed()
        report = api.calibrate(model, "minmax", *bits, samples, progress=False)
        states.append(_states(model))
        path = tmp_path / f"{index}.pt"
        api.save_calibrated(model, path, report, "minmax", "testbed", *bits)
        files.append(ptqsam.load_calibrated(random_testbed(), path))
    model = random_testbed()
    calibrate(model, "minmax", 4, 6, samples, progress=False)
    for state in states:
        _assert_same(state, _states(model))
    assert {(info.w_bits, info.a_bits, info.fingerprint["hash"]) for info in files} == \
        {(4, 6, files[0].fingerprint["hash"])}


@pytest.mark.parametrize("bits, message", [("8 bits", "must look like 'W8A8'"), ("W1A8", "weight bits"),
                                           ((8,), "pair"), ((8, 8, 8), "pair")])
def test_bad_bits_are_refused(bits, message, random_testbed, tiny_dataset):
    with pytest.raises(RecipeError, match=message):
        api.calibrate(random_testbed(), "minmax", bits, ptqsam.calibration_samples(tiny_dataset, 1, seed=0))


def test_sensitivity_labels_and_pairs_alike(tiny_dataset, random_testbed):
    samples = ptqsam.calibration_samples(tiny_dataset, 1, seed=0)
    by_label = api.sensitivity_study(random_testbed(), "minmax", "W4A4,W8A8", samples, "block")
    by_pair = sensitivity_study(random_testbed(), "minmax", [(4, 4), (8, 8)], samples, "block")
    assert by_label.settings["bits"] == ["W4A4", "W8A8"]
    assert [(r.group, r.w_bits, r.a_bits, r.damage) for r in by_label.rows] == \
        [(r.group, r.w_bits, r.a_bits, r.damage) for r in by_pair.rows]


def test_a_sweep_from_a_mapping_a_config_or_a_file_alike(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fields = {"recipes": ["minmax"], "bits": ["W4A4"], "synthetic_images": 2, "calib_images": 1}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**fields, "out": "ignored"}))
    runs = [api.run_sweep(fields, progress=False, out="a"),
            api.run_sweep(ptqsam.ExperimentConfig.from_dict({**fields, "out": "b"}), progress=False),
            api.run_sweep("sweep.yaml", progress=False, out="c")]
    assert not (tmp_path / "ignored").exists()
    for rows in runs[1:]:
        assert [{k: v for k, v in row.items() if k != "fingerprint"} for row in rows] == \
            [{k: v for k, v in row.items() if k != "fingerprint"} for row in runs[0]]
