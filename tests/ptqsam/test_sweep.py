"""Sweeps: resume, determinism, atomic cells, float baseline."""

from __future__ import annotations

import json

import numpy as np
import yaml
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


def _stamps(folder):
    return {p.name: p.stat().st_mtime_ns for p in (folder / "cells").iterdir()}


def test_a_cell_is_reused_only_under_the_settings_that_made_it(tmp_path, random_testbed, caplog):
    import logging

    from ptqsam.instrument.recipe import load_recipe

    recipe = tmp_path / "mine.yaml"
    minmax = load_recipe("minmax")
    recipe.write_text(minmax.to_yaml())
    out = tmp_path / "res"
    config = _config(out, recipes=[str(recipe)], bits=["W8A8"], synthetic_images=2, calib_images=1)
    run_sweep(config, progress=False)
    float_cell, quantized_cell = "testbed__float__float.json", "testbed__mine__W8A8.json"

    def rerun(config, recomputed: set[str], named: str | None) -> list:
        before = _stamps(out)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ptqsam"):
            rows = run_sweep(config, progress=False)
        after = _stamps(out)
        assert {name for name in after if after[name] != before[name]} == recomputed
        if named:
            assert all(f"{name} was computed under other settings" in caplog.text for name in recomputed)
            assert named in caplog.text
        return rows

    rerun(config, set(), None)
    data = minmax.to_dict()
    data["rules"][0]["spec"]["symmetric"] = False  # same file name, other recipe
    recipe.write_text(yaml.safe_dump(data))
    rerun(config, {quantized_cell}, "recipe.rules")
    config = config.replace(calib_images=2)
    rerun(config, {quantized_cell}, "calibration.")
    config = config.replace(synthetic_images=3)
    rows = rerun(config, {float_cell, quantized_cell}, "evaluation.data")
    record = json.loads((out / "cells" / quantized_cell).read_text())
    assert record["fingerprint"]["settings"]["recipe"]["rules"][0]["spec"]["symmetric"] is False
    report = json.loads((out / "report.json").read_text())["settings"]["cell_fingerprints"]
    assert report[f"testbed/{recipe}/W8A8"] == record["fingerprint"]["hash"]
    assert run_sweep(config.replace(out=str(tmp_path / "fresh")), progress=False) == rows  # the new settings' numbers


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"model": "testbed"}', b"[1, 2]"])
def test_an_unreadable_or_unstamped_cell_is_recomputed_with_a_warning(tmp_path, random_testbed, caplog, damage):
    import logging

    config = _config(tmp_path, bits=["W8A8"], synthetic_images=2, calib_images=1)
    first = run_sweep(config, progress=False)
    cell = tmp_path / "cells" / "testbed__minmax__W8A8.json"
    cell.write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="ptqsam"):
        assert run_sweep(config, progress=False) == first
    assert "testbed__minmax__W8A8.json" in caplog.text and "computing it again" in caplog.text
    assert json.loads(cell.read_text())["fingerprint"]["hash"]


def test_two_recipe_files_with_one_name_are_refused(tmp_path):
    from ptqsam.errors import ConfigError
    from ptqsam.instrument.recipe import load_recipe

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "mine.yaml").write_text(load_recipe("minmax").to_yaml())
    config = _config(tmp_path / "res", recipes=[str(tmp_path / "a" / "mine.yaml"), str(tmp_path / "b" / "mine.yaml")])
    with pytest.raises(ConfigError, match="would share cell files"):
        run_sweep(config, progress=False)
    assert not (tmp_path / "res").exists()
