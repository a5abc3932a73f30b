"""Which images a run evaluates and which it calibrates on (shared by sweeps, ``calibrate``,
``evaluate`` and ``inspect``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

from ptqsam.config import ExperimentConfig
from ptqsam.data.coco import CocoDataset
from ptqsam.data.generated import cached_dataset
from ptqsam.data.prompts import Detections
from ptqsam.data.samples import CalibrationSample, calibration_samples
from ptqsam.fingerprint import file_sha256, settings_hash

log = logging.getLogger("ptqsam")
#: generated calibration data uses ``seed`` + this: far from the evaluated data of any nearby seed
CALIBRATION_SEED_OFFSET = 1_000_000


def dataset_for(config: ExperimentConfig) -> CocoDataset:
    """The configured COCO-format dataset, or the synthetic one generated under ``out/data``."""
    if config.images is not None:
        return CocoDataset(config.images, config.annotations)
    return generated(Path(config.out) / "data", config.synthetic_images, config.seed)


def calibration_dataset_for(config: ExperimentConfig, seed: int | None = None) -> CocoDataset:
    """Where the calibration images of calibration seed ``seed`` (default ``config.seed``) come from:
    the configured calibration set; for generated data, a set generated apart under
    ``out/calib_data``, from ``seed`` (so no evaluated image is a calibration image, and each seed
    has its own set); else the evaluated dataset itself, with a warning."""
    seed = config.seed if seed is None else seed
    if config.calib_images_dir is not None:
        return CocoDataset(config.calib_images_dir, config.calib_annotations)
    if config.images is None:
        return generated(Path(config.out) / "calib_data", config.calib_images, seed + CALIBRATION_SEED_OFFSET)
    log.warning("no calibration set given (calib_images_dir): calibrating on images of the evaluated dataset")
    return dataset_for(config)


def calibration_set(config: ExperimentConfig, seed: int | None = None, detections: Detections | None = None
                    ) -> tuple[CocoDataset, list[CalibrationSample]]:
    """The calibration dataset of a run and the images (with their prompts) calibration seed ``seed``
    (default ``config.seed``) calibrates on: from a given dataset, ``calib_images`` images chosen by it;
    with ``detections`` (of the calibration images) and the ``detections`` prompt, their detector boxes."""
    seed = config.seed if seed is None else seed
    dataset = calibration_dataset_for(config, seed)
    return dataset, calibration_samples(dataset, config.calib_images, seed, config.prompt, config.num_points,
                                        detections)


def generated(root: Path, count: int, seed: int) -> CocoDataset:
    """The synthetic dataset of ``(count, seed)`` cached under ``root`` (see :mod:`.generated`)."""
    folder = cached_dataset(root, count, seed)
    return CocoDataset(folder / "images", folder / "annotations.json")


def data_fingerprint(dataset: CocoDataset, image_ids: Iterable[int]) -> dict[str, Any]:
    """What identifies the images a run reads: the annotations file's content and each image's id,
    file name and content (SHA-256; None for a missing file). An image changed under the same name
    and size is another run's data."""
    files = []
    for image_id in image_ids:
        info = dataset.image_info(image_id)
        files.append([image_id, info.file_name, file_sha256(info.path) if info.path.is_file() else None])
    return {"annotations": file_sha256(dataset.annotations_path), "images": settings_hash({"files": files}),
            "count": len(files)}
