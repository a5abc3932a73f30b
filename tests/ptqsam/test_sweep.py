"""Sweeps: resume, determinism, atomic cells, float baseline."""

from __future__ import annotations

import json

import numpy as np
import yaml
import pytest
import torch

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
    assert record["runs"][0]["calibration"]["images_dir"] == str(tiny_dataset_dir / "images")
    calibration = _pixels(calibration_dataset_for(config))
    assert len(seen) == config.calib_images
    assert all(any(np.array_equal(s, c) for c in calibration) for s in seen)


def test_k_calibration_sets_give_the_mean_and_spread_of_the_single_runs(tmp_path, random_testbed):
    both = run_sweep(_config(tmp_path / "k2", bits=["W4A4"], calib_sets=2), progress=False)
    singles = [run_sweep(_config(tmp_path / f"s{seed}", bits=["W4A4"], calib_sets=[seed]), progress=False)
               for seed in (0, 1)]
    cell = json.loads((tmp_path / "k2" / "cells" / "testbed__minmax__W4A4.json").read_text())
    assert [run["calib_seed"] for run in cell["runs"]] == [0, 1]
    single_cells = [json.loads((tmp_path / f"s{seed}" / "cells" / "testbed__minmax__W4A4.json").read_text())
                    for seed in (0, 1)]
    for run, single in zip(cell["runs"], single_cells):
        assert run["metrics"] == single["runs"][0]["metrics"]  # the same calibration set, the same numbers
        assert run["instance_ious"] == single["runs"][0]["instance_ious"]
    values = [rows[1]["miou"] for rows in singles]
    assert values[0] != values[1]  # two calibration sets, two results
    row = both[1]
    assert row["miou"] == pytest.approx(np.mean(values), rel=1e-12)
    assert row["miou_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-9)
    assert (row["miou_min"], row["miou_max"]) == (min(values), max(values))
    assert row["agreement"] == pytest.approx(np.mean([rows[1]["agreement"] for rows in singles]), rel=1e-12)
    assert row["calib_sets"] == 2 and "calib_sets" not in both[0]
    assert both[0]["miou_ci_low"] < both[0]["miou"] < both[0]["miou_ci_high"]  # float: bootstrap interval
    assert row["delta_miou_ci_low"] <= row["delta_miou"] <= row["delta_miou_ci_high"]
    assert run_sweep(_config(tmp_path / "k2", bits=["W4A4"], calib_sets=2), progress=False) == both  # deterministic


def test_protocol_float_list_replaces_every_recipe_s_own_and_runs_the_own_list_as_a_variant(tmp_path):
    from ptqsam.instrument.instrument import attach
    from ptqsam.models import build_model
    from ptqsam.sweep import cell_recipe

    config = _config(tmp_path, recipes=["minmax", "ptq4vit", "ptq4sam"], bits=["W8A8"], float_sites="ptq4sam")
    labels = [c.label for c in cells(config)]
    assert labels == ["float", "minmax", "minmax[own-float]", "ptq4vit", "ptq4vit[own-float]", "ptq4sam"]
    assert cells(config)[2].file_name == "testbed__minmax.own-float__W8A8.json"
    assert [c.label for c in cells(config.replace(own_float_variants=False))] == ["float", "minmax", "ptq4vit", "ptq4sam"]
    quantized = {}
    for cell in cells(config)[1:]:
        quantized[cell.label] = set(attach(build_model("testbed"), cell_recipe(config, cell), 8, 8))
    assert quantized["minmax"] == quantized["ptq4vit"] == quantized["ptq4sam"]  # comparable by construction
    assert quantized["minmax[own-float]"] > quantized["minmax"]  # minmax's own list keeps nothing in float
    assert not any(name.startswith("prompt_encoder.") for name in quantized["ptq4vit"])


def test_a_sweep_reports_the_float_list_and_the_quantized_sites(tmp_path, random_testbed):
    rows = run_sweep(_config(tmp_path, bits=["W8A8"], float_sites=["image_encoder.*"]), progress=False)
    by_label = {row["recipe"]: row for row in rows}
    assert by_label["minmax"]["float_list"] == "custom" and by_label["minmax[own-float]"]["float_list"] == "own"
    assert 0 < by_label["minmax"]["quantized_sites"] < by_label["minmax[own-float]"]["quantized_sites"]
    settings = json.loads((tmp_path / "report.json").read_text())["settings"]
    assert settings["protocol_float_list"] == ["image_encoder.*"]
    assert "| minmax[own-float] | W8A8 | own |" in (tmp_path / "report.md").read_text()


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
    rerun(config.replace(reconstruction={"iterations": 3}), set(), None)  # minmax does not reconstruct
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # other float sums: the numbers may move
    try:
        rerun(config, {float_cell, quantized_cell}, "arithmetic.threads")
    finally:
        torch.set_num_threads(threads)
    rerun(config, {float_cell, quantized_cell}, "arithmetic.threads")
    with pytest.MonkeyPatch.context() as patch:  # another CPU model or instruction set: other kernels
        patch.setattr("ptqsam.sweep.machine", lambda device: "GenuineIntel Another CPU (AVX512)")
        rerun(config, {float_cell, quantized_cell}, "arithmetic.machine")
    rerun(config, {float_cell, quantized_cell}, "arithmetic.machine")
    with pytest.MonkeyPatch.context() as patch:  # other ptqsam code, under the same version
        patch.setattr("ptqsam.sweep.code_hash", lambda: "0123456789abcdef")
        rerun(config, {float_cell, quantized_cell}, "code")
    rerun(config, {float_cell, quantized_cell}, "code")
    state = out / "states" / quantized_cell.replace(".json", "__calib0.pt")
    state.write_bytes(state.read_bytes() + b"\0")  # e.g. an interrupted run of other settings saved its own
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ptqsam"):
        rerun(config, {quantized_cell}, None)
    assert "its calibrated state" in caplog.text and "was replaced" in caplog.text
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


def test_worker_processes_give_the_records_of_one_process(tmp_path):
    # the tests run torch on one thread, as every worker does, so the numbers are the same to the bit
    # (the packaged testbed weights: a worker process does not see a test's monkeypatching)
    config = _config(tmp_path / "one", bits=["W8A8", "W4A4"], calib_sets=2)
    one = run_sweep(config, progress=False)
    two = run_sweep(config.replace(out=str(tmp_path / "two"), workers=2), progress=False)
    assert two == one
    assert one[1]["agreement"] > 0.5
    for name in ("testbed__minmax__W8A8.json", "testbed__minmax__W4A4.json"):
        records = [json.loads((tmp_path / run / "cells" / name).read_text()) for run in ("one", "two")]
        assert [r["metrics"] for r in records[0]["runs"]] == [r["metrics"] for r in records[1]["runs"]]


def test_a_failed_worker_cell_lets_the_running_cells_finish_and_raises_after_them():
    import threading
    from concurrent.futures import Future

    from ptqsam.sweep import finished_first

    failed, done, running, waiting = (Future() for _ in range(4))
    failed.set_exception(ValueError("cell broke"))
    done.set_result("done")
    running.set_running_or_notify_cancel()
    threading.Timer(0.2, running.set_result, ("late",)).start()
    got = []
    with pytest.raises(ValueError, match="cell broke"):
        for key, result in finished_first({failed: "f", done: "d", running: "r", waiting: "w"}):
            got.append((key, result))
    assert sorted(got) == [("d", "done"), ("r", "late")]  # yielded, so the sweep writes their cells
    assert waiting.cancelled()  # not started: not computed


def test_cached_embeddings_miss_when_an_image_changes_under_its_name(tmp_path, tiny_dataset_dir, random_testbed,
                                                                     monkeypatch):
    """The disk cache of float embeddings (large evaluations, encoder in float) is keyed by each
    image's content: a rerun after an image changed gives the numbers of a run without the cache."""
    import shutil

    from PIL import Image, ImageOps

    from ptqsam import sweep

    monkeypatch.setattr(sweep, "DISK_CACHE_IMAGES", 0)
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset_dir, data)

    def config(out):
        return _config(tmp_path / out, bits=["W8A8"], calib_images=1, quantize_encoder=False,
                       images=str(data / "images"), annotations=str(data / "annotations.json"))

    run_sweep(config("cached"), progress=False)
    assert any((tmp_path / "cached" / "cache").iterdir())
    image = sorted((data / "images").iterdir())[0]
    ImageOps.invert(Image.open(image).convert("RGB")).save(image)
    rerun = run_sweep(config("cached"), progress=False)  # the cells see new images: computed again
    fresh = run_sweep(config("fresh"), progress=False)
    assert [row["miou"] for row in rerun] == [row["miou"] for row in fresh]


