"""Hessian-guided scale search: grid, objective, granularities, rounds, chunking, known answer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from quantizers.errors import QuantizationError
from quantizers.functional.uniform import fake_quantize, qparams_from_minmax, quant_range
from quantizers.search.hessian import (
    HessianSearchConfig,
    best_candidate,
    candidate_scales,
    initial_scale,
    objective,
    search_linear,
    search_matmul,
)
from quantizers.registry import SEARCHES
from quantizers.search import hessian
from quantizers.search.candidates import Output, quantize_groups, score_candidates
from quantizers.spec import QuantSpec

SMALL = HessianSearchConfig(n=40)


def non_increasing(history: tuple[float, ...]) -> bool:
    """Up to float32 rounding: the weight and input steps score the same scales through differently
    batched products (and ``1 − cos`` cancels), so equal objectives can differ in the last bits."""
    return all(later <= earlier * (1 + 1e-5) + 1e-6 for earlier, later in zip(history, history[1:]))


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def fq(t: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric signed per-tensor fake quantization through the library."""
    qmin, qmax = quant_range(bits, signed=True)
    return fake_quantize(t, scale.reshape(1), torch.zeros(1, dtype=torch.int32), qmin, qmax)


def linear_case(seed: int = 0, out_features: int = 24):
    x = randn(64, 16, seed=seed)
    w = randn(out_features, 16, seed=seed + 1)
    b = randn(out_features, seed=seed + 2)
    out = x @ w.T + b
    grad = randn(*out.shape, seed=seed + 3)
    return x, w, b, out, grad


def matmul_case(seed: int = 0, heads: int = 3):
    head_gain = torch.arange(1, heads + 1, dtype=torch.float32).view(1, heads, 1, 1)
    a = randn(2, heads, 12, 8, seed=seed) * head_gain
    b = randn(2, heads, 8, 10, seed=seed + 1) / head_gain
    out = a @ b
    return a, b, out, randn(*out.shape, seed=seed + 2)


# --- grid and initial scale -------------------------------------------------------------------


def test_candidate_grid_is_delta_times_the_fractions_exactly():
    base = torch.tensor([0.5, 3.25, 1e-3])
    alpha, beta, n = 0.01, 1.2, 100
    grid = candidate_scales(base, alpha, beta, n)
    assert grid.shape == (3, n + 1) and grid.dtype == torch.float32
    expected = torch.tensor(
        [[float(d) * (alpha + i * (beta - alpha) / n) for i in range(n + 1)] for d in base.tolist()],
        dtype=torch.float32,
    )
    assert torch.equal(grid, expected)
    assert grid[0, 0] == pytest.approx(0.5 * 0.01) and grid[0, -1] == pytest.approx(0.5 * 1.2)


def test_initial_scale_is_block_amax_over_half_levels():
    w = torch.cat([randn(4, 5, seed=1) * g for g in (0.1, 1.0, 10.0)])
    delta = initial_scale(w, bits=6, axis=0, groups=3)
    expected = torch.stack([blk.abs().max() / (2**5 - 0.5) for blk in w.split(4)])
    assert torch.equal(delta, expected)
    assert initial_scale(torch.zeros(3, 2), 8).item() > 0  # an all-zero group never gets a zero scale


# --- objective ----------------------------------------------------------------------------------


def test_hessian_objective_is_the_diagonal_quadratic_form():
    out, out_hat, grad = randn(7, 5, seed=1), randn(7, 5, seed=2), randn(7, 5, seed=3)
    d = (out_hat - out).double()
    forms = [d[t] @ torch.diag(grad[t].double() ** 2) @ d[t] for t in range(7)]
    expected = torch.stack(forms).mean() / 5  # E[quadratic form] / output width
    assert objective(out_hat, out, grad).item() == pytest.approx(expected.item(), rel=1e-6)


def test_other_metrics_match_their_textbook_forms():
    out, out_hat = randn(6, 9, seed=4), randn(6, 9, seed=5) + randn(6, 9, seed=4)
    assert objective(out_hat, out, metric="l2").item() == pytest.approx(((out_hat - out) ** 2).mean().item(), rel=1e-6)
    cos = F.cosine_similarity(out_hat.reshape(1, -1), out.reshape(1, -1)).item()
    assert objective(out_hat, out, metric="cosine").item() == pytest.approx(1 - cos, rel=1e-5)
    corr = np.corrcoef(out_hat.reshape(-1).numpy(), out.reshape(-1).numpy())[0, 1]
    assert objective(out_hat, out, metric="pearson").item() == pytest.approx(1 - corr, rel=1e-5)
    assert objective(out, out, metric="cosine").item() == pytest.approx(0.0, abs=1e-6)


