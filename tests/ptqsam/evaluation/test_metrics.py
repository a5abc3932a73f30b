"""Metrics: exact mask IoU, size buckets, the mIoU accumulator, and COCO mask AP on known cases."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays
from PIL import Image
from pycocotools import mask as mask_utils

from ptqsam.data import CocoDataset
from ptqsam.errors import DataError
from ptqsam.evaluation import MiouAccumulator, bucket_of, mask_ap, mask_iou, mask_result, prompt_score

SIZE = 128


def _rect(x: int, y: int, width: int, height: int, size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[y:y + height, x:x + width] = True
    return mask


def _square(x: int, y: int, side: int, size: int = SIZE) -> np.ndarray:
    return _rect(x, y, side, side, size)


# ----------------------------------------------------------------------------- IoU and buckets


def test_mask_iou_known_values() -> None:
    a = _square(0, 0, 4, size=8)
    b = _square(2, 0, 4, size=8)  # overlap 2x4 = 8, union 24
    assert mask_iou(a, b) == pytest.approx(8 / 24)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, np.zeros_like(a)) == 0.0
    assert mask_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0  # documented empty-union convention
    assert mask_iou(a.astype(np.uint8) * 255, b.astype(np.float32)) == pytest.approx(8 / 24)
    with pytest.raises(DataError, match="shapes differ"):
        mask_iou(a, a[:4])


@settings(max_examples=40, deadline=None)
@given(arrays(bool, (7, 9)), arrays(bool, (7, 9)))
def test_mask_iou_matches_pycocotools(pred: np.ndarray, gt: np.ndarray) -> None:
    if not (pred | gt).any():
        return
    def rle(m):
        return mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    expected = mask_utils.iou([rle(pred)], [rle(gt)], [0])[0, 0]
    assert mask_iou(pred, gt) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("area", "bucket"), [
    (0, "small"), (1023.9, "small"), (1024, "medium"), (9215.5, "medium"), (9216, "large"), (1e7, "large"),
])
def test_bucket_boundaries(area: float, bucket: str) -> None:
    assert bucket_of(area) == bucket


@pytest.mark.parametrize("area", [-1, float("nan"), float("inf"), "12"])
def test_bucket_rejects_bad_area(area) -> None:
    with pytest.raises(DataError, match="area"):
        bucket_of(area)


def test_miou_buckets_on_hand_made_masks() -> None:
    cases = [  # (prediction, ground truth): IoU worked out by hand
        (_rect(0, 0, 5, 10), _square(0, 0, 10)),  # small, 50/100
        (_square(30, 30, 20), _square(30, 30, 20)),  # small (400 px), 1
        (_square(24, 0, 40), _square(0, 0, 40)),  # medium (1600 px), 640/2560
        (_rect(0, 0, 100, 125), _square(0, 0, 100)),  # large (10000 px), 10000/12500
    ]
    acc = MiouAccumulator()
    for pred, gt in cases:
        assert acc.add(mask_iou(pred, gt), float(gt.sum()))
    assert not acc.add(0.3, 0.5)  # area < 1: skipped
    summary = acc.summary()
    assert summary.miou_small == pytest.approx(0.75)
    assert summary.miou_medium == pytest.approx(0.25)
    assert summary.miou_large == pytest.approx(0.8)
    assert summary.miou == pytest.approx((0.5 + 1.0 + 0.25 + 0.8) / 4)
    assert (summary.count, summary.count_small, summary.count_medium, summary.count_large) == (4, 2, 1, 1)
    assert summary.skipped_area_below_1 == 1
    assert summary.as_dict()["miou_large"] == pytest.approx(0.8)


def test_miou_empty_bucket_is_none_and_no_data_raises() -> None:
    acc = MiouAccumulator()
    with pytest.raises(DataError, match="no instance"):
        acc.summary()
    acc.add(0.4, 50)
    summary = acc.summary()
    assert summary.miou == pytest.approx(0.4) and summary.miou_large is None and summary.count_large == 0
    with pytest.raises(DataError, match="iou"):
        acc.add(1.5, 50)
    with pytest.raises(DataError, match="iou"):
        acc.add(float("nan"), 50)


# ----------------------------------------------------------------------------- mask AP

# One square per image: small (400 px), medium (2500 px), large (10000 px), all category 1.
GT_SQUARES = {1: (10, 10, 20), 2: (20, 20, 50), 3: (2, 2, 100)}


@pytest.fixture
def squares(tmp_path: Path) -> CocoDataset:
    (tmp_path / "images").mkdir()
    images, annotations = [], []
    for image_id, (x, y, side) in GT_SQUARES.items():
        Image.fromarray(np.zeros((SIZE, SIZE, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": SIZE, "width": SIZE})
        rle = mask_result(image_id, 1, _square(x, y, side), 1.0)["segmentation"]
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "segmentation": rle,
                            "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "square"}]}))
    return CocoDataset(tmp_path / "images", path)


def _recall_share(recall: float) -> float:
    """AP of one category whose TPs all rank first: the share of COCO's 101 recall points <= recall."""
    return float(np.mean(np.linspace(0.0, 1.0, 101) <= recall))


def test_ap_is_one_for_ground_truth_masks(squares: CocoDataset) -> None:
    results = [mask_result(i, 1, _square(*sq), 1.0) for i, sq in GT_SQUARES.items()]
    ap = mask_ap(squares, results)
    assert [ap.ap, ap.ap50, ap.ap75, ap.ap_small, ap.ap_medium, ap.ap_large] == pytest.approx([1.0] * 6)
    assert ap.num_results == 3 and ap.num_images == 3 and ap.note == ""
    assert "Average Precision" in ap.log
    assert ap.as_dict()["APl"] == pytest.approx(1.0)


