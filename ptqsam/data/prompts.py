"""Prompts for SAM: from ground-truth instances (mIoU protocol) or from detector boxes (mask AP).

Every prompt is in the original image's pixel coordinates: boxes ``[x0, y0, x1, y1]`` in pixel
edges (as COCO boxes; the tight box of a mask whose pixels span columns 3..5 is x 3..6), points
``(x, y)`` = (column, row) of a pixel, label 1 (foreground). All prompts of one image form one
:class:`PromptSet`, which remembers where each prompt came from so results map back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np

from ptqsam.data.coco import Instance, SkipCounter, xywh_to_xyxy
from ptqsam.data.validation import BOX_EXPECTED, EntryChecker, is_box, is_int, is_number, read_json
from ptqsam.errors import DataError

PromptKind = Literal["box", "tight_box", "center_point", "random_points"]
from ptqsam.constants import PROMPT_KINDS  # noqa: E402 - re-exported


@dataclass(frozen=True, eq=False)
class PromptSet:
    """All prompts of one image (one batch), row ``i`` of each array belonging to prompt ``i``.

    Arguments:
      image_id: the image.
      source: ``"annotation"`` (``ids`` are annotation ids) or ``"detection"`` (``ids`` are
        indices of entries in the detections file).
      ids: (N,) int64, where each prompt came from.
      category_ids: (N,) int64.
      scores: (N,) float64, the detector scores (1.0 for ground-truth prompts).
      boxes: (N, 4) float64 XYXY boxes, or None.
      points: (N, K, 2) float64 ``(x, y)`` points, or None.
      point_labels: (N, K) int64 labels (1 = foreground), given with ``points``.
    """

    image_id: int
    source: Literal["annotation", "detection"]
    ids: np.ndarray
    category_ids: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray | None = None
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.source not in ("annotation", "detection"):
            raise DataError(f"prompt source must be 'annotation' or 'detection', got {self.source!r}")
        if self.boxes is None and self.points is None:
            raise DataError(f"prompts of image {self.image_id} have neither boxes nor points")
        if (self.points is None) != (self.point_labels is None):
            raise DataError(f"prompts of image {self.image_id}: points and point_labels go together")
        shapes = {
            "category_ids": (self.category_ids.shape, (n,)),
            "scores": (self.scores.shape, (n,)),
            "boxes": (None if self.boxes is None else self.boxes.shape, (n, 4)),
            "points": (None if self.points is None else self.points.shape[:1] + self.points.shape[2:], (n, 2)),
            "point_labels": (None if self.point_labels is None else self.point_labels.shape,
                             None if self.points is None else self.points.shape[:2]),
        }
        for name, (shape, expected) in shapes.items():
            if shape is not None and shape != expected:
                raise DataError(f"prompts of image {self.image_id}: {name} has shape {shape}, expected {expected}")

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, rows: slice | np.ndarray) -> PromptSet:
        """The prompts at ``rows`` (a slice or index array), as a new PromptSet."""
        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        return PromptSet(self.image_id, self.source, self.ids[rows], self.category_ids[rows], self.scores[rows],
                         take(self.boxes), take(self.points), take(self.point_labels))

    def chunks(self, size: int) -> Iterator[PromptSet]:
        """Consecutive PromptSets of at most ``size`` prompts (to bound decoder memory)."""
        if not is_int(size) or size < 1:
            raise DataError(f"chunk size must be a positive integer, got {size!r}")
        for start in range(0, len(self), size):
            yield self.select(slice(start, start + size))


def mask_box(mask: np.ndarray) -> np.ndarray:
    """The tightest XYXY box (pixel edges) around the True pixels of a 2-D mask."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise DataError(f"mask must be 2-D, got shape {mask.shape}")
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        raise DataError("mask is empty: it has no box")
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def box_center(box_xyxy: np.ndarray) -> np.ndarray:
    """The centre ``(x, y)`` of an XYXY box (it may fall outside the object, e.g. for a ring)."""
    b = np.asarray(box_xyxy, dtype=np.float64)
    return (b[..., :2] + b[..., 2:]) / 2.0


def instance_rng(seed: int, image_id: int, annotation_id: int) -> np.random.Generator:
    """A generator that depends only on (seed, image id, annotation id), not on iteration order."""
    for name, value in (("seed", seed), ("image_id", image_id), ("annotation_id", annotation_id)):
        if not is_int(value) or value < 0:
            raise DataError(f"{name} must be a non-negative integer, got {value!r}")
    return np.random.default_rng([int(seed), int(image_id), int(annotation_id)])


