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


def test_the_data_fingerprint_sees_an_image_changed_under_its_name_and_size(tmp_path, tiny_dataset_dir):
    import os
    import shutil

    from ptqsam.data import CocoDataset
    from ptqsam.data.selection import data_fingerprint

    shutil.copytree(tiny_dataset_dir, tmp_path / "data")
    dataset = CocoDataset(tmp_path / "data" / "images", tmp_path / "data" / "annotations.json")
    before = data_fingerprint(dataset, dataset.image_ids)
    image = dataset.image_info(dataset.image_ids[0]).path
    content, stat = image.read_bytes(), image.stat()
    image.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))  # one bit of another picture, same size
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = data_fingerprint(dataset, dataset.image_ids)
    assert image.stat().st_size == stat.st_size
    assert after["images"] != before["images"] and after["annotations"] == before["annotations"]
