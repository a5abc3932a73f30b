"""SAQ-SAM's reconstruction pieces: encoder stages (windowed blocks up to each global block), the
prompt-aware response term (zero when nothing is quantized), and quantizer milestones."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from ptqsam.calibration import calibrate
from ptqsam.errors import RecipeError
from ptqsam.instrument import Recipe, attached_quantizers, disabled, load_recipe, quantizing
from ptqsam.passes import SampleLoop
from ptqsam.reconstruction import ReconstructionConfig
from ptqsam.reconstruction.reconstruct import _milestones, _UnitData, reconstruct
from ptqsam.reconstruction.sharded import SampleShard
from ptqsam.reconstruction.units import reconstruction_units, unit_module
from quantizers.modules.grouped import ChannelGroupQuantizer

STAGE = ReconstructionConfig(unit="stage", drop_prob=0.0, response_weight=1.0, iterations=4)


@pytest.fixture(scope="module")
def calibrated(two_samples, random_testbed_module):
    model = random_testbed_module()
    calibrate(model, "minmax", 4, 4, two_samples, progress=False)
    return model, two_samples


def test_stages_run_the_windowed_blocks_up_to_each_global_block(calibrated):
    model, _ = calibrated
    units = reconstruction_units(model, STAGE)  # the testbed's global blocks are 2 and 5
    assert [u.name for u in units] == [
        "image_encoder.patch_embed", "image_encoder.blocks.0-2", "image_encoder.blocks.3-5", "image_encoder.neck",
        "mask_decoder.transformer.layers.0", "mask_decoder.transformer.layers.1",
        "mask_decoder.transformer.final_attn_token_to_image"]
    stage = units[1]
    assert stage.modules == tuple(f"image_encoder.blocks.{i}" for i in range(3)) and stage.kind == "vit_block"
    assert {q.split(".")[2] for q in stage.quantizers} == {"0", "1", "2"}
    assert len(unit_module(model, stage)) == 3
    with pytest.raises(RecipeError, match="batch_size 1"):
        ReconstructionConfig(response_weight=1.0, batch_size=2)


@pytest.mark.parametrize("index", [1, 3, 4], ids=["encoder_stage", "neck", "decoder_layer"])
def test_the_response_term_is_zero_without_quantization_and_not_with_it(calibrated, index):
    model, samples = calibrated
    unit = reconstruction_units(model, STAGE)[index]
    data = _UnitData(SampleLoop(model, samples, encoder_float=False, progress=False), SampleShard(len(samples)),
                     model, unit, STAGE)
    module = unit_module(model, unit)
    try:
        assert data.response is not None and len(data.target_responses) == len(samples)
        for i in range(len(samples)):
            batch = data.batch([i])
            args, kwargs = batch.float_inputs
            with torch.no_grad(), disabled(model):
                assert float(data.response_loss(module(*args, **kwargs), args, kwargs, batch)) == 0.0
            args, kwargs = batch.inputs
            with torch.no_grad(), quantizing(model, list(unit.quantizers)):
                assert float(data.response_loss(module(*args, **kwargs), args, kwargs, batch)) > 0.0
    finally:
        data.close()


def test_units_without_a_response_and_a_short_stage_reconstruction(calibrated, caplog):
    model, samples = calibrated
    units = reconstruction_units(model, STAGE)
    for index in (0, 6):  # patch embedding, final attention: the output error alone
        data = _UnitData(SampleLoop(model, samples, encoder_float=False, progress=False), SampleShard(len(samples)),
                         model, units[index], STAGE)
        assert data.response is None and data.target_responses is None
        data.close()
    before = {n: q.scale.clone() for n, q in attached_quantizers(model).items() if n.startswith("image_encoder.blocks.3")}
    records = reconstruct(model, samples, STAGE, progress=False, only=["image_encoder.blocks.3-5"])
    assert records["image_encoder.blocks.3-5"]["iterations"] == 4 and records["image_encoder.blocks.3-5"]["response"]
    assert "0 of 1 reconstruction units" not in caplog.text
    caplog.clear()
    reconstruct(model, samples, dataclasses.replace(STAGE, iterations=1), progress=False,
                only=["image_encoder.patch_embed"])
    assert "1 of 1 reconstruction units have no response term (image_encoder.patch_embed)" in caplog.text
    after = attached_quantizers(model)
    assert any(not torch.equal(after[n].scale, s) for n, s in before.items() if not n.endswith("weight"))


class _Scheduled:
    def __init__(self, fractions):
        self.fractions = fractions

    def milestones(self):
        return self.fractions


def test_milestones_fall_at_their_fraction_of_the_iterations_in_order():
    a, b = _Scheduled((0.2, 0.4, 0.6, 0.8)), _Scheduled((0.0, 0.4))
    events = _milestones({"a": a, "b": b}, 10)
    assert [(step, q is a, i) for step, q, i in events] == [
        (0, False, 0), (2, True, 0), (4, True, 1), (4, False, 1), (6, True, 2), (8, True, 3)]
    assert [step for step, _, _ in _milestones({"a": a}, 1)] == [0, 0, 0, 0]  # one step: all of them, in order


def test_channel_groups_merge_at_20_40_60_80_percent_and_keep_learning(two_samples, random_testbed_module,
                                                                        monkeypatch):
    data = load_recipe("ahcptq").to_dict()
    del data["reconstruction"]
    model = random_testbed_module()
    calibrate(model, Recipe.from_dict(data), 4, 4, two_samples, progress=False)
    unit = "mask_decoder.transformer.layers.0"
    grouped = {n: q for n, q in attached_quantizers(model).items()
               if n.startswith(unit + ".") and isinstance(q, ChannelGroupQuantizer)}
    assert len(grouped) == 3 * 3 + 1  # q/k/v projection inputs of its 3 attentions, the MLP's first Linear
    steps: Counter = Counter()  # Adam steps per optimiser = iterations done
    step = torch.optim.Adam.step

    def counted(self, *args, **kwargs):
        steps.update([id(self)])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counted)
    seen, merged = [], {}
    regroup = ChannelGroupQuantizer.at_milestone

    def spy(self, index):
        regroup(self, index)
        seen.append((max(steps.values(), default=0), index, self.num_groups))
        merged[id(self)] = self.scale.detach().clone()

    monkeypatch.setattr(ChannelGroupQuantizer, "at_milestone", spy)
    config = ReconstructionConfig(iterations=10, activation_lr=1e-2, drop_prob=0.0)
    reconstruct(model, two_samples, config, progress=False, only=[unit])
    channels = {q.channel_group.numel() for q in grouped.values()}
    assert sorted(set(seen)) == [(2, 0, 32), (4, 1, 16), (6, 2, 8), (8, 3, 4)] and channels == {128}
    assert len(seen) == 4 * len(grouped)
    for quantizer in grouped.values():
        assert set(quantizer.channel_group.tolist()) == {0, 1, 2, 3}
        assert not torch.equal(quantizer.scale, merged[id(quantizer)])  # steps 8, 9 learned the merged scales


def test_a_tiny_vit_neck_has_a_response_and_its_blocks_have_none():
    from small_models import small_tiny_vit_sam

    from ptqsam.instrument import attach
    from ptqsam.reconstruction.response import continuation

    tiny = small_tiny_vit_sam()
    attach(tiny, "minmax", 4, 4)
    for quantizer in attached_quantizers(tiny).values():
        quantizer.calibrated.fill_(True)  # units hold calibrated quantizers; the values do not matter here
    has = {u.name: continuation(tiny, u)[0] is not None for u in reconstruction_units(tiny, STAGE)}
    assert has["image_encoder.neck"] and has["mask_decoder.transformer.layers.0"]
    assert not any(has[name] for name in has if name.startswith("image_encoder.layers."))