def test_figures_of_a_cell_refuse_a_state_it_was_not_evaluated_with(tmp_path, random_testbed):
    from ptqsam.errors import CheckpointError
    from ptqsam.sweep import evaluated_state

    config = _config(tmp_path, bits=["W8A8"], synthetic_images=2, calib_images=1)
    run_sweep(config, progress=False)
    cell = cells(config)[1]
    state = evaluated_state(config, cell, 0)
    state.write_bytes(state.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="is not the calibrated state cell testbed__minmax__W8A8.json"):
        evaluated_state(config, cell, 0)


def test_the_report_counts_what_the_evaluations_skipped_also_when_resumed(tmp_path, tiny_dataset_dir, random_testbed):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset_dir, data)
    annotations = json.loads((data / "annotations.json").read_text())
    annotations["annotations"][0]["area"] = 0  # skipped as zero_area
    (data / "annotations.json").write_text(json.dumps(annotations))
    config = _config(tmp_path / "out", bits=["W8A8"], calib_images=1, images=str(data / "images"),
                     annotations=str(data / "annotations.json"))
    reports = []
    for _ in range(2):  # the second run reads no image: every cell is done
        run_sweep(config, progress=False)
        reports.append(json.loads((tmp_path / "out" / "report.json").read_text())["settings"]["skipped"])
    assert reports[0] == reports[1] and reports[0]["zero_area"] == 1


def test_torchrun_ranks_that_computed_other_settings_are_refused(monkeypatch):
    from ptqsam import distributed
    from ptqsam.errors import DistributedError
    from ptqsam.fingerprint import fingerprint
    from ptqsam.sweep import Cell, _same_on_every_rank

    mine, other = fingerprint({"data": {"images": "a"}}), fingerprint({"data": {"images": "b"}})
    cell = Cell("testbed", "minmax", "W8A8")
    monkeypatch.setattr(distributed, "all_gather_parts", lambda part: [*part, mine])
    assert _same_on_every_rank(mine, cell) is mine
    monkeypatch.setattr(distributed, "all_gather_parts", lambda part: [*part, other])
    with pytest.raises(DistributedError, match=r"rank 1's settings differ from rank 0's \(data.images\)"):
        _same_on_every_rank(mine, cell)
