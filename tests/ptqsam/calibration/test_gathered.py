"""Calibration under torch.distributed: 2 and 3 gloo processes calibrate the one-process state;
the passes whose shards are not combined exactly are refused before any work."""

from __future__ import annotations

import re

import pytest
import torch

from ptqsam import distributed
from ptqsam.calibration import calibrate, calibration_samples
from ptqsam.errors import DistributedError
from ptqsam.passes import SampleLoop
from ptqsam.reconstruction import ReconstructionConfig
from ptqsam.reconstruction.reconstruct import reconstruct

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


@pytest.mark.parametrize("recipe, refused", [("ahcptq", "hluq quantizers"), ("saq-sam", "search 'pcc'"),
                                             ("gptq", "search 'gptq'"), ("repq-vit", "repq_fold")])
def test_passes_not_combined_across_processes_are_refused_before_any_work(recipe, refused, tiny_dataset,
                                                                          random_testbed, monkeypatch):
    samples = calibration_samples(tiny_dataset, 2, seed=0)
    model = random_testbed()
    monkeypatch.setattr(distributed, "active", lambda: True)  # as under torchrun
    monkeypatch.setattr(SampleLoop, "__init__", _no_pass)
    with pytest.raises(DistributedError, match=f"{re.escape(refused)}.*calibrate it in one process"):
        calibrate(model, recipe, 4, 4, samples, progress=False)


def _no_pass(*args, **kwargs):
    raise AssertionError("a sample loop was built before the refusal")


def test_the_reference_drop_bug_is_refused_under_torchrun(tiny_dataset, random_testbed, monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    config = ReconstructionConfig(reference_drop_bug=True)
    with pytest.raises(DistributedError, match="reference_drop_bug cannot be reproduced under torchrun"):
        reconstruct(random_testbed(), calibration_samples(tiny_dataset, 2, seed=0), config, progress=False)
