"""AHCPTQ on the random testbed: HLUQ on every MLP's second Linear input with the grid of lowest
output error, its scales learned; CAG quantizers end reconstruction in exactly 4 groups."""

from __future__ import annotations

import pytest
import torch

from ptqsam.calibration import calibrate
from ptqsam.instrument import attached_quantizers
from quantizers.functional.hybrid import hybrid_scales
from quantizers.modules.grouped import ChannelGroupQuantizer
from quantizers.modules.hybrid import HybridLogUniformQuantizer


@pytest.fixture(scope="module")
def ahcptq(two_samples, random_testbed_module):
    model = random_testbed_module()
    report = calibrate(model, "ahcptq", 4, 4, two_samples, progress=False,
                       reconstruction={"iterations": 20, "activation_lr": 1e-3})
    return model, report


def test_hluq_sits_on_every_mlp_second_linear_with_its_best_grid(ahcptq):
    model, report = ahcptq
    quantizers = attached_quantizers(model)
    hybrid = sorted(n for n, q in quantizers.items() if isinstance(q, HybridLogUniformQuantizer))
    assert hybrid == sorted([f"image_encoder.blocks.{i}.mlp.lin2.input" for i in range(6)]
                            + [f"mask_decoder.transformer.layers.{i}.mlp.lin2.input" for i in range(2)])
    grids = report.passes["hluq_grids"]
    for name in hybrid:
        assert grids[name]["linear"] == name.removesuffix(".input")
        errors = grids[name]["errors"]
        best = min(errors, key=errors.get)
        quantizer = quantizers[name]
        assert best == f"r={float(quantizer.range_rate):g},g={float(quantizer.grid_rate):g}"
        shift, value_range = quantizer.observed_range()
        _, s_uni = hybrid_scales(value_range, float(quantizer.range_rate), float(quantizer.grid_rate), 4)
        assert float(quantizer.scale_uni) != pytest.approx(s_uni, rel=1e-6)  # learned in reconstruction


def test_cag_ends_with_four_groups_holding_every_channel(ahcptq):
    model, report = ahcptq
    grouped = {n: q for n, q in attached_quantizers(model).items() if isinstance(q, ChannelGroupQuantizer)}
    assert len(grouped) == 6 * 2 + 7 * 3 + 2  # encoder qkv and lin1; decoder q/k/v in 7 attentions; decoder lin1
    for name, quantizer in grouped.items():
        assert quantizer.num_groups == 4, name
        assert set(quantizer.channel_group.tolist()) == {0, 1, 2, 3}
        assert not isinstance(quantizer.scale, torch.nn.Parameter)  # frozen after reconstruction
