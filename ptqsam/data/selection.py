"""Which images a run evaluates and which it calibrates on (shared by sweeps, ``calibrate``,
``evaluate`` and ``inspect``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ptqsam.config import ExperimentConfig
from ptqsam.data.coco import CocoDataset
from ptqsam.data.samples import CalibrationSample, calibration_samples
from ptqsam.data.synthetic import generate_dataset

log = logging.getLogger("ptqsam")
#: generated calibration data uses ``seed`` + this: far from the evaluated data of any nearby seed
CALIBRATION_SEED_OFFSET = 1_000_000


def dataset_for(config: ExperimentConfig) -> CocoDataset:
    """The configured COCO-format dataset, or the synthetic one generated under ``out/data``."""
    if config.images is not None:
        return CocoDataset(config.images, config.annotations)
    return generated(Path(config.out) / "data", config.synthetic_images, config.seed)


def calibration_dataset_for(config: ExperimentConfig) -> CocoDataset:
    """Where the calibration images come from: the configured calibration set; for generated data,
    a set generated apart under ``out/calib_data`` (so no evaluated image is a calibration image);
    else the evaluated dataset itself, with a warning."""
    if config.calib_images_dir is not None:
        return CocoDataset(config.calib_images_dir, config.calib_annotations)
    if config.images is None:
        return generated(Path(config.out) / "calib_data", config.calib_images, config.seed + CALIBRATION_SEED_OFFSET)
    log.warning("no calibration set given (calib_images_dir): calibrating on images of the evaluated dataset")
    return dataset_for(config)


def calibration_set(config: ExperimentConfig) -> tuple[CocoDataset, list[CalibrationSample]]:
    """The calibration dataset of a run and the images (with their prompts) it calibrates on."""
    dataset = calibration_dataset_for(config)
    return dataset, calibration_samples(dataset, config.calib_images, config.seed, config.prompt, config.num_points)


def generated(root: Path, count: int, seed: int) -> CocoDataset:
    """The synthetic dataset under ``root``, generated there unless it already holds ``count`` images."""
    marker = root / "annotations.json"
    if not marker.is_file() or len(json.loads(marker.read_text())["images"]) != count:
        generate_dataset(root, count, seed=seed)
    return CocoDataset(root / "images", marker)
