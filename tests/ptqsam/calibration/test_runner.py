"""Calibration runner on the random testbed and a tiny generated dataset."""

from __future__ import annotations

import torch

from ptqsam.calibration import calibrate, calibration_samples, choose_image_ids, load_calibrated, save_calibrated
from ptqsam.calibration.hessian import capture, search_units, task_loss
from ptqsam.calibration import runner
from ptqsam.passes import SampleLoop
from ptqsam.evaluation.evaluator import evaluate
from ptqsam.instrument.instrument import attach, attached_quantizers, instrument
from ptqsam.instrument.modes import quantizing
from ptqsam.inference import SamRunner
from quantizers.modules.uniform import UniformQuantizer


def _outputs(model, sample):
    runner = SamRunner(model)
    with torch.inference_mode():
        embedding = runner.embed(sample.image)
        p = sample.prompts
        return runner.decode(embedding, p.boxes, p.points, p.point_labels)


def test_images_are_chosen_by_seed(tiny_dataset):
    a = choose_image_ids(tiny_dataset, 2, seed=0)
    assert a == choose_image_ids(tiny_dataset, 2, seed=0)
    assert len(a) == 2 and set(a) <= set(tiny_dataset.image_ids)
    assert choose_image_ids(tiny_dataset, 10, seed=0) == sorted(tiny_dataset.image_ids)


def test_minmax_calibrates_every_reached_site_and_w8_beats_w4(tiny_dataset, random_testbed):
    samples = calibration_samples(tiny_dataset, 2, seed=0)
    reference = evaluate(random_testbed(), tiny_dataset, progress=False)
    agreement = {}
    for bits in (8, 4):
        model = random_testbed()
        report = calibrate(model, "minmax", bits, bits, samples, progress=False)
        calibrated = [n for n, q in report.quantizers.items() if q.is_calibrated]
        assert set(calibrated) == set(report.quantizers) and report.unreached == []  # mask path: mask prompts
        assert any(n.startswith("prompt_encoder.mask_downscaling") for n in calibrated)
        with quantizing(model):
            agreement[bits] = evaluate(model, tiny_dataset, reference=reference, progress=False).metrics["agreement"]
    assert agreement[8] > 0.9
    assert agreement[4] < agreement[8]


def test_float_encoder_reuses_embeddings(tiny_dataset, random_testbed, monkeypatch):
    model = random_testbed()
    samples = calibration_samples(tiny_dataset, 2, seed=0)
    calls = []
    original = type(model.image_encoder).forward
    monkeypatch.setattr(type(model.image_encoder), "forward", lambda self, x: calls.append(1) or original(self, x))
    report = calibrate(model, "ptq4sam", 8, 8, samples, exclude=("image_encoder.*",), progress=False)
    assert not any(name.startswith("image_encoder.") for name in report.quantizers)
    assert len(calls) == len(samples)  # bimodal pass and statistics pass share the float embeddings


def test_the_encoder_runs_once_per_image_and_each_part_calibrates_as_if_alone(tiny_dataset, random_testbed,
                                                                              monkeypatch):
    samples = calibration_samples(tiny_dataset, 2, seed=0)
    model = random_testbed()
    calls = []
    original = type(model.image_encoder).forward
    monkeypatch.setattr(type(model.image_encoder), "forward", lambda self, x: calls.append(1) or original(self, x))
    report = calibrate(model, "ptq4sam", 6, 6, samples, progress=False)
    assert len(calls) == len(samples)  # observed on its one pass; the fold and decoder passes reuse its output
    assert "encoder_statistics" in report.seconds
    encoder_only = calibrate(random_testbed(), "ptq4sam", 6, 6, samples, progress=False,
                             exclude=("mask_decoder.*", "prompt_encoder.*"))
    decoder_only = calibrate(random_testbed(), "ptq4sam", 6, 6, samples, progress=False, exclude=("image_encoder.*",))
    for alone in (encoder_only, decoder_only):
        assert alone.quantizers
        for name, quantizer in alone.quantizers.items():
            together = report.quantizers[name].state_dict()
            assert all(torch.equal(together[key], value) for key, value in quantizer.state_dict().items()), name


