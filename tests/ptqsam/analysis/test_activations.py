"""Activation analysis: exact streaming statistics, bounded seeded samples, per-site quantization
error against torch's fake-quantize ops, decoder keys before / after a sign fold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptqsam.analysis import (ValueSampler, collect_site_values, decoder_keys, site_quantization_error,
                             site_statistics)
from ptqsam.calibration import calibrate
from ptqsam.errors import AnalysisError
from ptqsam.inference import SamRunner
from ptqsam.instrument import attached_quantizers, instrument, quantizing, sites
from quantizers import Mode
from quantizers.transforms.bimodal import fold_signs

SMALL = "mask_decoder.transformer.layers.0.self_attn.probs"  # (prompts, 8, 7, 7) per image
LARGE = "image_encoder.blocks.0.attn.probs"  # 4 windows x 6 heads x 64 x 64 per image
T2I = "mask_decoder.transformer.layers.0.cross_attn_token_to_image"
WEIGHT = "mask_decoder.transformer.layers.0.self_attn.q_proj.weight"


def _capture(model, samples, names: list[str]) -> dict[str, list[torch.Tensor]]:
    """The oracle: every full input tensor of each site, from a float run of the model's own."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    all_sites = sites(model)
    hooks = [all_sites[n].register_forward_hook(lambda m, a, o, n=n: seen[n].append(a[0].detach().clone()))
             for n in names]
    runner = SamRunner(model)
    with torch.inference_mode():
        for s in samples:
            runner.decode(runner.embed(s.image), s.prompts.boxes, s.prompts.points, s.prompts.point_labels)
    for hook in hooks:
        hook.remove()
    return seen


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]).double()


# --------------------------------------------------------------------------- collect_site_values


def test_stats_are_exact_over_every_value_and_sample_is_bounded(make_model, samples) -> None:
    model = instrument(make_model())
    full = _flat(_capture(model, samples, [SMALL])[SMALL])
    stats = collect_site_values(model, samples, [SMALL], max_values=100)[SMALL]
    assert stats.count == full.numel() > 100
    assert stats.min == float(full.min()) and stats.max == float(full.max())
    assert math.isclose(stats.mean, float(full.mean()), rel_tol=1e-12)
    assert math.isclose(stats.std, float(full.std(unbiased=False)), rel_tol=1e-9)
    assert stats.values.shape == (100,) and stats.values.dtype == torch.float32
    assert np.isin(stats.values.numpy(), full.float().numpy()).all()


def test_sample_holds_every_value_when_the_site_saw_fewer(make_model, samples) -> None:
    model = instrument(make_model())
    full = _flat(_capture(model, samples, [SMALL])[SMALL]).float()
    stats = collect_site_values(model, samples, [SMALL], max_values=10**7)[SMALL]
    assert torch.equal(torch.sort(stats.values).values, torch.sort(full).values)


def test_large_site_sample_is_bounded(make_model, samples) -> None:
    stats = collect_site_values(make_model(), samples, [LARGE, SMALL], max_values=1000)
    assert stats[LARGE].count == 2 * 4 * 6 * 64 * 64
    assert stats[LARGE].values.numel() == 1000
    assert 0.0 <= stats[LARGE].min and stats[LARGE].max <= 1.0


def test_sample_is_deterministic_for_a_seed(make_model, samples) -> None:
    model = make_model()
    a = collect_site_values(model, samples, [LARGE], max_values=500, seed=3)[LARGE]
    b = collect_site_values(model, samples, [LARGE], max_values=500, seed=3)[LARGE]
    c = collect_site_values(model, samples, [LARGE], max_values=500, seed=4)[LARGE]
    assert torch.equal(a.values, b.values)
    assert not torch.equal(a.values, c.values)
    assert (a.count, a.min, a.max, a.mean, a.std) == (c.count, c.min, c.max, c.mean, c.std)


def test_a_sites_sample_does_not_depend_on_the_other_sites_collected(make_model, samples) -> None:
    model = make_model()
    alone = collect_site_values(model, samples, [SMALL], max_values=50)[SMALL]
    together = collect_site_values(model, samples, [LARGE, SMALL], max_values=50)[SMALL]
    assert torch.equal(alone.values, together.values)


def test_collection_runs_in_float_and_leaves_quantizer_modes_alone(make_model, samples) -> None:
    model = make_model()
    before = collect_site_values(model, samples, [LARGE], max_values=300)[LARGE]
    calibrate(model, "minmax", 4, 4, samples, progress=False)
    with quantizing(model):
        after = collect_site_values(model, samples, [LARGE], max_values=300)[LARGE]
        assert all(q.mode is Mode.QUANTIZE for q in attached_quantizers(model).values())
    assert torch.equal(before.values, after.values)
    assert (before.min, before.max, before.mean) == (after.min, after.max, after.mean)


