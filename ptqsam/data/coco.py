"""A COCO-format instance-segmentation reader built on pycocotools.

The annotations file is validated once, when the dataset is opened: a file that is not COCO-shaped
(not JSON, missing ``images``/``annotations``, wrong types, duplicate ids) raises
:class:`~ptqsam.errors.DataError` naming the file and the entry. Bad *data* inside a well-formed
file (a missing image file, a zero-area or empty mask, a box outside the image, an image with no
usable instance) never stops a run: the item is left out and recorded in :class:`SkipCounter`.

Images stay where they belong: a ``file_name`` that is absolute or climbs out of the images folder
(``..``) is left out and counted (``path_outside_images``). Every image Pillow decodes becomes the
same picture in 8-bit RGB, or is left out and counted (``unsupported_image``; see
:mod:`ptqsam.data.pixels`).

Coordinates are those of the original image: boxes are COCO ``[x, y, w, h]`` (``box_xywh``) or
``[x0, y0, x1, y1]`` (``box_xyxy``) in pixel edges, so a one-pixel mask at column 3 spans x 3..4.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ptqsam.data.pixels import UnsupportedImage, rgb8
from ptqsam.data.validation import BOX_EXPECTED, EntryChecker, is_box, is_int, is_number, read_json
from ptqsam.errors import DataError

log = logging.getLogger("ptqsam")

#: Why an item was left out (or, for ``clipped_box``, repaired and kept), with a short explanation.
SKIP_REASONS: dict[str, str] = {
    "missing_image": "image file not found",
    "path_outside_images": "file_name is absolute or leaves the images folder ('..')",
    "unreadable_image": "image file could not be decoded",
    "unsupported_image": "image mode or values with no faithful 8-bit RGB form (e.g. float outside [0, 1])",
    "image_size_mismatch": "image file size differs from the JSON's height/width",
    "image_without_instances": "image has no usable instance",
    "orphan_annotation": "annotation names an image id that is not in 'images'",
    "crowd": "iscrowd annotation (left out of calibration prompts; evaluated in mIoU and by COCOeval)",
    "zero_area": "annotation area <= 0",
    "degenerate_box": "box width or height <= 0",
    "degenerate_detection": "detector box width or height <= 0 (not prompted)",
    "box_outside_image": "box entirely outside the image",
    "mask_size_mismatch": "RLE size differs from the image's height/width",
    "empty_mask": "decoded mask has no pixel",
    "clipped_box": "box partly outside the image, clipped to it (kept)",
}

_REPAIRS = frozenset({"clipped_box"})


class SkipCounter:
    """Counts of left-out items by reason (see :data:`SKIP_REASONS`).

    Each reason holds the set of keys (image ids, annotation ids, ...) it was recorded for, so
    reading the same data twice (e.g. evaluating a float and a quantized model) counts each item
    once. Counts cover what has been read so far: mask-level reasons are found when masks are
    decoded.
    """

    def __init__(self) -> None:
        self._keys: dict[str, set] = {reason: set() for reason in SKIP_REASONS}

    def _recorded(self, reason: str) -> set:
        if reason not in self._keys:
            raise DataError(f"unknown skip reason {reason!r}; known: {sorted(SKIP_REASONS)}")
        return self._keys[reason]

    def add(self, reason: str, key: Any) -> None:
        """Record that the item ``key`` was skipped (or repaired) for ``reason``."""
        self._recorded(reason).add(key)

    def count(self, reason: str) -> int:
        """How many distinct items were recorded for ``reason``."""
        return len(self._recorded(reason))

    def keys(self, reason: str) -> frozenset:
        """The items recorded for ``reason`` (image ids or annotation ids)."""
        return frozenset(self._recorded(reason))

    def update(self, other: "SkipCounter") -> None:
        """Add the items ``other`` recorded (e.g. another process's share of the same data)."""
        for reason, keys in other._keys.items():
            self._recorded(reason).update(keys)

    def skipped_total(self) -> int:
        """Items left out, over all reasons (repairs such as clipped boxes not included)."""
        return sum(len(keys) for reason, keys in self._keys.items() if reason not in _REPAIRS)

    def as_dict(self) -> dict[str, int]:
        """``{reason: count}`` for every reason, zeros included (for reports)."""
        return {reason: len(keys) for reason, keys in self._keys.items()}


@dataclass(frozen=True)
class ImageInfo:
    """One entry of ``images``: id, file name, size in the JSON, and the file's path."""

    id: int
    file_name: str
    height: int
    width: int
    path: Path


@dataclass(frozen=True, eq=False)
class Instance:
    """One usable annotation of an image.

    Arguments:
      annotation_id: the annotation's ``id``.
      image_id: the image it belongs to.
      category_id: its category.
      box_xywh: COCO box ``[x, y, w, h]`` (float64), clipped to the image.
      area: the annotation's ``area`` field (COCO semantics; used for size buckets).
      iscrowd: the annotation's ``iscrowd`` flag.
      mask: bool array of shape (height, width).
    """

    annotation_id: int
    image_id: int
    category_id: int
    box_xywh: np.ndarray
    area: float
    iscrowd: bool
    mask: np.ndarray

    @property
    def box_xyxy(self) -> np.ndarray:
        """The box as ``[x0, y0, x1, y1]``."""
        return xywh_to_xyxy(self.box_xywh)


@dataclass(frozen=True, eq=False)
class Sample:
    """One image with its usable instances."""

    image_id: int
    image: np.ndarray
    instances: list[Instance]


def xywh_to_xyxy(box: np.ndarray | list[float]) -> np.ndarray:
    """``[x, y, w, h]`` -> ``[x0, y0, x1, y1]`` (works on (4,) and (N, 4))."""
    b = np.asarray(box, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)


def xyxy_to_xywh(box: np.ndarray | list[float]) -> np.ndarray:
    """``[x0, y0, x1, y1]`` -> ``[x, y, w, h]`` (works on (4,) and (N, 4))."""
    b = np.asarray(box, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., 2:] - b[..., :2]], axis=-1)


