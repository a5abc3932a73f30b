"""Prompts: tight boxes, centre points, seeded random points, detection files, PromptSet batching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from ptqsam.data import (Detections, Instance, PromptSet, box_center, gt_prompts, instance_rng, mask_box,
                         random_mask_points)
from ptqsam.errors import DataError


def _instance(ann_id: int, mask: np.ndarray, box_xywh, image_id: int = 7, category_id: int = 3) -> Instance:
    return Instance(ann_id, image_id, category_id, np.asarray(box_xywh, dtype=np.float64), float(mask.sum()),
                    False, mask)


def _blob(rows: slice, cols: slice, shape=(12, 16)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def test_tight_box_of_known_mask() -> None:
    mask = _blob(slice(3, 7), slice(5, 9))
    mask[10, 2] = True  # a stray pixel widens the box
    np.testing.assert_array_equal(mask_box(mask), [2, 3, 9, 11])


@settings(max_examples=40, deadline=None)
@given(arrays(bool, (9, 13)).filter(lambda m: m.any()))
def test_tight_box_matches_pycocotools(mask: np.ndarray) -> None:
    x, y, w, h = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))
    np.testing.assert_array_equal(mask_box(mask), [x, y, x + w, y + h])


def test_tight_box_of_empty_mask_raises() -> None:
    with pytest.raises(DataError, match="empty"):
        mask_box(np.zeros((4, 4), dtype=bool))


def test_box_centre() -> None:
    np.testing.assert_array_equal(box_center([2.0, 4.0, 10.0, 9.0]), [6.0, 6.5])


def test_random_points_inside_mask_distinct_and_deterministic() -> None:
    mask = _blob(slice(2, 5), slice(3, 9))  # 18 pixels
    points = random_mask_points(mask, 10, instance_rng(0, 7, 1))
    assert points.shape == (10, 2)
    xs, ys = points[:, 0].astype(int), points[:, 1].astype(int)
    assert mask[ys, xs].all()
    assert len({(x, y) for x, y in zip(xs, ys)}) == 10
    np.testing.assert_array_equal(points, random_mask_points(mask, 10, instance_rng(0, 7, 1)))
    assert not np.array_equal(points, random_mask_points(mask, 10, instance_rng(1, 7, 1)))
    assert not np.array_equal(points, random_mask_points(mask, 10, instance_rng(0, 7, 2)))


def test_more_points_than_pixels_repeat_inside_mask() -> None:
    mask = _blob(slice(1, 2), slice(1, 3))  # 2 pixels
    points = random_mask_points(mask, 5, instance_rng(0, 0, 0))
    assert mask[points[:, 1].astype(int), points[:, 0].astype(int)].all()


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_random_points_reject_bad_count(bad) -> None:
    with pytest.raises(DataError, match="number of points"):
        random_mask_points(_blob(slice(0, 2), slice(0, 2)), bad, instance_rng(0, 0, 0))


def test_gt_prompts_each_kind() -> None:
    a = _instance(11, _blob(slice(2, 5), slice(3, 9)), [3, 2, 6, 3])
    b = _instance(12, _blob(slice(6, 10), slice(1, 4)), [0, 5, 5, 5])
    boxes = gt_prompts(7, [a, b], "box")
    assert boxes.source == "annotation" and boxes.image_id == 7 and len(boxes) == 2
    np.testing.assert_array_equal(boxes.ids, [11, 12])
    np.testing.assert_array_equal(boxes.category_ids, [3, 3])
    np.testing.assert_array_equal(boxes.scores, [1.0, 1.0])
    np.testing.assert_array_equal(boxes.boxes, [[3, 2, 9, 5], [0, 5, 5, 10]])
    assert boxes.points is None
    np.testing.assert_array_equal(gt_prompts(7, [a, b], "tight_box").boxes, [[3, 2, 9, 5], [1, 6, 4, 10]])
    centre = gt_prompts(7, [a, b], "center_point")
    np.testing.assert_array_equal(centre.points, [[[6.0, 3.5]], [[2.5, 7.5]]])
    np.testing.assert_array_equal(centre.point_labels, [[1], [1]])
    random = gt_prompts(7, [a, b], "random_points", num_points=3, seed=4)
    assert random.points.shape == (2, 3, 2) and (random.point_labels == 1).all()
    for inst, pts in zip((a, b), random.points):
        assert inst.mask[pts[:, 1].astype(int), pts[:, 0].astype(int)].all()
    with pytest.raises(DataError, match="unknown prompt kind"):
        gt_prompts(7, [a], "scribble")


def test_random_points_do_not_depend_on_order() -> None:
    a = _instance(11, _blob(slice(2, 5), slice(3, 9)), [3, 2, 6, 3])
    b = _instance(12, _blob(slice(6, 10), slice(1, 4)), [0, 5, 5, 5])
    forward = gt_prompts(7, [a, b], "random_points", num_points=4, seed=9)
    backward = gt_prompts(7, [b, a], "random_points", num_points=4, seed=9)
    np.testing.assert_array_equal(forward.points, backward.points[::-1])
    np.testing.assert_array_equal(forward.ids, backward.ids[::-1])


def test_prompt_set_chunks_cover_all_rows() -> None:
    masks = [_blob(slice(i, i + 2), slice(i, i + 3)) for i in range(5)]
    prompts = gt_prompts(1, [_instance(i, m, [i, i, 3, 2]) for i, m in enumerate(masks)], "box")
    chunks = list(prompts.chunks(2))
    assert [len(c) for c in chunks] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([c.boxes for c in chunks]), prompts.boxes)
    np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]), prompts.ids)
    with pytest.raises(DataError, match="chunk size"):
        next(prompts.chunks(0))


def test_prompt_set_checks_shapes() -> None:
    ids = np.arange(2)
    with pytest.raises(DataError, match="boxes has shape"):
        PromptSet(1, "annotation", ids, ids, np.ones(2), boxes=np.zeros((3, 4)))
    with pytest.raises(DataError, match="neither boxes nor points"):
        PromptSet(1, "annotation", ids, ids, np.ones(2))
    with pytest.raises(DataError, match="point_labels has shape"):
        PromptSet(1, "annotation", ids, ids, np.ones(2), points=np.zeros((2, 1, 2)), point_labels=np.ones((2, 2)))


DETECTIONS = [
    {"image_id": 1, "category_id": 2, "bbox": [10, 20, 30, 40], "score": 0.5},
    {"image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.9},
    {"image_id": 2, "category_id": 2, "bbox": [1, 1, 2, 2], "score": 0.05},
    {"image_id": 1, "category_id": 2, "bbox": [4, 4, 0, 5], "score": 0.95},  # zero width
    {"image_id": 1, "category_id": 4, "bbox": [2.5, 3.5, 1, 1], "score": 0.7},
]


def _write(tmp_path: Path, entries) -> Path:
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(entries))
    return path


def test_detections_sorted_by_score_and_mapped_back(tmp_path: Path) -> None:
    dets = Detections(_write(tmp_path, DETECTIONS))
    assert dets.image_ids == [1, 2]
    prompts = dets.for_image(1)
    assert prompts.source == "detection"
    np.testing.assert_array_equal(prompts.ids, [1, 4, 0])
    np.testing.assert_array_equal(prompts.scores, [0.9, 0.7, 0.5])
    np.testing.assert_array_equal(prompts.category_ids, [3, 4, 2])
    np.testing.assert_array_equal(prompts.boxes, [[0, 0, 5, 5], [2.5, 3.5, 3.5, 4.5], [10, 20, 40, 60]])
    assert dets.skips.keys("degenerate_detection") == {(1, 3)}
    empty = dets.for_image(42)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


def test_detections_threshold_and_top_k(tmp_path: Path) -> None:
    path = _write(tmp_path, DETECTIONS)
    assert Detections(path, score_threshold=0.1).image_ids == [1]
    np.testing.assert_array_equal(Detections(path, score_threshold=0.6).for_image(1).ids, [1, 4])
    np.testing.assert_array_equal(Detections(path, top_k=2).for_image(1).ids, [1, 4])
    np.testing.assert_array_equal(Detections(path, top_k=2).for_image(2).ids, [2])
    with pytest.raises(DataError, match="top_k"):
        Detections(path, top_k=0)


@pytest.mark.parametrize(("entry", "problem"), [
    ({"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1]}, "missing key 'score'"),
    ({"image_id": 1, "category_id": 2, "bbox": [0, 0, 1], "score": 0.5}, "'bbox' must be a list of 4"),
    ({"image_id": "1", "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.5}, "'image_id' must be an integer"),
    ({"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1], "score": float("nan")}, "'score' must be a finite"),
    ([1, 2, 3], "must be an object"),
])
def test_malformed_detection_names_entry(tmp_path: Path, entry, problem: str) -> None:
    path = _write(tmp_path, DETECTIONS[:2] + [entry])
    with pytest.raises(DataError, match=problem) as err:
        Detections(path)
    assert "entry 2" in str(err.value) and str(path) in str(err.value)


def test_detection_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="must hold a list"):
        Detections(_write(tmp_path, {"image_id": 1}))
    with pytest.raises(DataError, match="not found"):
        Detections(tmp_path / "missing.json")