def test_best_candidate_weights_errors_by_the_squared_gradient():
    out = torch.zeros(2, 4)
    grad = torch.tensor([[10.0, 1.0, 1.0, 1.0]] * 2)
    err_on_heavy = out.clone()
    err_on_heavy[:, 0] = 0.1  # small error where the gradient is large: weighted 2·0.01·100
    err_on_light = out.clone()
    err_on_light[:, 1:] = 0.5  # larger error where it is small: weighted 6·0.25
    candidates = [lambda: err_on_light, lambda: err_on_heavy]
    index, scores = best_candidate(candidates, out, grad)
    assert index == 0 and scores[0] < scores[1]
    assert best_candidate(candidates, out, metric="l2")[0] == 1  # unweighted, the other one wins
    assert best_candidate([lambda: out, lambda: out], out, grad)[0] == 0  # ties keep the first


def test_best_candidate_agrees_with_the_vectorised_weight_step():
    # One round: the weight step scores [Δ_w] + grid with the input held at its initial Δ.
    x, w, b, out, grad = linear_case(seed=7)
    config = dataclasses.replace(SMALL, rounds=1)
    found = search_linear(x, w, b, out, grad, w_bits=4, a_bits=6, config=config)
    w_delta, x_delta = initial_scale(w, 4), initial_scale(x, 6)
    scales = torch.cat([w_delta, candidate_scales(w_delta, config.alpha, config.beta, config.n)[0]])
    x_hat = fq(x, x_delta, 6)
    index, _ = best_candidate([lambda s=s: x_hat @ fq(w, s, 4).T + b for s in scales], out, grad)
    assert found.weight_scale.item() == pytest.approx(scales[index].item(), rel=1e-6)


# --- granularities ------------------------------------------------------------------------------


def test_qkv_blocks_get_their_own_scales():
    x = randn(64, 16, seed=1)
    w = torch.cat([randn(8, 16, seed=s) * g for s, g in ((2, 0.1), (3, 1.0), (4, 10.0))])  # q, k, v
    b = torch.zeros(24)
    out = x @ w.T + b
    found = search_linear(x, w, b, out, randn(64, 24, seed=5), 6, 8, weight_granularity="block", config=SMALL)
    s = found.weight_scale
    assert s.shape == (3,)
    assert s[0] < s[1] < s[2]  # each block's scale follows its own range
    assert s[2] / s[0] > 10
    per_channel = found.per_output_channel(24)
    assert torch.equal(per_channel, s.repeat_interleave(8))


def test_channel_granularity_gives_one_scale_per_output_channel():
    x, w, b, out, grad = linear_case(out_features=6)
    found = search_linear(x, w, b, out, grad, 4, 8, weight_granularity="channel", config=SMALL)
    assert found.weight_scale.shape == (6,)
    assert found.input_scale.shape == (1,)
    # Leading token dimensions are flattened: a (batch, tokens, features) input gives the same scales.
    batched = search_linear(
        x.reshape(4, 16, 16), w, b, out.reshape(4, 16, 6), grad.reshape(4, 16, 6), 4, 8, "channel", config=SMALL
    )
    assert torch.equal(batched.weight_scale, found.weight_scale)
    assert torch.equal(batched.input_scale, found.input_scale)


def test_per_head_scales_equal_separate_searches_of_each_head():
    a, b, out, grad = matmul_case(heads=3)
    joint = search_matmul(a, b, out, grad, 4, 4, head_axis=1, config=SMALL)
    assert joint.a_scale.shape == (3,) and joint.b_scale.shape == (3,)
    assert len(set(joint.a_scale.tolist())) == 3  # heads of different ranges get different scales
    for h in range(3):
        one = slice(h, h + 1)
        alone = search_matmul(a[:, one], b[:, one], out[:, one], grad[:, one], 4, 4, head_axis=1, config=SMALL)
        assert alone.a_scale.item() == pytest.approx(joint.a_scale[h].item(), rel=1e-6)
        assert alone.b_scale.item() == pytest.approx(joint.b_scale[h].item(), rel=1e-6)


