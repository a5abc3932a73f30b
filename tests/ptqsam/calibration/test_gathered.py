"""Calibration under torch.distributed: 2 and 3 gloo processes calibrate the one-process state."""

from __future__ import annotations

import pytest
import torch

#: sites whose histogram observers merge (rebinned to the widest range): equal to one process up to about a bin
HISTOGRAM_SITES = "probs."


@pytest.mark.parametrize("world", [2, 3])
def test_calibrated_state_equals_one_process(one_process_checks, spawned_checks, world):
    ranks = [run["calibrate"] for run in spawned_checks(world)]
    for name, single in one_process_checks["calibrate"].items():
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
    assert any(HISTOGRAM_SITES in k for k in one_process_checks["calibrate"]["mixed-observers"]["state"])