@pytest.mark.parametrize("names, options, message", [
    (["no.such.site"], {}, "no site named"),
    ([], {}, "is empty"),
    (SMALL, {}, "list of names"),
    ([SMALL], {"max_values": 0}, "max_values"),
    (["prompt_encoder.mask_downscaling.0.input"], {}, "never reach"),  # box prompts: no mask input
])
def test_bad_requests_raise(make_model, samples, names, options, message) -> None:
    with pytest.raises(AnalysisError, match=message):
        collect_site_values(make_model(), samples, names, **options)


def test_no_samples_raise_and_leave_no_hook(make_model) -> None:
    model = instrument(make_model())
    with pytest.raises(AnalysisError, match="no samples"):
        collect_site_values(model, [], [SMALL])
    assert not sites(model)[SMALL]._forward_hooks


# --------------------------------------------------------------------------- ValueSampler


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=40), min_size=1, max_size=5),
    max_values=st.integers(1, 30),
    seed=st.integers(0, 2**31),
)
def test_sampler_streams_exact_stats_and_a_subset(chunks, max_values, seed) -> None:
    sampler = ValueSampler(max_values, seed)
    for chunk in chunks:
        sampler.add(torch.tensor(chunk, dtype=torch.float32).reshape(1, -1), "x")
    stats = sampler.stats("x")
    full = torch.tensor([v for c in chunks for v in c], dtype=torch.float32)
    wide = full.double()
    scale = float(wide.abs().max()) + 1.0
    assert stats.count == full.numel()
    assert (stats.min, stats.max) == (float(full.min()), float(full.max()))
    assert math.isclose(stats.mean, float(wide.mean()), rel_tol=1e-12, abs_tol=1e-12 * scale)
    assert math.isclose(stats.std, float(wide.std(unbiased=False)), rel_tol=1e-9, abs_tol=1e-9 * scale)
    assert stats.values.numel() == min(max_values, full.numel())
    if max_values >= full.numel():
        assert torch.equal(torch.sort(stats.values).values, torch.sort(full).values)
    else:  # a subset as a multiset: each value kept at most as often as it occurs
        kept, counts = torch.unique(stats.values, return_counts=True)
        assert all(int(n) <= int((full == v).sum()) for v, n in zip(kept, counts))


def test_sampler_sample_is_uniform_over_every_value_seen() -> None:
    """Each of 20 values (streamed as chunks of 7, 1 and 12) is kept with probability 5/20."""
    seeds, kept = 2000, torch.zeros(20)
    for seed in range(seeds):
        sampler = ValueSampler(5, seed)
        for chunk in torch.arange(20.0).split([7, 1, 12]):
            sampler.add(chunk, "x")
        kept[sampler.stats("x").values.long()] += 1
    expected, sigma = seeds * 5 / 20, math.sqrt(seeds * 0.25 * 0.75)
    assert float((kept - expected).abs().max()) < 5 * sigma


def test_sampler_rejects_non_finite_values_and_empty_results() -> None:
    sampler = ValueSampler(10, 0)
    with pytest.raises(AnalysisError, match="saw no value"):
        sampler.stats("site a")
    with pytest.raises(AnalysisError, match="NaN or Inf"):
        sampler.add(torch.tensor([1.0, float("nan")]), "site a")


# --------------------------------------------------------------------------- site_quantization_error


def test_error_is_larger_at_4_bits_than_at_8_bits(make_model, samples) -> None:
    model = make_model()
    calibrate(model, "minmax", 8, 8, samples, progress=False)
    at8 = site_quantization_error(model, samples)
    calibrate(model, "minmax", 4, 4, samples, progress=False)
    at4 = site_quantization_error(model, samples)
    assert at8.keys() == at4.keys() and len(at8) > 100
    assert not any(name.startswith("prompt_encoder.mask_downscaling") for name in at8)  # box prompts: unreached
    smaller = [name for name in at8 if not at4[name] > at8[name] > 0]
    assert smaller == []