def test_per_tensor_matmul_gives_one_scale_each():
    a, b, out, grad = matmul_case()
    found = search_matmul(a, b, out, grad, 6, 6, config=SMALL)
    assert found.a_scale.shape == (1,) and found.b_scale.shape == (1,)


# --- rounds, history, chunking -------------------------------------------------------------------


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 1000),
    metric=st.sampled_from(["hessian", "l2", "cosine", "pearson"]),
    granularity=st.sampled_from(["tensor", "block", "channel"]),
    bits=st.integers(3, 8),
)
def test_rounds_never_increase_the_linear_objective(seed, metric, granularity, bits):
    x, w, b, out, grad = linear_case(seed)
    config = HessianSearchConfig(n=20, rounds=3, metric=metric)
    history = search_linear(x, w, b, out, grad, bits, bits, granularity, config=config).history
    assert len(history) == 1 + 2 * 3
    assert non_increasing(history)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 1000), metric=st.sampled_from(["hessian", "l2", "cosine", "pearson"]))
def test_rounds_never_increase_the_matmul_objective(seed, metric):
    a, b, out, grad = matmul_case(seed)
    history = search_matmul(a, b, out, grad, 4, 5, head_axis=1, config=HessianSearchConfig(n=20, metric=metric)).history
    assert non_increasing(history)
    assert history[-1] < history[0]


def test_history_ends_at_the_objective_of_the_returned_scales():
    x, w, b, out, grad = linear_case(seed=3)
    found = search_linear(x, w, b, out, grad, 4, 6, config=SMALL)
    direct = objective(fq(x, found.input_scale, 6) @ fq(w, found.weight_scale, 4).T + b, out, grad)
    assert found.history[-1] == pytest.approx(direct.item(), rel=1e-5)


def test_chunked_evaluation_matches_unchunked():
    # 50 kB holds 1 to 4 candidates of these small layers; 1 TB holds all 41 at once.
    tiny, huge = dataclasses.replace(SMALL, memory_budget=50_000), dataclasses.replace(SMALL, memory_budget=2**40)
    x, w, b, out, grad = linear_case(seed=11)
    lin = [search_linear(x, w, b, out, grad, 4, 6, "block", config=c) for c in (tiny, huge)]
    assert torch.equal(lin[0].weight_scale, lin[1].weight_scale)
    assert torch.equal(lin[0].input_scale, lin[1].input_scale)
    assert lin[0].history == pytest.approx(lin[1].history, rel=1e-6)
    a, bm, o, g = matmul_case(seed=12)
    mm = [search_matmul(a, bm, o, g, 4, 4, head_axis=1, config=c) for c in (tiny, huge)]
    assert torch.equal(mm[0].a_scale, mm[1].a_scale) and torch.equal(mm[0].b_scale, mm[1].b_scale)


def test_search_is_deterministic():
    x, w, b, out, grad = linear_case(seed=5)
    first, second = (search_linear(x, w, b, out, grad, 4, 8, "channel", config=SMALL) for _ in range(2))
    assert torch.equal(first.weight_scale, second.weight_scale) and first.history == second.history


def every_step(operands, forward, output, config):
    """The alternating search with every step computed, even when the partner has not moved."""
    scales = [initial_scale(op.tensor, op.bits, op.axis, op.groups) for op in operands]
    grids = [candidate_scales(s, config.alpha, config.beta, config.n) for s in scales]
    history = []
    for _ in range(config.rounds):
        for k, op in enumerate(operands):
            other = operands[1 - k]
            other_hat = quantize_groups(other.tensor, other.axis, other.groups, scales[1 - k][:, None], other.bits)[0]
            candidates = torch.cat([scales[k][:, None], grids[k]], dim=1)
            def candidate_output(q, k=k, o=other_hat):
                return forward(q, o) if k == 0 else forward(o, q)
            scores = score_candidates(op, candidates, candidate_output, output, config)
            history += [float(scores[:, 0].mean())] if not history else []
            best = scores.argmin(dim=1)
            scales[k] = candidates[torch.arange(op.groups), best]
            history.append(float(scores[torch.arange(op.groups), best].mean()))
    return scales, tuple(history)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_steps_whose_partner_did_not_move_are_skipped_with_the_every_step_result(granularity, monkeypatch):
    x, w, b, out, grad = layer_case(seed=23)
    a, bm, o, g = matmul_case(seed=24)
    config = HessianSearchConfig(n=30, rounds=5)
    steps = []
    scored = hessian._score_candidates
    monkeypatch.setattr(hessian, "_score_candidates", lambda *args: steps.append(1) or scored(*args))
    found = [search_linear(x, w, b, out, grad, 4, 6, granularity, config=config),
             search_matmul(a, bm, o, g, 4, 5, head_axis=1, config=config)]
    assert len(steps) < 2 * 2 * config.rounds  # converged within 5 rounds, so some steps were skipped
    monkeypatch.setattr(hessian, "_alternate", every_step)
    expected = [search_linear(x, w, b, out, grad, 4, 6, granularity, config=config),
                search_matmul(a, bm, o, g, 4, 5, head_axis=1, config=config)]
    assert torch.equal(found[0].weight_scale, expected[0].weight_scale)
    assert torch.equal(found[0].input_scale, expected[0].input_scale)
    assert torch.equal(found[1].a_scale, expected[1].a_scale) and torch.equal(found[1].b_scale, expected[1].b_scale)
    assert [f.history for f in found] == [e.history for e in expected]


