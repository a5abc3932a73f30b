"""Calibration images: drawn by seed, and images without a usable instance replaced."""

from __future__ import annotations

import json
import shutil

from ptqsam.data import CocoDataset, generate_dataset
from ptqsam.data.samples import calibration_samples, choose_image_ids


def _dataset(root, count: int, unusable: set[int]) -> CocoDataset:
    """A generated dataset whose images ``unusable`` have no annotation left."""
    generate_dataset(root, count=count, seed=2, image_size=64)
    data = json.loads((root / "annotations.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in unusable]
    (root / "annotations.json").write_text(json.dumps(data))
    return CocoDataset(root / "images", root / "annotations.json")


def test_images_without_instances_are_replaced_by_further_draws_of_the_seed(tmp_path):
    complete = _dataset(tmp_path / "complete", 10, set())
    for seed in range(6):
        drawn = choose_image_ids(complete, 4, seed)
        assert [s.image_id for s in calibration_samples(complete, 4, seed)] == drawn  # nothing to replace
        unusable = set(drawn[:2])
        root = tmp_path / f"seed{seed}"
        shutil.rmtree(root, ignore_errors=True)
        partial = _dataset(root, 10, unusable)
        used = [s.image_id for s in calibration_samples(partial, 4, seed)]
        assert len(used) == 4 and not unusable & set(used) and set(drawn[2:]) <= set(used)
        assert used == sorted(used) and used == [s.image_id for s in calibration_samples(partial, 4, seed)]


def test_fewer_usable_images_than_asked_uses_them_all(tmp_path, caplog):
    dataset = _dataset(tmp_path, 6, {1, 2, 3})
    assert [s.image_id for s in calibration_samples(dataset, 5, 0)] == [4, 5, 6]
    assert "5 calibration images asked for, 3 used: only 3 of the dataset's 6 image(s)" in caplog.text
