"""COCO reader: masks from polygons and RLE, boxes, skip counting, malformed-file errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ptqsam.data import CocoDataset, SkipCounter, generate_dataset, xywh_to_xyxy, xyxy_to_xywh
from ptqsam.errors import DataError

H, W = 10, 20


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _ann(ann_id: int, image_id: int, segmentation, bbox, area, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": segmentation,
            "bbox": bbox, "area": area, **extra}


def _write_image(path: Path, height: int = H, width: int = W) -> None:
    Image.fromarray(np.full((height, width, 3), 7, dtype=np.uint8)).save(path)


# Image 1 holds one annotation of each mask form with known pixels.
POLYGON_PIXELS = (slice(2, 6), slice(2, 8))  # polygon x 2..8, y 2..6 covers rows 2-5, cols 2-7: 24 px
UNCOMPRESSED_PIXELS = (slice(3, 7), slice(5, 7))  # rows 3-6 of columns 5 and 6: 8 px
COMPRESSED_PIXELS = (slice(0, 1), slice(10, 20))  # top row, right half: 10 px


def _known(pixels) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[pixels] = True
    return mask


def _dataset_dict() -> dict:
    images = [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in range(1, 7)]
    # column-major counts, starting with zeros: 53 zeros (5 columns + 3 rows), 4 ones, 6 zeros, 4 ones, rest
    uncompressed = {"size": [H, W], "counts": [53, 4, 6, 4, H * W - 67]}
    half_mask = np.zeros((H, W), dtype=bool)
    half_mask[2:5, 0:4] = True
    annotations = [
        _ann(10, 1, [[2, 2, 8, 2, 8, 6, 2, 6]], [2, 2, 6, 4], 24.0),
        _ann(11, 1, uncompressed, [5, 3, 2, 4], 8),
        _ann(12, 1, _rle(_known(COMPRESSED_PIXELS)), [10, 0, 10, 1], 10),
        _ann(13, 1, [[0, 0, 3, 0, 3, 3, 0, 3]], [0, 0, 3, 3], 9, iscrowd=1),
        _ann(40, 4, _rle(half_mask), [2, 2, 4, 3], 0.0),  # zero area
        _ann(41, 4, _rle(half_mask), [50, 50, 5, 5], 12),  # box entirely outside
        _ann(42, 4, _rle(half_mask), [2, 2, 0, 3], 12),  # degenerate box
        _ann(43, 4, _rle(half_mask), [-2, 2, 6, 3], 12),  # partly outside: clipped, kept
        _ann(44, 4, _rle(np.zeros((H, W), dtype=bool)), [2, 2, 4, 3], 5),  # empty mask
        _ann(45, 4, _rle(np.ones((H + 1, W), dtype=bool)), [2, 2, 4, 3], 5),  # RLE of another size
        _ann(46, 99, _rle(half_mask), [2, 2, 4, 3], 12),  # unknown image
        _ann(50, 5, _rle(half_mask), [2, 2, 4, 3], 12),
        _ann(60, 6, _rle(half_mask), [2, 2, 4, 3], 12),
    ]
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}


@pytest.fixture
def tiny(tmp_path: Path) -> CocoDataset:
    images = tmp_path / "images"
    images.mkdir()
    for i in (1, 3, 4):
        _write_image(images / f"{i}.png")
    # image 2: no file; image 3: no annotation; image 5: wrong size; image 6: not an image
    _write_image(images / "5.png", height=H + 2)
    (images / "6.png").write_bytes(b"this is not a png")
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_dataset_dict()))
    return CocoDataset(images, path)


def test_image_ids_sorted_and_missing_counted(tiny: CocoDataset) -> None:
    assert tiny.image_ids == [1, 3, 4, 5, 6]
    assert tiny.skips.keys("missing_image") == {2}
    assert tiny.skips.keys("orphan_annotation") == {46}
    with pytest.raises(DataError, match="2.png"):
        tiny.load_image(2)
    image = tiny.load_image(1)
    assert image.dtype == np.uint8 and image.shape == (H, W, 3) and (image == 7).all()


def test_masks_from_polygon_and_rle(tiny: CocoDataset) -> None:
    instances = {inst.annotation_id: inst for inst in tiny.instances(1)}
    assert sorted(instances) == [10, 11, 12]  # 13 is a crowd
    for ann_id, pixels in ((10, POLYGON_PIXELS), (11, UNCOMPRESSED_PIXELS), (12, COMPRESSED_PIXELS)):
        mask = instances[ann_id].mask
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, _known(pixels))
        np.testing.assert_array_equal(mask, tiny.coco.annToMask(tiny.coco.anns[ann_id]).astype(bool))
    assert [instances[i].mask.sum() for i in (10, 11, 12)] == [24, 8, 10]
    assert instances[10].area == 24.0 and instances[10].category_id == 1 and not instances[10].iscrowd
    np.testing.assert_array_equal(instances[11].box_xywh, [5, 3, 2, 4])
    np.testing.assert_array_equal(instances[11].box_xyxy, [5, 3, 7, 7])


def test_crowd_skipped_unless_asked(tiny: CocoDataset) -> None:
    assert 13 not in [inst.annotation_id for inst in tiny.instances(1)]
    assert tiny.skips.keys("crowd") == {13}
    crowd = [inst for inst in tiny.instances(1, include_crowd=True) if inst.annotation_id == 13]
    assert len(crowd) == 1 and crowd[0].iscrowd


def test_every_skip_case_counted_once(tiny: CocoDataset) -> None:
    for _ in range(2):  # reading twice must not count twice
        samples = list(tiny.samples())
    assert [s.image_id for s in samples] == [1, 4]
    kept = [inst.annotation_id for inst in samples[1].instances]
    assert kept == [43]
    np.testing.assert_array_equal(samples[1].instances[0].box_xywh, [0, 2, 4, 3])
    expected = {
        "missing_image": {2}, "image_without_instances": {3}, "image_size_mismatch": {5},
        "unreadable_image": {6}, "orphan_annotation": {46}, "crowd": {13}, "zero_area": {40},
        "box_outside_image": {41}, "degenerate_box": {42}, "clipped_box": {43}, "empty_mask": {44},
        "mask_size_mismatch": {45},
    }
    for reason, keys in expected.items():
        assert tiny.skips.keys(reason) == keys, reason
    assert tiny.skips.skipped_total() == sum(len(k) for k in expected.values()) - 1  # the clip is a repair
    assert tiny.skips.as_dict()["empty_mask"] == 1


def test_keep_empty_yields_images_without_instances(tiny: CocoDataset) -> None:
    samples = {s.image_id: s for s in tiny.samples(keep_empty=True)}
    assert sorted(samples) == [1, 3, 4]
    assert samples[3].instances == []


def test_skip_counter_rejects_unknown_reason() -> None:
    with pytest.raises(DataError, match="unknown skip reason"):
        SkipCounter().add("bad_luck", 1)


def test_box_conversions_round_trip() -> None:
    boxes = np.array([[1.5, 2.0, 3.0, 4.5], [0.0, 0.0, 10.0, 1.0]])
    np.testing.assert_array_equal(xywh_to_xyxy(boxes), [[1.5, 2.0, 4.5, 6.5], [0.0, 0.0, 10.0, 1.0]])
    np.testing.assert_array_equal(xyxy_to_xywh(xywh_to_xyxy(boxes)), boxes)


def test_reads_generated_dataset(tmp_path: Path) -> None:
    generated = generate_dataset(tmp_path, count=3, seed=5, image_size=96)
    dataset = CocoDataset(generated.images_dir, generated.annotations_path)
    oracle = COCO()
    oracle.dataset = json.loads(generated.annotations_path.read_text())
    oracle.createIndex()
    samples = list(dataset.samples())
    assert [s.image_id for s in samples] == [1, 2, 3]
    assert sum(len(s.instances) for s in samples) == generated.num_annotations
    for sample in samples:
        assert sample.image.shape == (96, 96, 3)
        pixels = np.asarray(Image.open(generated.images_dir / f"{sample.image_id:06d}.png"))
        np.testing.assert_array_equal(sample.image, pixels)
        for inst in sample.instances:
            ann = oracle.anns[inst.annotation_id]
            np.testing.assert_array_equal(inst.mask, oracle.annToMask(ann).astype(bool))
            assert inst.mask.sum() == ann["area"]
            np.testing.assert_array_equal(inst.box_xywh, ann["bbox"])
    assert dataset.skips.skipped_total() == 0


MALFORMED = [
    ("not json {", "not valid JSON"),
    ("[]", "top level: must be an object"),
    ('{"annotations": []}', "missing key 'images'"),
    ('{"images": []}', "missing key 'annotations'"),
    ('{"images": {}, "annotations": []}', "images: must be a list"),
    ('{"images": [{"id": 1, "file_name": "a.png", "width": 4}], "annotations": []}',
     r"images\[0\]: missing key 'height'"),
    ('{"images": [{"id": "1", "file_name": "a.png", "height": 4, "width": 4}], "annotations": []}',
     r"images\[0\]: 'id' must be an integer"),
    ('{"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1],'
     ' "area": 1, "segmentation": []}]}', r"annotations\[0\]: 'bbox' must be a list of 4"),
    ('{"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],'
     ' "area": 1, "segmentation": "x"}]}', r"annotations\[0\]: 'segmentation' must be"),
    ('{"images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4},'
     ' {"id": 1, "file_name": "b.png", "height": 4, "width": 4}], "annotations": []}', r"images\[1\]: duplicate id 1"),
    ('{"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],'
     ' "area": 1, "segmentation": [[0, 0, 2, 0, 2]]}]}', r"annotations\[0\]: 'segmentation' must be"),
    # runs covering fewer pixels than 'size' decode into uninitialised memory in pycocotools
    ('{"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],'
     ' "area": 5, "segmentation": {"size": [20, 20], "counts": [10, 5]}}]}',
     r"annotations\[0\]: RLE segmentation: the runs cover 15 pixels, 'size' \[20, 20\] has 400"),
    ('{"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],'
     ' "area": 5, "segmentation": {"size": [20, 20], "counts": ":5"}}]}', r"the runs cover 15 pixels"),
    ('{"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],'
     ' "area": 5, "segmentation": {"size": [2, 2], "counts": [-5, 9]}}]}', r"a run length is negative"),
    ('{"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],'
     ' "area": 5, "segmentation": {"size": [2, 2], "counts": "1k"}}]}', r"not a compressed RLE string"),
]


@pytest.mark.parametrize(("text", "problem"), MALFORMED)
def test_malformed_annotations_raise(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError, match=problem) as err:
        CocoDataset(tmp_path, path)
    assert str(path) in str(err.value)


def test_missing_paths_raise_naming_them(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere.json"):
        CocoDataset(tmp_path, tmp_path / "nowhere.json")
    with pytest.raises(DataError, match="no_such_dir"):
        CocoDataset(tmp_path / "no_such_dir", tmp_path / "nowhere.json")


def test_missing_categories_are_derived(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"images": [], "annotations": [_ann(1, 1, [[0, 0, 2, 0, 2, 2]], [0, 0, 2, 2], 2)]}))
    dataset = CocoDataset(tmp_path, path)
    assert dataset.categories == {1: "category_1"}
    assert dataset.skips.keys("orphan_annotation") == {1}


def test_compressed_rle_strings_are_read_as_pycocotools_writes_them() -> None:
    from ptqsam.data.coco import _compressed_runs

    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(1, 60, 2))
        mask = rng.random((height, width)) < rng.random()
        runs = _compressed_runs(_rle(mask)["counts"])
        assert sum(runs) == height * width
        decoded = mask_utils.decode(mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width))
        np.testing.assert_array_equal(decoded.astype(bool), mask)