def test_ap_of_shifted_masks(squares: CocoDataset) -> None:
    # each square shifted right by a fifth of its side: IoU (4/5)/(6/5) = 2/3, a match at
    # thresholds 0.50, 0.55, 0.60, 0.65 (4 of the 10) and a miss at 0.75.
    results = [mask_result(i, 1, _square(x + side // 5, y, side), 1.0) for i, (x, y, side) in GT_SQUARES.items()]
    ap = mask_ap(squares, results)
    assert ap.ap50 == pytest.approx(1.0)
    assert ap.ap75 == pytest.approx(0.0)
    assert ap.ap == pytest.approx(0.4)
    assert [ap.ap_small, ap.ap_medium, ap.ap_large] == pytest.approx([0.4] * 3)


def _one_right_two_wrong(right_score: float, wrong_score: float) -> list[dict]:
    far = _square(110, 110, 10)  # overlaps none of the squares
    return [mask_result(1, 1, _square(*GT_SQUARES[1]), right_score),
            mask_result(2, 1, far, wrong_score), mask_result(3, 1, far, wrong_score)]


def test_ap_with_two_of_three_wrong(squares: CocoDataset) -> None:
    ap = mask_ap(squares, _one_right_two_wrong(right_score=0.9, wrong_score=0.1))
    expected = _recall_share(1 / 3)  # 34/101
    assert [ap.ap, ap.ap50, ap.ap75] == pytest.approx([expected] * 3)
    assert ap.ap_small == pytest.approx(1.0)
    assert [ap.ap_medium, ap.ap_large] == pytest.approx([0.0, 0.0])
    # the wrong masks ranked first: precision 1/3 up to recall 1/3
    assert mask_ap(squares, _one_right_two_wrong(0.1, 0.9)).ap == pytest.approx(expected / 3)
    # only image 1 evaluated: its one prediction is right
    assert mask_ap(squares, _one_right_two_wrong(0.9, 0.1), image_ids=[1]).ap == pytest.approx(1.0)


def test_score_mode_changes_the_ranking(squares: CocoDataset) -> None:
    # the detector is more confident in the wrong boxes, SAM's predicted IoU is not
    right = {"detector_score": 0.9, "predicted_iou": 0.95}
    wrong = {"detector_score": 0.95, "predicted_iou": 0.4}
    by_product = mask_ap(squares, _one_right_two_wrong(prompt_score(**right), prompt_score(**wrong)))
    by_detector = mask_ap(squares, _one_right_two_wrong(prompt_score(**right, mode="detector"),
                                                        prompt_score(**wrong, mode="detector")))
    assert by_product.ap == pytest.approx(_recall_share(1 / 3))
    assert by_detector.ap == pytest.approx(_recall_share(1 / 3) / 3)
    assert prompt_score(0.5, 0.8) == pytest.approx(0.4)
    with pytest.raises(DataError, match="score mode"):
        prompt_score(0.5, 0.8, mode="max")


def test_empty_results_give_zero_with_note(squares: CocoDataset) -> None:
    ap = mask_ap(squares, [])
    assert [ap.ap, ap.ap50, ap.ap_small, ap.ap_medium, ap.ap_large] == pytest.approx([0.0] * 5)
    assert "no results" in ap.note and ap.num_results == 0


def test_no_ground_truth_gives_none_with_note(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "images" / "1.png")
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.png", "height": 8, "width": 8}],
                                "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    ap = mask_ap(CocoDataset(tmp_path / "images", path), [mask_result(1, 1, _square(0, 0, 3, size=8), 0.5)])
    assert ap.ap is None and ap.ap_small is None and "no ground-truth" in ap.note


def test_results_are_not_mutated(squares: CocoDataset) -> None:
    results = [mask_result(i, 1, _square(*sq), 1.0) for i, sq in GT_SQUARES.items()]
    before = copy.deepcopy(results)
    mask_ap(squares, results)
    mask_ap(squares.coco, results)
    assert results == before


def test_mask_result_round_trips_through_json() -> None:
    mask = _square(3, 4, 5, size=16)
    entry = json.loads(json.dumps(mask_result(7, 2, mask, 0.25)))
    assert (entry["image_id"], entry["category_id"], entry["score"]) == (7, 2, 0.25)
    np.testing.assert_array_equal(mask_utils.decode(entry["segmentation"]).astype(bool), mask)


@pytest.mark.parametrize(("change", "problem"), [
    ({"score": float("nan")}, "score"),
    ({"image_id": 99}, "'image_id' must be an image id of the ground truth, got 99"),
    ({"category_id": 0}, "'category_id' must be a category id of the ground truth"),  # 0-based labels
    ({"segmentation": [[0, 0, 4, 0, 4, 4]]}, "compressed RLE"),
    ({"segmentation": mask_result(1, 1, _square(0, 0, 4, size=64), 1.0)["segmentation"]}, "compressed RLE"),
])
def test_malformed_result_names_entry(squares: CocoDataset, change: dict, problem: str) -> None:
    results = [mask_result(i, 1, _square(*sq), 1.0) for i, sq in GT_SQUARES.items()]
    results[1] = {**results[1], **change}
    with pytest.raises(DataError, match=problem) as err:
        mask_ap(squares, results)
    assert "result entry 1" in str(err.value)


def test_bad_image_ids_raise(squares: CocoDataset) -> None:
    with pytest.raises(DataError, match="empty"):
        mask_ap(squares, [], image_ids=[])
    with pytest.raises(DataError, match="not in the ground truth"):
        mask_ap(squares, [], image_ids=[1, 42])
