"""Fixtures shared by the ptqsam tests: a tiny generated dataset and testbed models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ptqsam.data import CocoDataset, generate_dataset
from ptqsam.models import build_model


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests run while other work shares the two cores; one thread avoids OpenMP oversubscription."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_dataset")
    generate_dataset(root, count=4, seed=3)
    return root


@pytest.fixture
def tiny_dataset(tiny_dataset_dir: Path) -> CocoDataset:
    return CocoDataset(tiny_dataset_dir / "images", tiny_dataset_dir / "annotations.json")


@pytest.fixture
def random_testbed(monkeypatch):
    """A builder of the testbed with random weights (the packaged weights are ignored)."""
    from ptqsam.models import zoo

    monkeypatch.setitem(zoo.PACKAGED_WEIGHTS, "testbed", Path("/nonexistent/testbed.pt"))
    return lambda seed=0: build_model("testbed", seed=seed)


@pytest.fixture(scope="module")
def two_samples(tmp_path_factory):
    """Two generated calibration images with their prompts (module-wide, for slow calibrations)."""
    from ptqsam.calibration import calibration_samples

    root = tmp_path_factory.mktemp("two_samples")
    generate_dataset(root, count=2, seed=5)
    return calibration_samples(CocoDataset(root / "images", root / "annotations.json"), 2, seed=0)


@pytest.fixture(scope="module")
def random_testbed_module():
    """A builder of the testbed with random weights, for module-scoped fixtures."""
    from ptqsam.models import zoo

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(zoo.PACKAGED_WEIGHTS, "testbed", Path("/nonexistent/testbed.pt"))
        yield lambda seed=0: build_model("testbed", seed=seed)
