"""Sensitivity: switching groups of one calibration, the damage metrics, pass counts, results on disk."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from ptqsam.analysis.groups import model_groups
from ptqsam.analysis.sensitivity import (Damage, GroupMeter, SensitivityResult, damage, load_sensitivity,
                                         reference_predictions, sensitivity_study)
from ptqsam.calibration import calibrate
from ptqsam.errors import AnalysisError
from ptqsam.inference import Prediction
from ptqsam.instrument import Recipe

FINAL = "mask_decoder.transformer.final_attn_token_to_image"
#: minmax on the decoder's final attention only: six products, cheap decoder-only measurements.
FINAL_ONLY = Recipe.from_dict({"name": "final-attention", "rules": [
    {"include": [f"{FINAL}.*.weight"], "spec": {"bits": "W", "symmetric": True,
                                                "granularity": {"kind": "channel", "axis": 0}}},
    {"include": [f"{FINAL}.*.input", f"{FINAL}.query", f"{FINAL}.key", f"{FINAL}.value", f"{FINAL}.probs"],
     "spec": {"bits": "A", "symmetric": False}}]})


def _prediction(logits: torch.Tensor, iou: torch.Tensor) -> Prediction:
    return Prediction(torch.empty(0), iou, logits)


def test_damage_of_known_differences():
    logits = torch.tensor([[[[1.0, -1.0], [1.0, -1.0]], [[-1.0, -1.0], [-1.0, -1.0]]]])  # 1 prompt, 2 masks
    iou = torch.tensor([[0.9, 0.1]])
    reference = [_prediction(logits, iou)]
    assert damage(reference, [_prediction(logits.clone(), iou.clone())]) == Damage(0.0, 1.0, 0.0)
    shifted = damage(reference, [_prediction(logits + 0.5, iou + 0.2)])
    assert shifted.mse == pytest.approx(0.25) and shifted.iou_error == pytest.approx(0.2)
    assert shifted.iou == pytest.approx(1.0)  # the same pixels stay above 0
    flipped = damage(reference, [_prediction(-logits, torch.tensor([[0.1, 0.9]]))])
    assert flipped.iou == pytest.approx(0.5)  # now the second mask (all positive) is picked: IoU with the first 2/4
    both_empty = damage([_prediction(-torch.ones(1, 1, 2, 2), torch.ones(1, 1))],
                        [_prediction(-2 * torch.ones(1, 1, 2, 2), torch.ones(1, 1))])
    assert both_empty.iou == 1.0 and both_empty.score("iou_loss") == 0.0 and both_empty.score("mse") == 1.0
    with pytest.raises(AnalysisError):
        damage(reference, [])
    with pytest.raises(AnalysisError, match="metric"):
        both_empty.score("psnr")


@pytest.fixture(scope="module")
def calibrated(samples):
    from ptqsam.models import build_model

    model = build_model("testbed")
    reference = reference_predictions(model, samples)
    quantized = copy.deepcopy(model)
    calibrate(quantized, "minmax", 4, 4, samples, exclude=("image_encoder.*", "mask_decoder.iou_prediction_head.*"),
              progress=False)
    return quantized, reference


@pytest.mark.parametrize("mode", ["only", "all_but"])
def test_a_float_only_group_has_zero_sensitivity(calibrated, samples, mode):
    model, reference = calibrated
    float_group = model_groups(model, "unit", ["mask_decoder.iou_prediction_head.layers.0.weight",
                                               "mask_decoder.iou_prediction_head.layers.0.input"])[0]
    quantized_group = model_groups(model, "unit", [f"{FINAL}.probs", f"{FINAL}.value"])[0]
    meter = GroupMeter(model, samples, reference, mode)
    kept = meter.measure(float_group.sites)
    moved = meter.measure(quantized_group.sites)
    if mode == "only":
        assert kept == Damage(0.0, 1.0, 0.0)  # real forward passes, bit-identical to float
        assert moved.mse > 0 and moved.iou_error > 0
    else:
        baseline = meter.measure(None)
        assert kept == baseline  # keeping float what is float already recovers nothing
        assert baseline.mse > 0 and moved.mse < baseline.mse
    assert meter.measure(None).mse > 0  # None: every quantizer on, in either mode
    assert all(q.mode.value == "off" for q in model.mask_decoder.modules() if hasattr(q, "calibrated"))


def test_study_counts_passes_and_round_trips(samples, tmp_path):
    from ptqsam.models import build_model

    result = sensitivity_study(build_model("testbed"), FINAL_ONLY, [(4, 4), (8, 8)], samples,
                               roles=("weight", "activation"))
    assert [g.name for g in result.groups] == [f"{FINAL}.{n}" for n in
                                               ("q_proj", "k_proj", "v_proj", "out_proj", "query@key", "probs@value")]
    measurements = 2 * (2 + 2 * 4)  # per bits: 2 matmuls (activations), 4 linears (weights and activations)
    assert len(result.rows) == measurements
    images = len(samples)
    assert result.passes == {"encoder": 2 * images, "decoder": measurements * images}  # one embedding per image
    w4, w8 = result.scores("mse", "weight", "W4A4"), result.scores("mse", "weight", "W8A8")
    a4, a8 = result.scores("mse", "activation", "W4A4"), result.scores("mse", "activation", "W8A8")
    assert sum(w8.values()) < sum(w4.values()) and sum(a8.values()) < sum(a4.values())
    assert set(a4) == {g.name for g in result.groups} and len(w4) == 4
    result.write(tmp_path)
    loaded = load_sensitivity(tmp_path)
    assert loaded.to_dict() == result.to_dict()
    assert (tmp_path / "sensitivity.csv").read_text().count("\n") == measurements + 1
    data = json.loads((tmp_path / "sensitivity.json").read_text())
    assert data["fingerprint"]["settings"]["bits"] == ["W4A4", "W8A8"]
    data["settings"]["granularity"] = "block"  # settings changed without the fingerprint: refused
    with pytest.raises(AnalysisError, match="altered"):
        SensitivityResult.from_dict(data)


def test_leave_float_mode_scores_the_recovery(samples):
    from ptqsam.models import build_model

    result = sensitivity_study(build_model("testbed"), FINAL_ONLY, [(4, 4)], samples, mode="all_but")
    baseline = result.baselines["W4A4"].mse
    for row in result.rows:
        assert result.score(row) == pytest.approx(baseline - row.damage.mse)
    assert max(result.scores().values()) > 0


def test_bad_settings_raise(samples):
    from ptqsam.models import build_model

    model = build_model("testbed")
    for kwargs, match in (({"granularity": "layer"}, "granularity"), ({"mode": "some"}, "mode"),
                          ({"roles": ("bias",)}, "role")):
        with pytest.raises(AnalysisError, match=match):
            sensitivity_study(model, FINAL_ONLY, [(4, 4)], samples, **kwargs)
    with pytest.raises(AnalysisError, match="at least one"):
        sensitivity_study(model, FINAL_ONLY, [], samples)
    with pytest.raises(AnalysisError, match="not a sensitivity result"):
        SensitivityResult.from_dict({"format": "other"})