def _is_segmentation(seg: Any) -> bool:
    if isinstance(seg, list):
        return all(isinstance(ring, list) and len(ring) % 2 == 0 and all(map(is_number, ring)) for ring in seg)
    if isinstance(seg, dict):
        size = seg.get("size")
        counts = seg.get("counts")
        size_ok = isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size)
        counts_ok = isinstance(counts, str) or (isinstance(counts, list) and all(is_int(v) for v in counts))
        return size_ok and counts_ok
    return False


def _rle_problem(rle: dict) -> str | None:
    """What is wrong with an RLE's runs, or None. pycocotools decodes runs that cover fewer pixels
    than ``size`` into uninitialised memory (a different mask at every read): refused here."""
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = _compressed_runs(counts)
        if counts is None:
            return "'counts' is not a compressed RLE string"
    height, width = rle["size"]
    if any(run < 0 for run in counts):
        return "a run length is negative"
    if sum(counts) != height * width:
        return f"the runs cover {sum(counts)} pixels, 'size' {[height, width]} has {height * width}"
    return None


def _compressed_runs(text: str) -> list[int] | None:
    """The run lengths of COCO's compressed RLE string (pycocotools' ``rleFrString`` format: each
    number in 5-bit groups, least significant first, as characters from '0'; 0x20 marks that more
    groups follow, 0x10 in the last group is the sign; from the third run on, each number is the
    difference to the run two before), or None when the string ends inside a number."""
    runs: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position == len(text):
                return None
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                return None
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position, shift = position + 1, shift + 5
            if not more and group & 0x10:
                value -= 1 << shift
        runs.append(value + runs[-2] if len(runs) > 2 else value)
    return runs


