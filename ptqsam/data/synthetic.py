"""A synthetic COCO-format instance-segmentation dataset, for tests and small training runs.

Each image has a textured background, unannotated clutter (1 to 4 textured blobs and lines) and 3 to 7
annotated objects of five shape categories (ellipse, rectangle, triangle, star, ring) filled with
textures (solid, stripes, checker, noise, gradient). Object sizes are drawn per COCO size bucket
(area < 32², 32²..96², > 96²; the large bucket needs images of about 170² or more). Objects are
painted in order, so a later object hides what it covers of the earlier ones: every mask is the
visible part only, masks never overlap, and an object with fewer than ``min_visible_area`` visible
pixels is dropped and counted in ``hidden_objects``.

Everything derives from ``np.random.default_rng([seed, image index])``: the same (seed, count)
gives byte-identical JSON and identical pixels, and image ``i`` does not depend on ``count``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ptqsam.data.validation import is_int
from ptqsam.errors import DataError
from ptqsam.io import write_atomic, write_text_atomic

CATEGORIES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "star", "ring")

#: Target object areas (pixels) per size bucket, before occlusion; drawn log-uniformly.
BUCKET_AREAS: dict[str, tuple[float, float]] = {
    "small": (200.0, 900.0),
    "medium": (1300.0, 7500.0),
    "large": (11000.0, 26000.0),
}

#: Bump whenever a change to this module changes the pixels or annotations it generates: cached
#: generated datasets (:mod:`ptqsam.data.generated`) are keyed by it.
GENERATOR_VERSION = 1

JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 1  # fast; PNG stays lossless


@dataclass(frozen=True)
class SyntheticDataset:
    """Where :func:`generate_dataset` wrote the dataset, and what it holds."""

    images_dir: Path
    annotations_path: Path
    image_ids: list[int]
    num_annotations: int
    hidden_objects: int


# --------------------------------------------------------------------------- textures


def _texture(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """A random texture evaluated at pixel coordinates ``(ys, xs)``: float32 (..., 3) in 0..255."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    kind = rng.integers(5)
    theta = rng.uniform(0, np.pi)
    along = xs * np.cos(theta) + ys * np.sin(theta)
    if kind == 0:  # solid
        weight = np.zeros_like(along)
    elif kind == 1:  # stripes
        weight = (np.sin(along * (2 * np.pi / rng.uniform(4, 16))) > 0).astype(np.float32)
    elif kind == 2:  # checker
        cell = rng.integers(3, 12)
        weight = ((ys // cell + xs // cell) % 2).astype(np.float32)
    elif kind == 3:  # noise
        weight = rng.random(along.shape, dtype=np.float32)
    else:  # gradient
        span = max(float(np.ptp(along)), 1.0)
        weight = (along - along.min()) / span
    return c0 + weight[..., None] * (c1 - c0)


# --------------------------------------------------------------------------- shapes


def _polygon_mask(vertices: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test at pixel centres; ``vertices`` is (V, 2) of (x, y)."""
    px, py = xs + 0.5, ys + 0.5
    inside = np.zeros(px.shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if y1 == y2:
            continue
        crosses = (y1 > py) != (y2 > py)
        x_at = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (px < x_at)
    return inside


def _shoelace(vertices: np.ndarray) -> float:
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _scaled_polygon(unit: np.ndarray, area: float, centre: np.ndarray, rng: np.random.Generator) -> Callable:
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    vertices = unit @ rot.T * np.sqrt(area / _shoelace(unit)) + centre
    return lambda ys, xs: _polygon_mask(vertices, ys, xs)


def _ellipse(rng: np.random.Generator, area: float, centre: np.ndarray, hole: float = 0.0) -> Callable:
    aspect = rng.uniform(0.5, 1.0)
    a = np.sqrt(area / (np.pi * aspect * (1.0 - hole**2)))
    b = aspect * a
    theta = rng.uniform(0, np.pi)

    def inside(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        dx, dy = xs + 0.5 - centre[0], ys + 0.5 - centre[1]
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= hole**2)

    return inside


def _shape(category: str, rng: np.random.Generator, area: float, centre: np.ndarray) -> Callable:
    """An inside-test ``f(ys, xs) -> bool array`` for a random shape of about ``area`` pixels."""
    if category == "ellipse":
        return _ellipse(rng, area, centre)
    if category == "ring":
        return _ellipse(rng, area, centre, hole=rng.uniform(0.45, 0.7))
    if category == "rectangle":
        aspect = rng.uniform(0.35, 1.0)
        unit = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]], dtype=np.float64)
    elif category == "triangle":
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=3))
        angles = (angles + np.array([0.0, 0.7, 1.4])) % (2 * np.pi)  # keep it from collapsing
        unit = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    else:  # star
        tips = int(rng.integers(5, 8))
        angles = np.arange(2 * tips) * np.pi / tips
        radii = np.where(np.arange(2 * tips) % 2 == 0, 1.0, rng.uniform(0.4, 0.6))
        unit = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=-1)
    return _scaled_polygon(unit, area, centre, rng)


def _rasterise(inside: Callable, centre: np.ndarray, reach: float, size: int) -> np.ndarray:
    """Evaluate ``inside`` on the image crop within ``reach`` pixels of ``centre``."""
    x0, y0 = (max(int(c - reach), 0) for c in centre)
    x1, y1 = (min(int(c + reach) + 1, size) for c in centre)
    mask = np.zeros((size, size), dtype=bool)
    if x1 > x0 and y1 > y0:
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        mask[y0:y1, x0:x1] = inside(ys, xs)
    return mask


def _reach(area: float) -> float:
    """A radius sure to hold a shape of ``area`` pixels (thin shapes reach further than sqrt(area))."""
    return 3.0 * np.sqrt(area) + 2


def _line(rng: np.random.Generator, size: int) -> np.ndarray:
    """The mask of a random thick line segment."""
    p, q = rng.uniform(0, size, size=(2, 2))
    half_width = rng.uniform(1.0, 4.0)
    d = q - p

    def inside(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        t = np.clip(((xs - p[0]) * d[0] + (ys - p[1]) * d[1]) / max(float(d @ d), 1e-9), 0.0, 1.0)
        return np.hypot(xs - p[0] - t * d[0], ys - p[1] - t * d[1]) <= half_width

    return _rasterise(inside, (p + q) / 2, float(np.hypot(*d)) / 2 + half_width + 1, size)


# --------------------------------------------------------------------------- one image


def _paint(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray) -> None:
    """Fill the ``mask`` pixels of ``image`` with a random texture."""
    if mask.any():
        image[mask] = _texture(rng, ys[mask], xs[mask])


def _object_areas(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """Target areas, one size bucket drawn uniformly per object (buckets that fit the image)."""
    limit = 0.4 * size * size
    ranges = [(lo, min(hi, limit)) for lo, hi in BUCKET_AREAS.values() if lo < limit]
    picks = rng.integers(len(ranges), size=count)
    lows = np.log([ranges[i][0] for i in picks])
    highs = np.log([ranges[i][1] for i in picks])
    return np.exp(rng.uniform(lows, highs))


def visible_masks(masks: Sequence[np.ndarray], min_visible_area: int = 1) -> tuple[list[int], list[np.ndarray]]:
    """What stays visible of objects painted in order (a later object hides the earlier ones).

    Arguments:
      masks: full shape masks, in painting order.
      min_visible_area: objects with fewer visible pixels are dropped.

    Returns the indices of the kept objects and their visible masks (pairwise disjoint).
    """
    if not masks:
        return [], []
    owner = np.full(masks[0].shape, -1, dtype=np.int32)
    for index, mask in enumerate(masks):
        owner[mask] = index
    visible = [owner == index for index in range(len(masks))]
    kept = [index for index, mask in enumerate(visible) if np.count_nonzero(mask) >= min_visible_area]
    return kept, [visible[index] for index in kept]


def _render_image(rng: np.random.Generator, size: int,
                  min_visible_area: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]], int]:
    """Pixels, the visible (category id, mask) of each kept object, and how many were hidden."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _texture(rng, ys, xs)
    for _ in range(int(rng.integers(1, 5))):  # clutter: never annotated
        if rng.random() < 0.5:
            centre = rng.uniform(0, size, size=2)
            mask = _rasterise(_ellipse(rng, rng.uniform(30, 1500), centre), centre, _reach(1500), size)
        else:
            mask = _line(rng, size)
        _paint(image, mask, rng, ys, xs)

    categories, masks = [], []
    for area in _object_areas(rng, int(rng.integers(3, 8)), size):
        category = int(rng.integers(len(CATEGORIES)))
        centre = rng.uniform(0.1 * size, 0.9 * size, size=2)
        mask = _rasterise(_shape(CATEGORIES[category], rng, area, centre), centre, _reach(area), size)
        _paint(image, mask, rng, ys, xs)
        categories.append(category + 1)
        masks.append(mask)
    kept, visible = visible_masks(masks, min_visible_area)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return pixels, [(categories[i], m) for i, m in zip(kept, visible)], len(masks) - len(kept)


def _annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
    }


# --------------------------------------------------------------------------- public


def generate_dataset(out_dir: str | Path, count: int = 24, seed: int = 0, image_size: int = 256,
                     image_format: Literal["png", "jpeg"] = "png", min_visible_area: int = 64) -> SyntheticDataset:
    """Write a synthetic COCO-format dataset and return where it is.

    Arguments:
      out_dir: output folder; gets ``images/`` (``000001.png``, ...) and ``annotations.json``.
      count: number of images (ids 1..count).
      seed: the dataset's seed.
      image_size: side of the square images, at least 32.
      image_format: ``"png"`` (lossless) or ``"jpeg"`` (quality 90).
      min_visible_area: objects with fewer visible pixels after occlusion are dropped.

    >>> from ptqsam import CocoDataset, generate_dataset
    >>> data = generate_dataset("synthetic", count=2, seed=0)
    >>> CocoDataset(data.images_dir, data.annotations_path).image_ids
    [1, 2]
    """
    for name, value, low in (("count", count, 1), ("seed", seed, 0), ("image_size", image_size, 32),
                             ("min_visible_area", min_visible_area, 1)):
        if not is_int(value) or value < low:
            raise DataError(f"{name} must be an integer >= {low}, got {value!r}")
    if image_format not in ("png", "jpeg"):
        raise DataError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".png" if image_format == "png" else ".jpg"

    images, annotations, hidden = [], [], 0
    for image_id in range(1, count + 1):
        rng = np.random.default_rng([seed, image_id])
        pixels, objects, hidden_here = _render_image(rng, image_size, min_visible_area)
        hidden += hidden_here
        file_name = f"{image_id:06d}{suffix}"
        options = {"quality": JPEG_QUALITY} if image_format == "jpeg" else {"compress_level": PNG_COMPRESS_LEVEL}
        write_atomic(images_dir / file_name, lambda f: Image.fromarray(pixels).save(f, format=image_format, **options),
                     mode="wb")
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
        for category_id, mask in objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, category_id, mask))

    data = {
        "info": {"description": "ptqsam synthetic shapes", "seed": seed, "count": count,
                 "image_size": image_size, "hidden_objects": hidden},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)],
    }
    annotations_path = out / "annotations.json"
    write_text_atomic(annotations_path, json.dumps(data, sort_keys=True, separators=(",", ":")))
    return SyntheticDataset(images_dir, annotations_path, [img["id"] for img in images], len(annotations), hidden)


def split_ids(ids: Sequence[int], val_fraction: float = 0.25, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split image ids into (train, val), each sorted, deterministically from ``seed``.

    The validation part has ``round(val_fraction * len(ids))`` ids; the order of ``ids`` does not
    matter (they are sorted before the seeded permutation).
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise DataError(f"val_fraction must be in [0, 1], got {val_fraction!r}")
    unique = sorted(set(ids))
    if len(unique) != len(ids):
        raise DataError("ids contain duplicates")
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val = int(round(val_fraction * len(unique)))
    val = sorted(unique[i] for i in order[:n_val])
    train = sorted(unique[i] for i in order[n_val:])
    return train, val