def test_error_matches_torch_fake_quantize(make_model, samples) -> None:
    """Oracle: torch's fake_quantize ops with the calibrated (scale, zero point); minmax 6-bit is
    per-tensor affine [0, 63] for activations, per-channel symmetric [-32, 31] for weights."""
    model = make_model()
    report = calibrate(model, "minmax", 6, 6, samples, progress=False)
    errors = site_quantization_error(model, samples, [SMALL, WEIGHT])
    assert list(errors) == [SMALL, WEIGHT]

    act = report.quantizers[SMALL]
    error = norm = 0.0
    for x in _capture(model, samples, [SMALL])[SMALL]:
        q = torch.fake_quantize_per_tensor_affine(x, float(act.scale), int(act.zero_point), 0, 63)
        error += float((q.double() - x.double()).square().sum())
        norm += float(x.double().square().sum())
    assert math.isclose(errors[SMALL], error / norm, rel_tol=1e-9)

    w = model.get_submodule(WEIGHT.removesuffix(".weight")).weight.detach()
    wq = report.quantizers[WEIGHT]
    q = torch.fake_quantize_per_channel_affine(w, wq.scale, wq.zero_point, 0, -32, 31)
    expected = float((q.double() - w.double()).square().sum() / w.double().square().sum())
    assert math.isclose(errors[WEIGHT], expected, rel_tol=1e-9)


def test_error_needs_calibrated_quantizers(make_model, samples) -> None:
    model = make_model()
    with pytest.raises(AnalysisError, match="no calibrated quantizer"):
        site_quantization_error(model, samples)
    calibrate(model, "minmax", 8, 8, samples, exclude=["image_encoder.*"], progress=False)
    with pytest.raises(AnalysisError, match="no calibrated quantizer on site named"):
        site_quantization_error(model, samples, [LARGE])


# --------------------------------------------------------------------------- decoder_keys


def test_keys_flip_with_folded_signs_at_the_same_sampled_positions(make_model, samples) -> None:
    model = make_model()
    before = decoder_keys(model, samples, [T2I], max_values=500)[T2I]
    attention = model.get_submodule(T2I)
    fold_signs(attention.q_proj, attention.k_proj, -torch.ones(attention.k_proj.out_features))
    after = decoder_keys(model, samples, [T2I], max_values=500)[T2I]
    assert before.numel() == 500
    assert torch.equal(after, -before)


def test_keys_are_the_values_of_the_key_site(make_model, samples) -> None:
    model = make_model()  # not instrumented: decoder_keys hooks the plain k_proj
    keys = decoder_keys(model, samples, [T2I], max_values=10**7)[T2I]
    site = collect_site_values(model, samples, [T2I + ".key"], max_values=10**7)[T2I + ".key"]
    assert keys.numel() == site.count
    assert torch.equal(torch.sort(keys).values, torch.sort(site.values).values)


@pytest.mark.parametrize("name, message", [
    ("mask_decoder.output_upscaling", "no k_proj"),
    ("mask_decoder.nothing", "no module named"),
])
def test_decoder_keys_rejects_modules_without_keys(make_model, samples, name, message) -> None:
    with pytest.raises(AnalysisError, match=message):
        decoder_keys(make_model(), samples, [name])


# --------------------------------------------------------------------------- site_statistics


def test_site_statistics_combine_exact_stats_and_quantization_error(make_model, samples) -> None:
    mask_conv = "prompt_encoder.mask_downscaling.0.input"  # box prompts never reach it
    model = make_model()
    calibrate(model, "minmax", 6, 6, [samples[0]], progress=False)
    table = site_statistics(model, samples, [SMALL, LARGE, mask_conv], max_values=10**7)
    assert list(table) == [SMALL, LARGE]  # the unreached site is left out
    full = _flat(_capture(model, samples, [SMALL])[SMALL])
    row = table[SMALL]
    assert row["count"] == full.numel() and row["min"] == float(full.min()) and row["max"] == float(full.max())
    assert math.isclose(row["mean"], float(full.mean()), rel_tol=1e-9)
    assert math.isclose(row["std"], float(full.std(correction=0)), rel_tol=1e-9)
    assert math.isclose(row["abs_p999"], float(np.quantile(full.abs().float().numpy(), 0.999)), rel_tol=1e-6)
    assert row["rel_error"] == site_quantization_error(model, samples, [SMALL])[SMALL]
    assert row["abs_p999_sampled"] is False  # the sample holds every value: exact


def test_a_weight_counts_once_and_an_estimated_percentile_is_marked(make_model, samples) -> None:
    weight = "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"
    model = make_model()
    table = site_statistics(model, samples, [weight, SMALL], max_values=100)
    assert len(samples) > 1 and table[weight]["count"] == model.get_submodule(weight.rsplit(".", 1)[0]).weight.numel()
    assert table[weight]["abs_p999_sampled"] and table[SMALL]["abs_p999_sampled"]


def test_site_statistics_of_a_float_model_have_no_error(make_model, samples) -> None:
    table = site_statistics(make_model(), samples, [SMALL])
    assert "rel_error" not in table[SMALL] and table[SMALL]["count"] > 0
