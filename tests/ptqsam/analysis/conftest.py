"""Fixtures of the activation-analysis tests: a tiny synthetic dataset, its calibration samples and
fresh testbed models."""

from __future__ import annotations

from typing import Callable

import pytest
from segment_anything.modeling import Sam

from ptqsam.calibration import CalibrationSample, calibration_samples
from ptqsam.data import CocoDataset, generate_dataset
from ptqsam.models import build_model



@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[CalibrationSample]:
    """Two calibration images (64², upscaled to the testbed's 256²) with all their box prompts."""
    written = generate_dataset(tmp_path_factory.mktemp("analysis_data"), count=4, seed=0, image_size=64)
    return calibration_samples(CocoDataset(written.images_dir, written.annotations_path), count=2, seed=0)


@pytest.fixture
def make_model() -> Callable[[], Sam]:
    """Builds a fresh testbed SAM (tests modify models: calibration, folds)."""
    return lambda: build_model("testbed")
