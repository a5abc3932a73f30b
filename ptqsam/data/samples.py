"""Calibration images: chosen by seed, held in memory with all their prompts."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ptqsam.data.coco import CocoDataset
from ptqsam.data.prompts import Detections, PromptSet, gt_prompts
from ptqsam.errors import DataError

log = logging.getLogger("ptqsam")


@dataclass(frozen=True, eq=False)
class CalibrationSample:
    """One calibration image (HxWx3 uint8 RGB) with every prompt of it."""

    image_id: int
    image: np.ndarray
    prompts: PromptSet


def choose_image_ids(dataset: CocoDataset, count: int, seed: int) -> list[int]:
    """``count`` image ids drawn without replacement by ``seed`` (all of them if fewer), sorted."""
    ids = sorted(dataset.image_ids)
    if not ids:
        raise DataError("the dataset has no readable image to calibrate on")
    pick = np.random.default_rng(seed).choice(len(ids), size=min(count, len(ids)), replace=False)
    return sorted(ids[i] for i in pick)


def calibration_samples(
    dataset: CocoDataset, count: int, seed: int, prompt: str = "box", num_points: int = 1,
    detections: Detections | None = None,
) -> list[CalibrationSample]:
    """Load the calibration images chosen by ``seed`` with one ground-truth prompt per instance, or,
    for ``prompt="detections"`` with ``detections`` given, with every detector box of the image
    (PTQ4SAM's calibration prompts). ``"detections"`` without ``detections`` (a sweep's detections
    file covers the evaluated images, not the calibration set) prompts each instance with its box.

    Images without a usable instance (with detections: without a detection) are skipped (and
    counted by the dataset) and replaced by further images, drawn by ``seed`` from the rest, so that
    ``count`` images are used while the dataset has them; fewer is not an error: a warning says how
    many are used (the saved state and the sweep cell list them).

    >>> from ptqsam import calibration_samples
    >>> samples = calibration_samples(dataset, count=1, seed=0)     # a CocoDataset
    >>> len(samples), len(samples[0].prompts) > 0
    (1, True)
    """
    if prompt == "detections" and detections is not None:
        def load(ids: list[int]) -> list[CalibrationSample]:
            return [CalibrationSample(s.image_id, s.image, detections.for_image(s.image_id))
                    for s in dataset.samples(ids, keep_empty=True) if len(detections.for_image(s.image_id))]
        usable = f"detection in {detections.path}"
    else:
        kind = "box" if prompt == "detections" else prompt

        def load(ids: list[int]) -> list[CalibrationSample]:
            return [CalibrationSample(s.image_id, s.image, gt_prompts(s.image_id, s.instances, kind, num_points, seed))
                    for s in dataset.samples(ids)]
        usable = "usable instance"
    drawn = choose_image_ids(dataset, count, seed)
    samples = load(drawn)
    replacements = _replacement_order(dataset, drawn, seed)
    while len(samples) < count and replacements:
        batch, replacements = replacements[:count - len(samples)], replacements[count - len(samples):]
        samples += load(sorted(batch))
    samples.sort(key=lambda sample: sample.image_id)
    if not samples:
        raise DataError(f"none of the calibration images has a {usable} (all {len(dataset.image_ids)} image(s) "
                        "of the dataset were tried)")
    if len(samples) < count:
        log.warning("%d calibration images asked for, %d used: only %d of the dataset's %d image(s) have a %s",
                    count, len(samples), len(samples), len(dataset.image_ids), usable)
    elif any(sample.image_id not in drawn for sample in samples):
        log.info("calibration images without a %s were replaced by others drawn by seed %d", usable, seed)
    log.info("calibration images (seed %d): %s", seed, [s.image_id for s in samples])
    return samples


def _replacement_order(dataset: CocoDataset, drawn: list[int], seed: int) -> list[int]:
    """The images not ``drawn``, in the order seed ``seed`` gives them as replacements."""
    taken = set(drawn)
    rest = [image_id for image_id in sorted(dataset.image_ids) if image_id not in taken]
    order = np.random.default_rng([seed, 1]).permutation(len(rest))
    return [rest[i] for i in order]
