"""Segmentation metrics: per-instance mask IoU with COCO size buckets (mIoU) and COCO mask AP.

mIoU follows EfficientViT-SAM's evaluator (the survey's Table 5): one IoU per annotation, instances
with area < 1 left out, the mean over all instances and per size bucket. Values are fractions in
[0, 1] (EfficientViT prints percentages). Mask AP is pycocotools' COCOeval with ``iouType="segm"``.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ptqsam.data.coco import CocoDataset, coco_index
from ptqsam.data.validation import EntryChecker, is_int, is_number
from ptqsam.errors import DataError

SMALL_MAX_AREA = 32**2
MEDIUM_MAX_AREA = 96**2
BUCKETS: tuple[str, ...] = ("small", "medium", "large")
AP_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")

ScoreMode = Literal["detector_x_iou", "detector"]


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Exact IoU |pred ∩ gt| / |pred ∪ gt| of two same-shape masks (non-zero = inside).

    Two empty masks agree perfectly: their IoU is 1.0 (an empty union never gives NaN). In the
    mIoU protocol the ground truth is never empty (area < 1 is skipped), so this never decides a
    published number.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise DataError(f"mask shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    pred, gt = pred.astype(bool), gt.astype(bool)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def bucket_of(area: float) -> str:
    """COCO size bucket of an instance area: ``"small"``, ``"medium"`` or ``"large"``.

    Half-open ranges: small [0, 32²), medium [32², 96²), large [96², inf), so each instance falls
    in exactly one bucket and the bucket counts add up to the total. COCOeval (areaRng
    [0, 32²], [32², 96²], [96², 1e10]) and EfficientViT-SAM's evaluator use closed ranges, so an
    area of exactly 1024 or 9216 counts in both neighbouring buckets there; here it goes to the
    larger one.
    """
    if not is_number(area) or area < 0:
        raise DataError(f"area must be a finite number >= 0, got {area!r}")
    if area < SMALL_MAX_AREA:
        return "small"
    if area < MEDIUM_MAX_AREA:
        return "medium"
    return "large"


@dataclass(frozen=True)
class MiouSummary:
    """Mean IoU over all instances and per size bucket (None for an empty bucket), with counts."""

    miou: float
    miou_small: float | None
    miou_medium: float | None
    miou_large: float | None
    count: int
    count_small: int
    count_medium: int
    count_large: int
    skipped_area_below_1: int

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain dict for reports and JSON."""
        return dict(self.__dict__)


class MiouAccumulator:
    """Accumulates per-instance IoUs by size bucket; instances with area < 1 are skipped and counted."""

    def __init__(self) -> None:
        self._sums = {bucket: 0.0 for bucket in BUCKETS}
        self._counts = {bucket: 0 for bucket in BUCKETS}
        self._skipped = 0

    def add(self, iou: float, area: float) -> bool:
        """Add one instance's IoU (in [0, 1]) with its ground-truth area; False if it was skipped."""
        if not is_number(iou) or not 0.0 <= iou <= 1.0:
            raise DataError(f"iou must be a number in [0, 1], got {iou!r}")
        if is_number(area) and area < 1:
            self._skipped += 1
            return False
        bucket = bucket_of(area)
        self._sums[bucket] += float(iou)
        self._counts[bucket] += 1
        return True

    def summary(self) -> MiouSummary:
        """The means so far; raises DataError if no instance has been added."""
        total = sum(self._counts.values())
        if total == 0:
            raise DataError(f"no instance to average (skipped with area < 1: {self._skipped})")
        means = {b: self._sums[b] / self._counts[b] if self._counts[b] else None for b in BUCKETS}
        return MiouSummary(
            miou=sum(self._sums.values()) / total,
            miou_small=means["small"], miou_medium=means["medium"], miou_large=means["large"],
            count=total, count_small=self._counts["small"], count_medium=self._counts["medium"],
            count_large=self._counts["large"], skipped_area_below_1=self._skipped,
        )


def prompt_score(detector_score: float, predicted_iou: float, mode: ScoreMode = "detector_x_iou") -> float:
    """The score of a box-prompted mask for AP ranking.

    Arguments:
      detector_score: the detector's score of the box.
      predicted_iou: SAM's predicted IoU of the chosen mask (used as is, not clamped, as PTQ4SAM).
      mode: ``"detector_x_iou"`` (PTQ4SAM: their product) or ``"detector"`` (the box score alone).
    """
    if not is_number(detector_score) or not is_number(predicted_iou):
        raise DataError(f"scores must be finite numbers, got {detector_score!r} and {predicted_iou!r}")
    if mode == "detector_x_iou":
        return float(detector_score) * float(predicted_iou)
    if mode == "detector":
        return float(detector_score)
    raise DataError(f"score mode must be 'detector_x_iou' or 'detector', got {mode!r}")


