"""Generated datasets cached by (count, seed, generator version): atomic, shared safely between
processes, and regenerated when a cached file is corrupt or half-written."""

from __future__ import annotations

import json
import logging
import multiprocessing

import pytest

from ptqsam.data import CocoDataset
from ptqsam.data.generated import MANIFEST, cache_folder, cache_problem, cached_dataset, generator_key
from ptqsam.data.synthetic import GENERATOR_VERSION


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_folder_is_named_by_the_key_and_holds_a_valid_dataset(tmp_path):
    folder = cached_dataset(tmp_path, 2, 7)
    assert folder == tmp_path / f"synthetic-n2-s7-v{GENERATOR_VERSION}" == cache_folder(tmp_path, 2, 7)
    assert cache_problem(folder, generator_key(2, 7)) is None
    assert len(CocoDataset(folder / "images", folder / "annotations.json")) == 2
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["key"] == {"count": 2, "seed": 7, "version": GENERATOR_VERSION}
    assert sorted(manifest["files"]) == ["annotations.json", "images/000001.png", "images/000002.png"]
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left


def test_other_counts_and_seeds_are_other_folders(tmp_path):
    folders = {cached_dataset(tmp_path, 1, 0), cached_dataset(tmp_path, 2, 0), cached_dataset(tmp_path, 1, 1)}
    assert len(folders) == 3
    one = json.loads((cache_folder(tmp_path, 1, 0) / "annotations.json").read_text())
    other = json.loads((cache_folder(tmp_path, 1, 1) / "annotations.json").read_text())
    assert one["annotations"] != other["annotations"]


def test_a_valid_cache_is_reused_untouched(tmp_path):
    folder = cached_dataset(tmp_path, 1, 0)
    stamp = (folder / "images" / "000001.png").stat().st_mtime_ns
    assert cached_dataset(tmp_path, 1, 0) == folder
    assert (folder / "images" / "000001.png").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("damage, problem", [
    (lambda f: (f / "images" / "000001.png").write_bytes(b"\x89PNG half"), "corrupt or half-written images/000001.png"),
    (lambda f: (f / "annotations.json").write_bytes(b""), "corrupt or half-written annotations.json"),
    (lambda f: (f / "images" / "000002.png").unlink(), "lacks images/000002.png"),
    (lambda f: (f / MANIFEST).unlink(), "has no manifest"),
    (lambda f: (f / MANIFEST).write_text("{"), "unreadable manifest"),
    (lambda f: (f / MANIFEST).write_text(json.dumps({"key": generator_key(2, 1), "files": {}})), "another key"),
])
def test_a_damaged_cache_is_regenerated_with_a_warning(tmp_path, caplog, damage, problem):
    folder = cached_dataset(tmp_path, 2, 0)
    intact = _snapshot(folder)
    damage(folder)
    assert problem in cache_problem(folder, generator_key(2, 0))
    with caplog.at_level(logging.WARNING, logger="ptqsam"):
        assert cached_dataset(tmp_path, 2, 0) == folder
    assert problem in caplog.text and "generating it again" in caplog.text
    assert _snapshot(folder) == intact  # byte-identical to the first generation
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_a_file_in_the_folder_s_place_is_replaced(tmp_path):
    cache_folder(tmp_path, 1, 0).write_text("not a folder")
    folder = cached_dataset(tmp_path, 1, 0)
    assert folder.is_dir() and cache_problem(folder, generator_key(1, 0)) is None


def _generate(root, barrier, results):
    barrier.wait()  # both processes start generating at the same moment
    folder = cached_dataset(root, 3, 5)
    results.put((str(folder), cache_problem(folder, generator_key(3, 5))))


def test_two_processes_generating_at_once_both_end_with_a_valid_dataset(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_generate, args=(tmp_path, barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    outcomes = [results.get(timeout=5) for _ in workers]
    assert outcomes == [(str(cache_folder(tmp_path, 3, 5)), None)] * 2
    assert [p.name for p in tmp_path.iterdir()] == [cache_folder(tmp_path, 3, 5).name]
    assert len(CocoDataset(cache_folder(tmp_path, 3, 5) / "images",
                           cache_folder(tmp_path, 3, 5) / "annotations.json")) == 3