def _validate(data: Any, path: Path) -> dict:
    """Check the COCO structure; return it with ``categories`` present (derived when missing)."""
    check = EntryChecker(f"malformed annotations file {path}")
    if not isinstance(data, dict):
        check.fail("top level", f"must be an object, got {type(data).__name__}")
    images = check.list_of_dicts(data, "images")
    annotations = check.list_of_dicts(data, "annotations")
    for i, img in enumerate(images):
        where = f"images[{i}]"
        check.require(img, where, "id", is_int, "an integer")
        check.require(img, where, "file_name", lambda v: isinstance(v, str) and v != "", "a file name")
        for key in ("height", "width"):
            check.require(img, where, key, lambda v: is_int(v) and v > 0, "a positive integer")
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        for key in ("id", "image_id", "category_id"):
            check.require(ann, where, key, is_int, "an integer")
        check.require(ann, where, "bbox", is_box, BOX_EXPECTED)
        check.require(ann, where, "area", is_number, "a finite number")
        segmentation = check.require(ann, where, "segmentation", _is_segmentation,
                                     "polygons (lists of x, y pairs) or RLE {size, counts}")
        problem = _rle_problem(segmentation) if isinstance(segmentation, dict) else None
        if problem:
            check.fail(where, f"RLE segmentation: {problem}")
        if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
            check.fail(where, f"'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
    check.unique_ids(images, "images")
    check.unique_ids(annotations, "annotations")
    data = dict(data)
    if "categories" in data:
        for i, cat in enumerate(check.list_of_dicts(data, "categories")):
            check.require(cat, f"categories[{i}]", "id", is_int, "an integer")
    else:
        used = sorted({ann["category_id"] for ann in annotations})
        data["categories"] = [{"id": c, "name": f"category_{c}"} for c in used]
    return data


def _leaves_folder(file_name: str) -> bool:
    """Whether an annotations ``file_name`` is absolute or climbs out of the images folder."""
    path = PurePath(file_name)
    return path.is_absolute() or ".." in path.parts


def coco_index(data: dict) -> COCO:
    """A pycocotools COCO index over the COCO-format dict ``data``, without its prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDataset:
    """Images and instance masks of a COCO-format dataset.

    Arguments:
      images_dir: folder holding the images named by ``file_name``.
      annotations_json: COCO instances JSON.

    ``image_ids`` lists, in ascending id order, the images whose file exists; the others are
    counted as ``missing_image``. ``coco`` is the pycocotools index of the file as written (for
    COCOeval, whose crowd and area semantics it keeps). ``skips`` counts everything left out.
    """

    def __init__(self, images_dir: str | Path, annotations_json: str | Path) -> None:
        self.images_dir = Path(images_dir)
        self.annotations_path = Path(annotations_json)
        if not self.images_dir.is_dir():
            raise DataError(f"images folder not found: {self.images_dir}")
        data = _validate(read_json(self.annotations_path, "annotations file"), self.annotations_path)
        self.coco = coco_index(data)
        self.skips = SkipCounter()
        self.categories: dict[int, str] = {c["id"]: str(c.get("name", c["id"])) for c in data["categories"]}
        self._images = {
            img["id"]: ImageInfo(img["id"], img["file_name"], img["height"], img["width"],
                                 self.images_dir / img["file_name"])
            for img in data["images"]
        }
        self._annotations: dict[int, list[dict]] = {image_id: [] for image_id in self._images}
        for ann in sorted(data["annotations"], key=lambda a: a["id"]):
            if ann["image_id"] in self._annotations:
                self._annotations[ann["image_id"]].append(ann)
            else:
                self.skips.add("orphan_annotation", ann["id"])
        self.image_ids: list[int] = []
        for image_id in sorted(self._images):
            if _leaves_folder(self._images[image_id].file_name):
                self.skips.add("path_outside_images", image_id)
            elif self._images[image_id].path.is_file():
                self.image_ids.append(image_id)
            else:
                self.skips.add("missing_image", image_id)
        if self.skips.count("path_outside_images"):
            log.warning("%d image entries of %s name a file outside %s (absolute or '..' paths): skipped",
                        self.skips.count("path_outside_images"), self.annotations_path, self.images_dir)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_info(self, image_id: int) -> ImageInfo:
        """The ``images`` entry of ``image_id``; an unknown id raises DataError."""
        if image_id not in self._images:
            raise DataError(f"image id {image_id} is not in {self.annotations_path}")
        return self._images[image_id]

    def load_image(self, image_id: int) -> np.ndarray:
        """The image as uint8 RGB of shape (height, width, 3).

        A missing, unreadable or wrongly sized file raises DataError naming the path
        (:meth:`samples` skips and counts those instead).
        """
        image, problem = self._read_image(self.image_info(image_id))
        if image is None:
            raise DataError(f"image {image_id} ({self._images[image_id].path}): {SKIP_REASONS[problem]}")
        return image

    def _read_image(self, info: ImageInfo) -> tuple[np.ndarray | None, str | None]:
        if _leaves_folder(info.file_name):
            return None, "path_outside_images"
        if not info.path.is_file():
            return None, "missing_image"
        try:
            with Image.open(info.path) as img:
                image = rgb8(img)
        except UnsupportedImage:
            return None, "unsupported_image"
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None, "unreadable_image"
        if image.shape[:2] != (info.height, info.width):
            return None, "image_size_mismatch"
        return image, None

    def instances(self, image_id: int, include_crowd: bool = False) -> list[Instance]:
        """The usable instances of ``image_id`` in ascending annotation id order.

        Arguments:
          image_id: the image.
          include_crowd: keep ``iscrowd`` annotations (left out and counted as ``crowd`` by
            default, as for calibration prompts; the prompted mIoU keeps them, as EfficientViT-SAM's
            evaluator does; COCOeval handles crowds itself through ``coco``).
        """
        info = self.image_info(image_id)
        result = []
        for ann in self._annotations[image_id]:
            instance = self._instance(ann, info, include_crowd)
            if instance is not None:
                result.append(instance)
        return result

    def _instance(self, ann: dict, info: ImageInfo, include_crowd: bool) -> Instance | None:
        ann_id = ann["id"]
        if ann.get("iscrowd", 0) and not include_crowd:
            self.skips.add("crowd", ann_id)
            return None
        if ann["area"] <= 0:
            self.skips.add("zero_area", ann_id)
            return None
        box = self._clipped_box(ann, info)
        if box is None:
            return None
        mask = self._decode(ann, info)
        if mask is None:
            return None
        return Instance(ann_id, info.id, ann["category_id"], box, float(ann["area"]),
                        bool(ann.get("iscrowd", 0)), mask)

    def _clipped_box(self, ann: dict, info: ImageInfo) -> np.ndarray | None:
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            self.skips.add("degenerate_box", ann["id"])
            return None
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(info.width)), min(y + h, float(info.height))
        if x1 <= x0 or y1 <= y0:
            self.skips.add("box_outside_image", ann["id"])
            return None
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            self.skips.add("clipped_box", ann["id"])
        return np.array([x0, y0, x1 - x0, y1 - y0], dtype=np.float64)

    def _decode(self, ann: dict, info: ImageInfo) -> np.ndarray | None:
        seg = ann["segmentation"]
        if isinstance(seg, list):
            # pycocotools reads a 4-number ring as a box; rings of < 3 points have no area anyway.
            rings = [ring for ring in seg if len(ring) >= 6]
            rle = mask_utils.merge(mask_utils.frPyObjects(rings, info.height, info.width)) if rings else None
        elif list(seg["size"]) != [info.height, info.width]:
            self.skips.add("mask_size_mismatch", ann["id"])
            return None
        elif isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, info.height, info.width)
        else:
            rle = seg
        mask = mask_utils.decode(rle).astype(bool) if rle is not None else None
        if mask is None or not mask.any():
            self.skips.add("empty_mask", ann["id"])
            return None
        return mask

    def samples(self, image_ids: list[int] | None = None, include_crowd: bool = False,
                keep_empty: bool = False) -> Iterator[Sample]:
        """Yield each readable image with its usable instances, skipping and counting the rest.

        Arguments:
          image_ids: which images (default: ``image_ids``), in the given order.
          include_crowd: see :meth:`instances`.
          keep_empty: also yield images without a usable instance (for detector prompts);
            by default they are skipped and counted as ``image_without_instances``.
        """
        for image_id in self.image_ids if image_ids is None else image_ids:
            info = self.image_info(image_id)
            instances = self.instances(image_id, include_crowd)
            if not instances and not keep_empty:
                self.skips.add("image_without_instances", image_id)
                continue
            image, problem = self._read_image(info)
            if image is None:
                self.skips.add(problem, image_id)
                continue
            yield Sample(image_id, image, instances)
