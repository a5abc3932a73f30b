"""torch.distributed: 3 gloo processes (spawned) give the one-process numbers bit for bit."""

from __future__ import annotations

import distributed_workers as workers
import pytest

from ptqsam import distributed
from ptqsam.errors import DistributedError


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


def test_evaluation_equals_one_process_bit_for_bit(one_process_checks, spawned_checks):
    single = one_process_checks["evaluate"]
    ranks = [run["evaluate"] for run in spawned_checks(3)]
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



def test_a_group_that_cannot_start_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(DistributedError, match="cannot join the torchrun process group"):
        with distributed.process_group(timeout_s=5):
            pass
    assert not distributed.active()
