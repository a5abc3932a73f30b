"""The evaluator: float against itself, detections, and bad data counted, never dropped silently."""

from __future__ import annotations

import json
import shutil

import pytest

from ptqsam.data import CocoDataset
from ptqsam.data.prompts import Detections
from ptqsam.evaluation.evaluator import EvalOptions, evaluate
from ptqsam.models import build_model


def test_float_against_itself(tiny_dataset, random_testbed):
    model = random_testbed()
    first = evaluate(model, tiny_dataset, progress=False)
    second = evaluate(model, tiny_dataset, reference=first, progress=False)
    assert second.metrics["agreement"] == 1.0
    assert second.metrics["miou"] == first.metrics["miou"]
    total = sum(len(tiny_dataset.instances(i)) for i in tiny_dataset.image_ids)
    assert first.num_prompts == total == first.metrics["count"]


def test_instance_ious_are_the_ones_the_miou_averages(tiny_dataset, random_testbed):
    result = evaluate(random_testbed(), tiny_dataset, progress=False)
    ids = [(image_id, ann_id) for image_id, ann_id, _ in result.instance_ious]
    assert len(ids) == len(set(ids)) == result.metrics["count"]
    assert {ann for _, ann in ids} == {inst.annotation_id for i in tiny_dataset.image_ids
                                       for inst in tiny_dataset.instances(i)}
    ious = [iou for _, _, iou in result.instance_ious]
    assert sum(ious) / len(ious) == pytest.approx(result.metrics["miou"], rel=1e-12)


def test_missing_image_and_bad_annotation_are_counted(tiny_dataset_dir, random_testbed, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset_dir, root)
    data = json.loads((root / "annotations.json").read_text())
    (root / "images" / data["images"][0]["file_name"]).unlink()
    data["annotations"][-1]["bbox"] = [1000.0, 1000.0, 5.0, 5.0]  # entirely outside the image
    (root / "annotations.json").write_text(json.dumps(data))
    dataset = CocoDataset(root / "images", root / "annotations.json")
    result = evaluate(random_testbed(), dataset, progress=False)
    assert result.skips["box_outside_image"] == 1
    assert result.num_images == len(data["images"]) - 1
    assert result.skips["missing_image"] == 1


def test_detections_give_mask_ap_with_both_score_modes(tiny_dataset_dir, tiny_dataset, random_testbed, tmp_path):
    dets = [{"image_id": inst.image_id, "category_id": inst.category_id, "bbox": [float(v) for v in inst.box_xywh],
             "score": 0.9} for i in tiny_dataset.image_ids for inst in tiny_dataset.instances(i)]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    model = random_testbed()
    runs = [evaluate(model, tiny_dataset, options=EvalOptions(prompt="detections", score_with_iou=flag),
                     detections=Detections(path), progress=False) for flag in (True, False)]
    for run in runs:
        assert 0.0 <= run.metrics["AP"] <= 1.0 and "miou" not in run.metrics
        assert run.num_prompts == len(dets)


def test_degenerate_detections_of_the_images_read_are_reported(tiny_dataset, random_testbed, tmp_path):
    first, second = tiny_dataset.image_ids[:2]
    dets = [{"image_id": inst.image_id, "category_id": inst.category_id, "bbox": [float(v) for v in inst.box_xywh],
             "score": 0.9} for inst in tiny_dataset.instances(first)]
    category = dets[0]["category_id"]
    dets += [{"image_id": image_id, "category_id": category, "bbox": [3.0, 4.0, 0.0, 5.0], "score": 0.8}
             for image_id in (first, first, second)]  # zero width: two on the image read, one on another
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    result = evaluate(random_testbed(), tiny_dataset, image_ids=[first], options=EvalOptions(prompt="detections"),
                      detections=Detections(path), progress=False)
    assert result.skips["degenerate_detection"] == 2 and result.num_prompts == len(dets) - 3


def test_mask_ap_covers_the_images_read_not_the_ones_skipped(tiny_dataset_dir, tmp_path):
    """An image that cannot be decoded is skipped by the predictions; COCOeval must not count its
    objects as misses (the AP is then over the same images as everything else)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset_dir, root)
    dataset = CocoDataset(root / "images", root / "annotations.json")
    dets = [{"image_id": inst.image_id, "category_id": inst.category_id, "bbox": [float(v) for v in inst.box_xywh],
             "score": 0.9} for i in dataset.image_ids for inst in dataset.instances(i)]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    options, model = EvalOptions(prompt="detections"), build_model("testbed")  # trained: its AP is not 0
    broken = dataset.image_ids[0]
    (root / "images" / dataset.image_info(broken).file_name).write_bytes(b"not an image")
    read = [i for i in dataset.image_ids if i != broken]
    damaged = evaluate(model, CocoDataset(root / "images", root / "annotations.json"), options=options,
                       detections=Detections(path), progress=False)
    assert damaged.skips["unreadable_image"] == 1 and damaged.num_images == len(read)
    shutil.copytree(tiny_dataset_dir / "images", root / "intact")
    intact = evaluate(model, CocoDataset(root / "intact", root / "annotations.json"), image_ids=read,
                      options=options, detections=Detections(path), progress=False)
    assert damaged.metrics["AP"] == intact.metrics["AP"] > 0.0


def test_crowd_annotations_count_in_the_miou(tiny_dataset_dir, random_testbed, tmp_path):
    """The protocol's mIoU is over every annotation (area >= 1): a crowd region is prompted and
    measured like any other, not skipped."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset_dir, root)
    data = json.loads((root / "annotations.json").read_text())
    data["annotations"][0]["iscrowd"] = 1
    (root / "annotations.json").write_text(json.dumps(data))
    result = evaluate(random_testbed(), CocoDataset(root / "images", root / "annotations.json"), progress=False)
    assert result.metrics["count"] == len(data["annotations"]) and not result.skips.get("crowd")
    assert data["annotations"][0]["id"] in {ann for _, ann, _ in result.instance_ious}


def test_detections_of_a_category_the_ground_truth_lacks_fail_before_any_prediction(tiny_dataset, random_testbed,
                                                                                     tmp_path, monkeypatch):
    from ptqsam.errors import DataError
    from ptqsam.evaluation import evaluator

    dets = [{"image_id": inst.image_id, "category_id": inst.category_id - 1, "bbox": [float(v) for v in inst.box_xywh],
             "score": 0.9} for i in tiny_dataset.image_ids for inst in tiny_dataset.instances(i)]  # 0-based labels
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    monkeypatch.setattr(evaluator, "_predict_images", lambda *args: pytest.fail("predicted before the check"))
    with pytest.raises(DataError, match=r"category id\(s\) \[0\] are not categories of the ground truth"):
        evaluate(random_testbed(), tiny_dataset, options=EvalOptions(prompt="detections"), detections=Detections(path),
                 progress=False)


def test_repeated_image_ids_and_detection_prompts_without_detections_are_refused(tiny_dataset, random_testbed):
    from ptqsam.errors import DataError

    model = random_testbed()
    first = tiny_dataset.image_ids[0]
    with pytest.raises(DataError, match=rf"image ids listed more than once: \[{first}\]"):
        evaluate(model, tiny_dataset, image_ids=[first, *tiny_dataset.image_ids], progress=False)
    with pytest.raises(DataError, match="'detections' prompt .* pass detections"):
        evaluate(model, tiny_dataset, options=EvalOptions("detections"), progress=False)
