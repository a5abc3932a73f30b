"""torch.distributed: N gloo processes (spawned) give the one-process numbers bit for bit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ptqsam import distributed
from ptqsam.data import generate_dataset

sys.path.insert(0, str(Path(__file__).parent))
import distributed_workers as workers  # noqa: E402  (spawned processes import it by this name)


@pytest.fixture(scope="module")
def five_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("five")
    generate_dataset(root, count=5, seed=4)
    data = json.loads((root / "annotations.json").read_text())
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5 + 0.01 * i}
                  for i, a in enumerate(data["annotations"])]
    (root / "detections.json").write_text(json.dumps(detections))
    return root


@pytest.mark.parametrize("count, size", [(5, 3), (2, 3), (7, 2), (0, 2), (6, 1)])
def test_shards_cover_every_item_once_without_padding(count, size):
    slices = [distributed.shard_bounds(count, size, r) for r in range(size)]
    items = [i for start, stop in slices for i in range(start, stop)]
    assert items == list(range(count))
    lengths = [stop - start for start, stop in slices]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_one_process_helpers_are_identities():
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.shard([3, 1, 2]) == [3, 1, 2]
    assert distributed.gather_parts([1, 2]) == distributed.all_gather_parts([1, 2]) == [1, 2]
    assert distributed.broadcast({"a": 1}) == {"a": 1}


@pytest.mark.parametrize("world", [2, 3])
def test_evaluation_equals_one_process_bit_for_bit(five_images, tmp_path, world):
    single = workers.evaluate_job(str(five_images), None, str(five_images / "detections.json"))
    ranks = workers.results(workers.launch(workers.evaluate_job, world, tmp_path, str(five_images), None,
                                           str(five_images / "detections.json")))
    assert ranks[0] == single  # metrics (mIoU, AP via COCOeval), per-instance IoUs, masks, counts
    for other in ranks[1:]:
        assert other["box"]["metrics"] == single["box"]["metrics"]
        assert other["detections"]["metrics"] == single["detections"]["metrics"]
    ids = [(image, ann) for image, ann, _ in ranks[0]["box"]["instance_ious"]]
    assert len(ids) == len(set(ids)) == single["box"]["metrics"]["count"]
    assert ranks[0]["box"]["num_images"] == 5


def test_a_killed_rank_ends_every_rank_with_an_error_and_no_file(five_images, tmp_path):
    out = tmp_path / "metrics.json"
    runs = workers.launch(workers.killed_rank_job, 3, tmp_path / "run", str(five_images), str(out), 1, timeout=120)
    assert runs[1]["exitcode"] != 0
    for rank in (0, 2):
        assert runs[rank]["exitcode"] == 1
        assert "DistributedError" in runs[rank]["error"] and "another process failed" in runs[rank]["error"]
    assert not out.exists() and not list(tmp_path.glob(".metrics.json.*"))


CALIBRATION_RECIPES = ["minmax", "ptq4sam", "mixed-observers", "hessian-decoder"]
#: sites whose histogram observers merge (rebinned to the widest range): equal to one process up to about a bin
HISTOGRAM_SITES = "probs."


@pytest.fixture(scope="module")
def one_process_calibration(five_images):
    return workers.calibrate_job(str(five_images), CALIBRATION_RECIPES, False)


@pytest.mark.parametrize("world", [2, 3])
def test_calibrated_state_equals_one_process(five_images, one_process_calibration, tmp_path, world):
    ranks = workers.results(workers.launch(workers.calibrate_job, world, tmp_path, str(five_images),
                                           CALIBRATION_RECIPES, False))
    for name, single in one_process_calibration.items():
        for run in ranks:
            got = run[name]
            assert got["state"].keys() == single["state"].keys()
            exact = {k for k in single["state"] if not (name == "mixed-observers" and HISTOGRAM_SITES in k)}
            different = [k for k in exact if not torch.equal(got["state"][k], single["state"][k])]
            assert not different, f"{name}: {different[:5]}"
            for key in set(single["state"]) - exact:  # percentile on merged histograms (256 bins)
                if key.endswith(".scale"):
                    torch.testing.assert_close(got["state"][key], single["state"][key], rtol=2 / 256, atol=0)
            assert (got["bimodal"], got["hessian"], got["unreached"], got["image_ids"]) == \
                (single["bimodal"], single["hessian"], single["unreached"], single["image_ids"])
    assert any(HISTOGRAM_SITES in k for k in one_process_calibration["mixed-observers"]["state"])
