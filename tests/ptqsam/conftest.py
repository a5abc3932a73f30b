"""Fixtures shared by the ptqsam tests: a tiny generated dataset and testbed models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ptqsam.data import CocoDataset, generate_dataset
from ptqsam.models import build_model

# the distributed tests' helper module (distributed_workers): spawned processes import it by name
sys.path.insert(0, str(Path(__file__).parent))
import distributed_workers as workers  # noqa: E402


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


@pytest.fixture(scope="session")
def five_images(tmp_path_factory) -> Path:
    """A generated dataset of 5 images with a detections file (one box per annotation)."""
    root = tmp_path_factory.mktemp("five")
    generate_dataset(root, count=5, seed=4)
    data = json.loads((root / "annotations.json").read_text())
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5 + 0.01 * i}
                  for i, a in enumerate(data["annotations"])]
    (root / "detections.json").write_text(json.dumps(detections))
    return root


@pytest.fixture(scope="session")
def one_process_checks(five_images) -> dict:
    """:func:`distributed_workers.every_check_job` in this one process: the reference of the
    distributed tests."""
    return workers.every_check_job(str(five_images))


@pytest.fixture(scope="session")
def spawned_checks(five_images, tmp_path_factory):
    """``get(world)``: every rank's result of :func:`distributed_workers.every_check_job` on
    ``world`` gloo processes, spawned once per world size for every test that compares them."""
    runs: dict[int, list] = {}

    def get(world: int) -> list:
        if world not in runs:
            runs[world] = workers.results(workers.launch(workers.every_check_job, world,
                                                         tmp_path_factory.mktemp(f"world{world}"), str(five_images),
                                                         timeout=600))
        return runs[world]
    return get


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
