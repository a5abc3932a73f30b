"""Synthetic dataset: determinism, COCO validity, size-bucket coverage, occlusion, splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ptqsam.data import CATEGORIES, CocoDataset, generate_dataset, split_ids, visible_masks
from ptqsam.errors import DataError


@pytest.fixture(scope="module")
def fifty(tmp_path_factory: pytest.TempPathFactory):
    return generate_dataset(tmp_path_factory.mktemp("fifty"), count=50, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_and_count_give_identical_bytes(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", count=4, seed=11, image_size=128)
    b = generate_dataset(tmp_path / "b", count=4, seed=11, image_size=128)
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(files_a) == ["annotations.json"] + [f"images/{i:06d}.png" for i in range(1, 5)]
    assert files_a == files_b
    for name in files_a:
        if name.endswith(".png"):
            np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / name)),
                                          np.asarray(Image.open(tmp_path / "b" / name)))
    assert a.num_annotations == b.num_annotations > 0
    c = generate_dataset(tmp_path / "c", count=4, seed=12, image_size=128)
    assert c.annotations_path.read_bytes() != a.annotations_path.read_bytes()


def test_image_does_not_depend_on_count(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "two", count=2, seed=1, image_size=64)
    generate_dataset(tmp_path / "three", count=3, seed=1, image_size=64)
    for i in (1, 2):
        name = f"images/{i:06d}.png"
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "three" / name).read_bytes()


def test_annotations_are_valid_coco(fifty) -> None:
    data = json.loads(fifty.annotations_path.read_text())
    assert [c["name"] for c in data["categories"]] == list(CATEGORIES)
    assert [img["id"] for img in data["images"]] == fifty.image_ids == list(range(1, 51))
    assert len(data["annotations"]) == fifty.num_annotations
    assert [a["id"] for a in data["annotations"]] == list(range(1, fifty.num_annotations + 1))
    for ann in data["annotations"][:40]:
        mask = mask_utils.decode(ann["segmentation"])
        assert mask.shape == (256, 256)
        assert ann["area"] == mask.sum() >= 16
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert {a["category_id"] for a in data["annotations"]} == set(range(1, len(CATEGORIES) + 1))


def test_every_size_bucket_well_represented(fifty) -> None:
    areas = np.array([a["area"] for a in json.loads(fifty.annotations_path.read_text())["annotations"]])
    buckets = Counter(np.where(areas < 32**2, "small", np.where(areas < 96**2, "medium", "large")))
    assert len(areas) >= 150
    for bucket in ("small", "medium", "large"):
        assert buckets[bucket] >= 0.12 * len(areas), buckets


def test_masks_of_an_image_are_disjoint_and_hidden_counted(fifty) -> None:
    dataset = CocoDataset(fifty.images_dir, fifty.annotations_path)
    for sample in dataset.samples(image_ids=list(range(1, 21))):
        coverage = np.sum([inst.mask for inst in sample.instances], axis=0)
        assert coverage.max() == 1
    info = json.loads(fifty.annotations_path.read_text())["info"]
    assert info["hidden_objects"] == fifty.hidden_objects > 0


def test_later_object_wins_and_hidden_objects_dropped() -> None:
    first = np.zeros((8, 8), dtype=bool)
    first[0:4, 0:4] = True
    second = np.zeros((8, 8), dtype=bool)
    second[2:6, 2:6] = True
    tiny = np.zeros((8, 8), dtype=bool)
    tiny[3, 3] = True  # wholly covered by the last object
    last = np.zeros((8, 8), dtype=bool)
    last[3:5, 3:5] = True
    kept, visible = visible_masks([first, tiny, second, last])
    assert kept == [0, 2, 3]
    np.testing.assert_array_equal(visible[0], first & ~second)
    np.testing.assert_array_equal(visible[1], second & ~last)
    np.testing.assert_array_equal(visible[2], last)
    kept, _ = visible_masks([first, second], min_visible_area=13)
    assert kept == [1]  # first keeps 12 visible pixels


def test_jpeg_images_load(tmp_path: Path) -> None:
    generated = generate_dataset(tmp_path, count=2, seed=0, image_size=64, image_format="jpeg")
    dataset = CocoDataset(generated.images_dir, generated.annotations_path)
    assert dataset.image_ids == [1, 2]
    assert dataset.load_image(1).shape == (64, 64, 3)
    assert (generated.images_dir / "000001.jpg").is_file()


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"count": 0}, "count"), ({"seed": -1}, "seed"), ({"image_size": 16}, "image_size"),
    ({"image_format": "gif"}, "image_format"),
])
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict, problem: str) -> None:
    with pytest.raises(DataError, match=problem):
        generate_dataset(tmp_path, **{"count": 1, "seed": 0, **kwargs})


def test_split_is_deterministic_disjoint_and_order_free() -> None:
    ids = list(range(100, 140))
    train, val = split_ids(ids, val_fraction=0.25, seed=5)
    assert len(val) == 10 and len(train) == 30
    assert sorted(train + val) == ids and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    assert split_ids(ids[::-1], val_fraction=0.25, seed=5) == (train, val)
    assert split_ids(ids, val_fraction=0.25, seed=6) != (train, val)
    with pytest.raises(DataError, match="val_fraction"):
        split_ids(ids, val_fraction=1.5)
    with pytest.raises(DataError, match="duplicates"):
        split_ids([1, 1, 2])
