"""Block reconstruction under torch.distributed: 3 gloo processes reconstruct the
one-process state bit for bit (AdaRound hardened weights, learned scales, the records), with one
image per step and with three images per step drawn across processes, also with a process that
holds no image, and with SAQ-SAM's response term and AHCPTQ's channel regrouping."""

from __future__ import annotations

import distributed_workers as workers
import torch

IMAGES = {name: images for name, images, *_ in workers.RECONSTRUCTION_CASES}


def test_reconstruction_equals_one_process_bit_for_bit(one_process_checks, spawned_checks):
    world = 3
    single = one_process_checks["reconstruct"]
    ranks = [run["reconstruct"] for run in spawned_checks(world)]
    for case, expected in single.items():
        assert expected["steps"] == {"workers": {0}, "sent": 0}
        assert all(r["weights_rounded"] > 0 and r["loss_first"] is not None for r in expected["records"].values())
        for rank, run in enumerate(ranks):
            got = run[case]
            assert got["state"].keys() == expected["state"].keys()
            different = [k for k in expected["state"] if not torch.equal(got["state"][k], expected["state"][k])]
            assert not different, f"{case} rank {rank}: {different[:5]}"
            assert _same_process(got["records"]) == _same_process(expected["records"]), f"{case} rank {rank}"
        assert ranks[0][case]["steps"]["workers"] <= set(range(min(world, IMAGES[case]))), case
    assert set.union(*(case["steps"]["workers"] for case in ranks[0].values())) == set(range(world))  # all computed
    assert ranks[0]["fisher-batch3"]["steps"]["sent"] > 0  # batches drawn across processes
    assert any(key.endswith(".rounding.up") for key in single["qdrop-batch1"]["state"])  # hardened AdaRound
    regrouped = [v for k, v in single["par-cag-stages"]["state"].items()
                 if k.startswith("image_encoder.blocks.0.") and k.endswith("lin1.input.channel_group")]
    assert regrouped and all(len(v.unique()) <= 2 for v in regrouped)  # CAG's last milestone: 2 groups
    for records in (single["fisher-batch3"]["records"], ranks[0]["fisher-batch3"]["records"]):
        assert all(record["spilled_to_disk"] > 0 for record in records.values())  # read back from disk


def _same_process(records: dict) -> dict:
    """The records that do not depend on the number of processes: MSE before / after, first and
    last loss, counts (not the items spilled to disk: each process has its own memory budget)."""
    return {unit: {k: v for k, v in record.items() if k != "spilled_to_disk"} for unit, record in records.items()}