def test_a_fold_that_changes_the_encoder_makes_it_run_again_after_the_fold(tiny_dataset, random_testbed,
                                                                            monkeypatch):
    samples = calibration_samples(tiny_dataset, 1, seed=0)
    expected = calibrate(random_testbed(), "ptq4sam", 6, 6, samples, progress=False)
    model = random_testbed()
    calls = []
    original = type(model.image_encoder).forward
    monkeypatch.setattr(type(model.image_encoder), "forward", lambda self, x: calls.append(1) or original(self, x))
    monkeypatch.setattr(runner, "_folds_encoder", lambda model, recipe: True)
    report = calibrate(model, "ptq4sam", 6, 6, samples, progress=False)
    assert len(calls) == 2  # for the fold, then (embeddings forgotten) for the encoder's statistics
    for name, quantizer in expected.quantizers.items():
        state = report.quantizers[name].state_dict()
        assert all(torch.equal(state[key], value) for key, value in quantizer.state_dict().items()), name


def test_bimodal_fold_keeps_float_outputs_and_state_round_trips(tiny_dataset, random_testbed, tmp_path):
    samples = calibration_samples(tiny_dataset, 2, seed=0)
    model = random_testbed()
    before = _outputs(model, samples[0])
    report = calibrate(model, "ptq4sam", 6, 6, samples, progress=False)
    assert len(report.bimodal) == 3  # two token->image layers and the final one
    from ptqsam.instrument.modes import disabled

    with disabled(model):
        after = _outputs(model, samples[0])
    torch.testing.assert_close(after.low_res_logits, before.low_res_logits, rtol=1e-4, atol=1e-4)
    save_calibrated(model, tmp_path / "state.pt", report, "ptq4sam", "testbed", 6, 6)
    fresh = random_testbed()
    load_calibrated(fresh, tmp_path / "state.pt", "ptq4sam", "testbed")
    with quantizing(model), quantizing(fresh):
        assert torch.equal(_outputs(model, samples[0]).low_res_logits, _outputs(fresh, samples[0]).low_res_logits)
    # a fold naming a module the model lacks is refused by name, before any fold is applied
    import pytest

    from ptqsam.errors import CheckpointError

    data = torch.load(tmp_path / "state.pt", weights_only=True)
    data["extra"]["bimodal_fold"]["nope.attention"] = {"signs": [1.0]}
    torch.save(data, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited\.pt: its folds name modules the model lacks: \['nope"):
        load_calibrated(random_testbed(), tmp_path / "edited.pt")


def test_hessian_task_loss_gradients_are_not_zero(tiny_dataset, random_testbed):
    model = random_testbed()
    attach(model, "ptq4vit", 8, 8)
    units = search_units(model)
    kinds = {u.kind for u in units}
    assert kinds == {"linear", "matmul", "conv2d", "conv_transpose2d"}
    samples = calibration_samples(tiny_dataset, 1, seed=0)
    passes = SampleLoop(model, samples, encoder_float=False, progress=False)
    data = capture(model, units, lambda loss: passes.run_with_grad(loss, True, "capture"))
    decoder_lin = next(u.name for u in units if u.name.endswith("cross_attn_token_to_image.k_proj"))
    encoder_qk = next(u.name for u in units if u.name.startswith("image_encoder.blocks.0.attn.query"))
    for name in (decoder_lin, encoder_qk):
        grads = data[name]["grad"]
        assert grads and all(bool(g.abs().sum() > 0) for g in grads)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    task_loss(logits).backward()
    assert logits.grad.abs().sum() > 0


def test_a_prompt_s_task_loss_gradient_does_not_depend_on_the_other_prompts_of_its_image():
    logits = torch.randn(7, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    alone, together = logits[:1].clone().requires_grad_(), logits.clone().requires_grad_()
    task_loss(alone).backward()
    task_loss(together).backward()
    torch.testing.assert_close(together.grad[:1], alone.grad)  # a mean over 7 prompts gave 1/7 of it


def test_ptq4vit_search_installs_scales_and_never_increases_objective(tiny_dataset, random_testbed):
    model = random_testbed()
    report = calibrate(model, "ptq4vit", 6, 6, calibration_samples(tiny_dataset, 1, seed=0), progress=False,
                       search_rows=64)  # the demo's row sample: a search on every row takes minutes here
    assert report.hessian
    for record in report.hessian.values():
        history = record.get("history")
        if history:
            assert history[-1] <= history[0] * (1 + 1e-5) + 1e-9
    quantizers = attached_quantizers(model)
    searched = [q for n, q in quantizers.items() if q.spec.search == "hessian" and n not in report.unreached]
    assert searched and all(q.is_calibrated for q in searched)
    assert any(isinstance(q, UniformQuantizer) and q.scale.numel() > 1 for q in searched)  # per-channel weights


def test_calibration_is_deterministic(tiny_dataset, random_testbed):
    samples = calibration_samples(tiny_dataset, 2, seed=0)
    states = []
    for _ in range(2):
        model = random_testbed()
        calibrate(model, "ptq4sam", 4, 4, samples, progress=False)
        states.append({n: q.state_dict() for n, q in attached_quantizers(model).items()})
    assert states[0].keys() == states[1].keys()
    for name in states[0]:
        for key, value in states[0][name].items():
            assert torch.equal(value, states[1][name][key]), (name, key)


def test_instrument_is_idempotent_with_calibration(random_testbed):
    model = random_testbed()
    instrument(model)
    instrument(model)
    assert attach(model, "minmax", 8, 8)


def test_hessian_search_with_one_operand_float(tiny_dataset, random_testbed):
    from ptqsam.instrument.recipe import Recipe

    recipe = Recipe.from_dict({"name": "query-only", "description": "query quantized, key float", "rules": [
        {"include": ["image_encoder.blocks.0.attn.query"],
         "spec": {"bits": "A", "symmetric": True, "search": "hessian", "search_options": {"n": 10, "rounds": 1}}}]})
    model = random_testbed()
    report = calibrate(model, recipe, 8, 4, calibration_samples(tiny_dataset, 1, seed=0), progress=False)
    assert list(report.hessian) == ["image_encoder.blocks.0.attn.query@key"]
    (quantizer,) = report.quantizers.values()
    assert quantizer.is_calibrated and quantizer.scale.numel() == 1


def test_search_rows_is_the_max_rows_option_of_recipes_that_leave_it_unset(tiny_dataset, random_testbed):
    from ptqsam.instrument.recipe import Recipe

    def recipe(options: dict) -> Recipe:
        return Recipe.from_dict({"name": "lin", "description": "one Linear searched", "rules": [
            {"include": ["image_encoder.blocks.0.mlp.lin1.input", "image_encoder.blocks.0.mlp.lin1.weight"],
             "spec": {"bits": "A", "symmetric": True, "search": "hessian",
                      "search_options": {"n": 10, "rounds": 1, **options}}}]})

    samples = calibration_samples(tiny_dataset, 1, seed=0)
    scales = {}
    for label, options, search_rows in (("option", {"max_rows": 40}, None), ("argument", {}, 40),
                                        ("recipe wins", {"max_rows": 40}, 7), ("all rows", {}, None)):
        model = random_testbed()
        report = calibrate(model, recipe(options), 4, 4, samples, progress=False, search_rows=search_rows)
        scales[label] = torch.cat([q.scale for q in report.quantizers.values()])
    assert torch.equal(scales["option"], scales["argument"]) and torch.equal(scales["option"], scales["recipe wins"])
    assert not torch.equal(scales["option"], scales["all rows"])  # 40 of 256 tokens: another estimate