def mask_result(image_id: int, category_id: int, mask: np.ndarray, score: float) -> dict[str, Any]:
    """A COCO results entry for a binary (H, W) mask: RLE with ``counts`` as str (JSON-ready)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if not is_number(score):
        raise DataError(f"score must be a finite number, got {score!r}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(bool).astype(np.uint8)))
    return {
        "image_id": int(image_id),
        "category_id": int(category_id),
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "score": float(score),
    }


@dataclass(frozen=True)
class MaskApResult:
    """COCO mask AP (fractions in [0, 1]); None where the evaluated images have no ground truth
    in that area range. ``note`` explains special cases; ``log`` holds COCOeval's printout."""

    ap: float | None
    ap50: float | None
    ap75: float | None
    ap_small: float | None
    ap_medium: float | None
    ap_large: float | None
    num_results: int
    num_images: int
    note: str
    log: str

    def as_dict(self) -> dict[str, float | None | str]:
        """``{"AP", "AP50", "AP75", "APs", "APm", "APl", "note"}`` for reports and JSON."""
        values = (self.ap, self.ap50, self.ap75, self.ap_small, self.ap_medium, self.ap_large)
        return {**dict(zip(AP_KEYS, values)), "note": self.note}


def _checked_results(results: Sequence[dict], gt: COCO) -> list[dict]:
    """Copies of the entries, validated, without ``bbox`` (so COCOeval takes areas from masks)."""
    if not isinstance(results, (list, tuple)):
        raise DataError(f"results must be a list of entries, got {type(results).__name__}")
    check = EntryChecker("malformed results")
    checked = []
    for i, entry in enumerate(results):
        where = f"result entry {i}"
        if not isinstance(entry, dict):
            check.fail(where, f"must be a dict, got {type(entry).__name__}")
        image_id = check.require(entry, where, "image_id", lambda v: is_int(v) and v in gt.imgs,
                                 "an image id of the ground truth")
        # COCOeval drops a category the ground truth lacks without a word (0-based labels: AP 0)
        check.require(entry, where, "category_id", lambda v: is_int(v) and v in gt.cats,
                      "a category id of the ground truth")
        check.require(entry, where, "score", is_number, "a finite number")
        size = [gt.imgs[image_id]["height"], gt.imgs[image_id]["width"]]
        check.require(entry, where, "segmentation",
                      lambda v: isinstance(v, dict) and isinstance(v.get("counts"), (str, bytes))
                      and list(v.get("size", [])) == size,
                      f"a compressed RLE of size {size} (see mask_result)")
        checked.append({key: value for key, value in entry.items() if key != "bbox"})
    return checked


def _results_index(gt: COCO, results: list[dict]) -> COCO:
    if results:
        return gt.loadRes(results)
    # loadRes cannot take an empty list
    return coco_index({"images": gt.dataset["images"], "categories": gt.dataset.get("categories", []),
                       "annotations": []})


def mask_ap(coco_gt: COCO | CocoDataset, results: Sequence[dict],
            image_ids: Sequence[int] | None = None) -> MaskApResult:
    """COCO mask AP of ``results`` against ``coco_gt`` (pycocotools COCOeval, ``iouType="segm"``).

    Arguments:
      coco_gt: the ground truth: a pycocotools COCO, or a CocoDataset (its ``coco``).
      results: entries ``{image_id, category_id, segmentation (compressed RLE), score}``
        (see :func:`mask_result`); a ``bbox`` key is ignored. An empty list gives AP 0 with a note.
      image_ids: the evaluated images; default all images of a COCO, or a CocoDataset's
        ``image_ids`` (the images whose file exists).
    """
    gt = coco_gt.coco if isinstance(coco_gt, CocoDataset) else coco_gt
    if not isinstance(gt, COCO):
        raise DataError(f"coco_gt must be a pycocotools COCO or a CocoDataset, got {type(coco_gt).__name__}")
    if image_ids is None:
        image_ids = coco_gt.image_ids if isinstance(coco_gt, CocoDataset) else gt.getImgIds()
    if len(image_ids) == 0:  # pycocotools would read an empty id list as "all images"
        raise DataError("no image to evaluate: image_ids is empty")
    unknown = sorted(set(image_ids) - set(gt.imgs))
    if unknown:
        raise DataError(f"image ids not in the ground truth: {unknown[:10]}")
    checked = _checked_results(results, gt)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        evaluator = COCOeval(gt, _results_index(gt, checked), iouType="segm")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [None if s < 0 else float(s) for s in evaluator.stats[:6]]
    notes = []
    if not checked:
        notes.append("no results: every ground-truth instance is missed, AP is 0")
    if stats[0] is None:
        notes.append("no ground-truth instance in the evaluated images: AP is undefined")
    return MaskApResult(*stats, num_results=len(checked), num_images=len(image_ids), note="; ".join(notes),
                        log=log.getvalue())
