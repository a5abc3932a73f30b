"""Which images a run evaluates and which it calibrates on."""

from __future__ import annotations

import logging

import numpy as np

from ptqsam.config import ExperimentConfig
from ptqsam.data.selection import calibration_dataset_for, dataset_for


def _config(tmp_path, **changes):
    base = dict(recipes=["minmax"], bits=["w8a8", "W4A4"], synthetic_images=3, calib_images=2, out=str(tmp_path))
    return ExperimentConfig.from_dict({**base, **changes})


def _pixels(dataset):
    return [sample.image for sample in dataset.samples()]


def test_generated_calibration_images_are_not_evaluated(tmp_path):
    config = _config(tmp_path)
    calibration, evaluated = _pixels(calibration_dataset_for(config)), _pixels(dataset_for(config))
    assert len(calibration) == config.calib_images and len(evaluated) == config.synthetic_images
    assert not any(np.array_equal(c, e) for c in calibration for e in evaluated)


def test_given_calibration_set_and_fallback(tmp_path, tiny_dataset_dir, caplog):
    given = dict(calib_images_dir=str(tiny_dataset_dir / "images"),
                 calib_annotations=str(tiny_dataset_dir / "annotations.json"))
    assert calibration_dataset_for(_config(tmp_path, **given)).images_dir == tiny_dataset_dir / "images"
    evaluated = dict(images=str(tiny_dataset_dir / "images"), annotations=str(tiny_dataset_dir / "annotations.json"))
    with caplog.at_level(logging.WARNING, logger="ptqsam"):
        fallback = calibration_dataset_for(_config(tmp_path, **evaluated))
    assert fallback.images_dir == tiny_dataset_dir / "images"
    assert "calibrating on images of the evaluated dataset" in caplog.text