def random_mask_points(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` points ``(x, y)`` on pixels of ``mask``, distinct while the mask has ``k`` pixels."""
    if not is_int(k) or k < 1:
        raise DataError(f"number of points must be a positive integer, got {k!r}")
    rows, cols = np.nonzero(np.asarray(mask, dtype=bool))
    if rows.size == 0:
        raise DataError("mask is empty: no point can be drawn in it")
    pick = rng.choice(rows.size, size=k, replace=k > rows.size)
    return np.stack([cols[pick], rows[pick]], axis=-1).astype(np.float64)


def gt_prompts(image_id: int, instances: Sequence[Instance], kind: PromptKind, num_points: int = 1,
               seed: int = 0) -> PromptSet:
    """One prompt per instance of an image.

    Arguments:
      image_id: the image the instances belong to.
      instances: its usable instances (from :meth:`CocoDataset.instances`).
      kind: ``"box"`` (the annotation's box), ``"tight_box"`` (tightest box of the mask),
        ``"center_point"`` (centre of the annotation's box) or ``"random_points"``.
      num_points: points per instance for ``"random_points"``.
      seed: seed of the random points (with the image and annotation ids).
    """
    if kind not in PROMPT_KINDS:
        raise DataError(f"unknown prompt kind {kind!r}; known: {PROMPT_KINDS}")
    n = len(instances)
    ids = np.array([inst.annotation_id for inst in instances], dtype=np.int64)
    common = dict(image_id=image_id, source="annotation", ids=ids,
                  category_ids=np.array([inst.category_id for inst in instances], dtype=np.int64),
                  scores=np.ones(n, dtype=np.float64))
    if kind in ("box", "tight_box"):
        boxes = [inst.box_xyxy if kind == "box" else mask_box(inst.mask) for inst in instances]
        return PromptSet(**common, boxes=np.array(boxes, dtype=np.float64).reshape(n, 4))
    if kind == "center_point":
        points = np.array([box_center(inst.box_xyxy) for inst in instances], dtype=np.float64).reshape(n, 1, 2)
    else:
        points = np.array([random_mask_points(inst.mask, num_points, instance_rng(seed, image_id, inst.annotation_id))
                           for inst in instances], dtype=np.float64).reshape(n, num_points, 2)
    return PromptSet(**common, points=points, point_labels=np.ones(points.shape[:2], dtype=np.int64))


def _check_detection(check: EntryChecker, entry: object, where: str) -> None:
    if not isinstance(entry, dict):
        check.fail(where, f"must be an object, got {type(entry).__name__}")
    check.require(entry, where, "image_id", is_int, "an integer")
    check.require(entry, where, "category_id", is_int, "an integer")
    check.require(entry, where, "bbox", is_box, BOX_EXPECTED)
    check.require(entry, where, "score", is_number, "a finite number")


class Detections:
    """Detector boxes and scores in COCO results format, as box prompts per image.

    Arguments:
      path: JSON list of ``{image_id, category_id, bbox [x, y, w, h], score}``.
      score_threshold: keep detections with ``score >= score_threshold``.
      top_k: keep at most this many detections per image, highest scores first.

    A malformed entry raises DataError naming the file and the entry index; boxes with
    width or height <= 0 are skipped and counted in ``skips`` (``degenerate_detection``, keyed by
    ``(image_id, index)``).
    """

    def __init__(self, path: str | Path, score_threshold: float = 0.0, top_k: int | None = None) -> None:
        self.path = Path(path)
        if not is_number(score_threshold):
            raise DataError(f"score_threshold must be a finite number, got {score_threshold!r}")
        if top_k is not None and (not is_int(top_k) or top_k < 1):
            raise DataError(f"top_k must be a positive integer or None, got {top_k!r}")
        entries = read_json(self.path, "detections file")
        if not isinstance(entries, list):
            raise DataError(f"detections file {self.path} must hold a list, got {type(entries).__name__}")
        self.skips = SkipCounter()
        by_image: dict[int, list[int]] = {}
        check = EntryChecker(f"malformed detections file {self.path}")
        for index, entry in enumerate(entries):
            _check_detection(check, entry, f"entry {index}")
            if entry["bbox"][2] <= 0 or entry["bbox"][3] <= 0:
                self.skips.add("degenerate_detection", (entry["image_id"], index))
            elif entry["score"] >= score_threshold:
                by_image.setdefault(entry["image_id"], []).append(index)
        self._prompts = {image_id: self._prompt_set(image_id, [entries[i] for i in indices], indices, top_k)
                         for image_id, indices in by_image.items()}

    @staticmethod
    def _prompt_set(image_id: int, entries: list[dict], indices: list[int], top_k: int | None) -> PromptSet:
        scores = np.array([e["score"] for e in entries], dtype=np.float64)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return PromptSet(
            image_id=image_id, source="detection",
            ids=np.array(indices, dtype=np.int64)[order],
            category_ids=np.array([e["category_id"] for e in entries], dtype=np.int64)[order],
            scores=scores[order],
            boxes=xywh_to_xyxy(np.array([e["bbox"] for e in entries], dtype=np.float64))[order],
        )

    @property
    def image_ids(self) -> list[int]:
        """Images with at least one kept detection, ascending."""
        return sorted(self._prompts)

    @property
    def category_ids(self) -> set[int]:
        """The categories of the kept detections."""
        return {int(c) for prompts in self._prompts.values() for c in prompts.category_ids}

    def for_image(self, image_id: int) -> PromptSet:
        """The kept detections of ``image_id``, highest score first (empty if it has none)."""
        if image_id in self._prompts:
            return self._prompts[image_id]
        empty = np.zeros(0, dtype=np.int64)
        return PromptSet(image_id, "detection", empty, empty.copy(), np.zeros(0), boxes=np.zeros((0, 4)))
