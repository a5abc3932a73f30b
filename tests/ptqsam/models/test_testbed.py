"""The testbed SAM: its untrained single-mask output is warned about when used."""

from __future__ import annotations

import logging

from torch import nn

from ptqsam.models import testbed


def test_single_mask_output_warns_on_the_testbed_only_once(random_testbed, caplog):
    testbed._warn_single_mask.cache_clear()
    model = random_testbed()
    with caplog.at_level(logging.WARNING, logger="ptqsam"):
        testbed.warn_untrained_single_mask(model, multimask=True)  # best of 3: trained outputs
        testbed.warn_untrained_single_mask(nn.Linear(1, 1), multimask=False)  # not the testbed
        assert "single-mask" not in caplog.text
        testbed.warn_untrained_single_mask(model, multimask=False)
        testbed.warn_untrained_single_mask(model, multimask=False)
    warned = [r.getMessage() for r in caplog.records if "single-mask" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("single-mask output on the testbed")