def subset(rows: int, keep: int) -> torch.Tensor:
    """The rows ``max_rows`` draws: seed 0, without replacement, sorted."""
    return torch.randperm(rows, generator=torch.Generator().manual_seed(0))[:keep].sort().values


def test_max_rows_searches_the_seeded_row_subset():
    x, w, b, out, grad = linear_case(seed=7)
    rows = subset(64, 20)
    sub = search_linear(x, w, b, out, grad, 4, 6, "channel", config=dataclasses.replace(SMALL, max_rows=20))
    direct = search_linear(x[rows], w, b, out[rows], grad[rows], 4, 6, "channel", config=SMALL)
    assert torch.equal(sub.weight_scale, direct.weight_scale) and sub.history == direct.history
    a, bm, o, g = matmul_case(seed=8)  # 2 x 3 leading, 12 rows each: 36 rows of A -> 6 per leading index
    rows = subset(12, 36 // 6)
    sub = search_matmul(a, bm, o, g, 4, 4, head_axis=1, config=dataclasses.replace(SMALL, max_rows=36))
    direct = search_matmul(a[..., rows, :], bm, o[..., rows, :], g[..., rows, :], 4, 4, head_axis=1, config=SMALL)
    assert torch.equal(sub.a_scale, direct.a_scale) and torch.equal(sub.b_scale, direct.b_scale)


def test_max_rows_at_or_above_the_row_count_changes_nothing():
    x, w, b, out, grad = linear_case(seed=9)
    full = search_linear(x, w, b, out, grad, 4, 6, config=SMALL)
    capped = search_linear(x, w, b, out, grad, 4, 6, config=dataclasses.replace(SMALL, max_rows=64))
    assert torch.equal(full.weight_scale, capped.weight_scale) and full.history == capped.history


# --- batched evaluation against the one-candidate-at-a-time reference -----------------------------


def reference_scores(op, candidates, candidate_output, output, config):
    """The search's objective before it was batched and fused: one candidate at a time, torch's
    per-channel op on the operand, the output moved and split, the textbook metric."""
    qmin, qmax = quant_range(op.bits, signed=True)
    moved = op.tensor.movedim(op.axis, 0)
    zeros = torch.zeros(op.groups, dtype=torch.int32)
    columns = []
    for k in range(candidates.shape[1]):
        rows = torch.fake_quantize_per_channel_affine(
            moved.reshape(op.groups, -1), candidates[:, k].contiguous(), zeros, 0, qmin, qmax)
        q = rows.reshape(moved.shape).movedim(0, op.axis)
        out_hat = by_group(output.candidates(candidate_output(q.unsqueeze(0)))[0])
        ref, weight = by_group(output.ref), None if output.weight is None else by_group(output.weight)
        if config.metric in ("hessian", "l2"):
            err = (out_hat - ref) ** 2
            per_group = (err if weight is None else err * weight).mean(dim=1)
        else:
            hat = out_hat
            if config.metric == "pearson":
                hat, ref = hat - hat.mean(dim=1, keepdim=True), ref - ref.mean(dim=1, keepdim=True)
            per_group = 1 - (hat * ref).sum(dim=1) / (hat.norm(dim=1) * ref.norm(dim=1)).clamp(min=1e-38)
        columns.append(per_group if op.groups == output.groups else per_group.mean().reshape(1))
    return torch.stack(columns, dim=1)


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_the_grouped_output_holds_each_slice_of_the_axis_in_its_group(axis, groups):
    t = torch.randn(4, 8, 4, 12, generator=torch.Generator().manual_seed(axis + 7 * groups))
    output = Output.along(t, t * 2, axis, groups)
    expected = t.movedim(axis, 0).reshape(groups, -1)  # group k: slice k of the axis, everything else
    for rows in (by_group(output.ref), by_group(output.weight) / 2):
        assert torch.equal(rows.sort(dim=1).values, expected.sort(dim=1).values)
    assert output.groups == groups and output.candidates(torch.stack([t, t])).shape == (2, *output.ref.shape)


def by_group(t):
    """A ``(pre, groups, post)`` output view as ``(groups, pre·post)``."""
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def layer_case(seed: int):
    """A Linear large enough for the fused kernels: 768 tokens, 96 -> 192 features, uneven gradients."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(768, 96, generator=g) * torch.rand(96, generator=g) * 3
    w = torch.randn(192, 96, generator=g) * 0.1
    b = torch.randn(192, generator=g) * 0.1
    out = x @ w.T + b
    return x, w, b, out, torch.randn(out.shape, generator=g) * torch.rand(192, generator=g)


@pytest.mark.parametrize("metric", ["hessian", "l2", "cosine"])
@pytest.mark.parametrize("granularity", ["tensor", "block", "channel"])
def test_batched_linear_search_picks_the_reference_scales(metric, granularity, monkeypatch):
    x, w, b, out, grad = layer_case(seed=21)
    config = HessianSearchConfig(n=50, metric=metric)
    found = search_linear(x, w, b, out, grad, 4, 6, granularity, config=config)
    monkeypatch.setattr(hessian, "_score_candidates", reference_scores)
    expected = search_linear(x, w, b, out, grad, 4, 6, granularity, config=config)
    assert torch.equal(found.weight_scale, expected.weight_scale)
    assert torch.equal(found.input_scale, expected.input_scale)
    assert found.history == pytest.approx(expected.history, rel=1e-4)  # summed in another order (1 − cos cancels)


@pytest.mark.parametrize("metric", ["hessian", "l2"])
@pytest.mark.parametrize("head_axis", [None, 1])
def test_batched_matmul_search_picks_the_reference_scales(metric, head_axis, monkeypatch):
    g = torch.Generator().manual_seed(22)
    a = torch.softmax(torch.randn(1, 6, 256, 256, generator=g) * 3, dim=-1)  # attention probabilities
    b = torch.randn(1, 6, 256, 32, generator=g)
    out = a @ b
    grad = torch.randn(out.shape, generator=g)
    config = HessianSearchConfig(n=50, metric=metric)
    found = search_matmul(a, b, out, grad, 6, 6, head_axis=head_axis, config=config)
    monkeypatch.setattr(hessian, "_score_candidates", reference_scores)
    expected = search_matmul(a, b, out, grad, 6, 6, head_axis=head_axis, config=config)
    assert torch.equal(found.a_scale, expected.a_scale) and torch.equal(found.b_scale, expected.b_scale)


# --- known answer -------------------------------------------------------------------------------


def test_hessian_beats_minmax_and_unweighted_search_when_gradients_are_uneven():
    # 4 of 32 output channels carry 10x the gradient (100x the weight in the objective) and have
    # smaller weights: the weighted objective wants a finer weight grid than MinMax or L2 picks.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g)
    w = torch.randn(32, 64, generator=g)
    w[:4] *= 0.2
    b = torch.randn(32, generator=g) * 0.1
    out = x @ w.T + b
    grad = torch.ones_like(out)
    grad[:, :4] = 10.0

    def weighted_error(w_scale: torch.Tensor, x_scale: torch.Tensor) -> float:
        return objective(fq(x, x_scale, 8) @ fq(w, w_scale, 4).T + b, out, grad).item()

    hessian = search_linear(x, w, b, out, grad, w_bits=4, a_bits=8)
    l2 = search_linear(x, w, b, out, grad, w_bits=4, a_bits=8, config=HessianSearchConfig(metric="l2"))
    w_minmax, _ = qparams_from_minmax(w.min(), w.max(), 4, symmetric=True)
    x_minmax, _ = qparams_from_minmax(x.min(), x.max(), 8, symmetric=True)
    errors = {
        "hessian": weighted_error(hessian.weight_scale, hessian.input_scale),
        "l2": weighted_error(l2.weight_scale, l2.input_scale),
        "minmax": weighted_error(w_minmax, x_minmax),
    }
    print(
        f"weighted error: hessian {errors['hessian']:.4f}, l2 {errors['l2']:.4f} "
        f"(x{errors['l2'] / errors['hessian']:.2f}), minmax {errors['minmax']:.4f} "
        f"(x{errors['minmax'] / errors['hessian']:.2f})"
    )
    assert errors["hessian"] < 0.8 * errors["l2"]
    assert errors["hessian"] < 0.8 * errors["minmax"]
    assert hessian.weight_scale < l2.weight_scale  # the finer grid is the reason


# --- bad input ----------------------------------------------------------------------------------


def test_zero_gradient_is_refused():
    x, w, b, out, _ = linear_case()
    with pytest.raises(QuantizationError, match="identically zero.*task loss must depend on the layer output"):
        search_linear(x, w, b, out, torch.zeros_like(out), 8, 8)
    a, bm, o, _ = matmul_case()
    with pytest.raises(QuantizationError, match="identically zero"):
        search_matmul(a, bm, o, torch.zeros_like(o), 8, 8)


def test_hessian_metric_needs_a_gradient_and_l2_does_not():
    x, w, b, out, _ = linear_case()
    with pytest.raises(QuantizationError, match="needs the output gradient"):
        search_linear(x, w, b, out, None, 8, 8)
    assert search_linear(x, w, b, out, None, 8, 8, config=HessianSearchConfig(n=10, metric="l2")).history


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: {**c, "w_bits": 1}, "bits"),
        (lambda c: {**c, "a_bits": 17}, "bits"),
        (lambda c: {**c, "x": c["x"].index_fill(0, torch.tensor([0]), float("nan"))}, "NaN"),
        (lambda c: {**c, "weight": c["weight"][:, :-1]}, "does not match"),
        (lambda c: {**c, "out": c["out"][:-1]}, "output shape"),
        (lambda c: {**c, "grad_out": c["grad_out"][:-1]}, "gradient shape"),
        (lambda c: {**c, "bias": c["bias"][:-1]}, "bias shape"),
        (lambda c: {**c, "weight_granularity": "row"}, "weight_granularity"),
        (lambda c: {**c, "weight_granularity": "block", "blocks": 5}, "blocks"),
        (lambda c: {**c, "x": torch.empty(0, 16)}, "empty"),
    ],
)
def test_bad_linear_input_raises(change, message):
    x, w, b, out, grad = linear_case()
    call = dict(x=x, weight=w, bias=b, out=out, grad_out=grad, w_bits=4, a_bits=8)
    with pytest.raises(QuantizationError, match=message):
        search_linear(**change(call))


def test_bad_matmul_input_raises():
    a, b, out, grad = matmul_case()
    with pytest.raises(QuantizationError, match="cannot multiply"):
        search_matmul(a, b.transpose(-1, -2), out, grad, 8, 8)
    with pytest.raises(QuantizationError, match="head_axis"):
        search_matmul(a, b, out, grad, 8, 8, head_axis=2)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5, "beta": 1.2}, "alpha < beta"),
        ({"beta": "1.2"}, "beta must be a number"),
        ({"n": 0}, "n must"),
        ({"rounds": 1.5}, "rounds must"),
        ({"metric": "kl"}, "unknown metric"),
        ({"memory_budget": 0}, "memory_budget"),
        ({"max_rows": 0}, "max_rows"),
        ({"max_rows": 2.5}, "max_rows"),
    ],
)
def test_bad_config_raises(options, message):
    with pytest.raises(QuantizationError, match=message):
        HessianSearchConfig(**options)


def test_config_fields_are_the_spec_search_options():
    assert SEARCHES.get("hessian").options is HessianSearchConfig
    spec = QuantSpec(search="hessian", search_options={"n": 50, "metric": "cosine"})
    config = spec.search_config
    assert (config.n, config.metric, config.alpha) == (50, "cosine", 0.01)
    with pytest.raises(QuantizationError, match="unknown"):
        HessianSearchConfig.from_mapping({"steps": 3}, "search 'hessian'")
