"""Sweeps: resume, determinism, atomic cells, float baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ptqsam.config import ExperimentConfig
from ptqsam.evaluation import evaluator
from ptqsam.data.selection import calibration_dataset_for
from ptqsam.sweep import cells, run_sweep


def _config(tmp_path, **changes):
    base = dict(recipes=["minmax"], bits=["w8a8", "W4A4"], synthetic_images=3, calib_images=2, out=str(tmp_path))
    return ExperimentConfig.from_dict({**base, **changes})


def test_cells_include_float_and_normalise_bits(tmp_path):
    names = [c.file_name for c in cells(_config(tmp_path))]
    assert names == ["testbed__float__float.json", "testbed__minmax__W8A8.json", "testbed__minmax__W4A4.json"]


def test_sweep_resume_determinism_and_baseline(tmp_path, random_testbed):
    first = run_sweep(_config(tmp_path / "a"), progress=False)
    by_bits = {row["bits"]: row for row in first}
    assert by_bits["float"]["delta_miou"] == 0.0
    assert by_bits["W8A8"]["agreement"] > by_bits["W4A4"]["agreement"]
    for ext in ("json", "csv", "md"):
        assert (tmp_path / "a" / f"report.{ext}").stat().st_size > 0
    settings = json.loads((tmp_path / "a" / "report.json").read_text())["settings"]
    assert "skipped" in settings and settings["eval_image_ids"]

    cell = tmp_path / "a" / "cells" / "testbed__minmax__W4A4.json"
    stamp = (tmp_path / "a" / "cells" / "testbed__minmax__W8A8.json").stat().st_mtime_ns
    cell.unlink()
    assert run_sweep(_config(tmp_path / "a"), progress=False) == first  # only the missing cell re-runs
    assert (tmp_path / "a" / "cells" / "testbed__minmax__W8A8.json").stat().st_mtime_ns == stamp
    assert run_sweep(_config(tmp_path / "b"), progress=False) == first  # same config and seed, same numbers


def test_interrupted_sweep_leaves_only_complete_files(tmp_path, random_testbed, monkeypatch):
    calls = {"n": 0}
    real = evaluator.evaluate

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr("ptqsam.sweep.evaluate", failing)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_config(tmp_path), progress=False)
    files = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert files == ["testbed__float__float.json"]
    json.loads((tmp_path / "cells" / files[0]).read_text())  # complete JSON
    monkeypatch.setattr("ptqsam.sweep.evaluate", real)
    rows = run_sweep(_config(tmp_path), progress=False)
    assert len(rows) == 3


def test_unknown_recipe_fails_before_any_work(tmp_path):
    from ptqsam.errors import RecipeError

    with pytest.raises(RecipeError, match="nope"):
        run_sweep(_config(tmp_path, recipes=["nope"]), progress=False)
    assert not (tmp_path / "cells").exists()


def _pixels(dataset):
    return [sample.image for sample in dataset.samples()]


def test_sweep_calibrates_on_the_calibration_set(tmp_path, tiny_dataset_dir, random_testbed, monkeypatch):
    import ptqsam.sweep as sweep

    seen = []
    real = sweep.calibrate

    def spy(model, recipe, w, a, samples, *args, **kwargs):
        seen.extend(sample.image for sample in samples)
        return real(model, recipe, w, a, samples, *args, **kwargs)

    monkeypatch.setattr(sweep, "calibrate", spy)
    config = _config(tmp_path, bits=["W8A8"], calib_images_dir=str(tiny_dataset_dir / "images"),
                     calib_annotations=str(tiny_dataset_dir / "annotations.json"))
    run_sweep(config, progress=False)
    record = json.loads((tmp_path / "cells" / "testbed__minmax__W8A8.json").read_text())
    assert record["calibration"]["images_dir"] == str(tiny_dataset_dir / "images")
    calibration = _pixels(calibration_dataset_for(config))
    assert len(seen) == config.calib_images
    assert all(any(np.array_equal(s, c) for c in calibration) for s in seen)
