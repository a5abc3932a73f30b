"""Calibration under torch.distributed: 3 gloo processes calibrate the one-process state bit
for bit (histogram observers and the passes every process runs over the whole set included); the
reference drop bug is refused."""

from __future__ import annotations

import pytest
import torch

from ptqsam import distributed
from ptqsam.calibration import calibration_samples
from ptqsam.errors import DistributedError
from ptqsam.reconstruction import ReconstructionConfig
from ptqsam.reconstruction.reconstruct import reconstruct

#: sites of the mixed-observers recipe whose histogram observers merge across processes
HISTOGRAM_SITES = "probs."


def test_calibrated_state_equals_one_process(one_process_checks, spawned_checks):
    ranks = [run["calibrate"] for run in spawned_checks(3)]
    for name, single in one_process_checks["calibrate"].items():
        for run in ranks:
            got = run[name]
            assert got["state"].keys() == single["state"].keys()
            different = [k for k in single["state"] if not torch.equal(got["state"][k], single["state"][k])]
            assert not different, f"{name}: {different[:5]}"
            assert (got["bimodal"], got["hessian"], got["unreached"], got["image_ids"]) == \
                (single["bimodal"], single["hessian"], single["unreached"], single["image_ids"])
    assert any(HISTOGRAM_SITES in k for k in one_process_checks["calibrate"]["mixed-observers"]["state"])


def test_the_reference_drop_bug_is_refused_under_torchrun(tiny_dataset, random_testbed, monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    config = ReconstructionConfig(reference_drop_bug=True)
    with pytest.raises(DistributedError, match="reference_drop_bug cannot be reproduced under torchrun"):
        reconstruct(random_testbed(), calibration_samples(tiny_dataset, 2, seed=0), config, progress=False)
