"""Hessian-guided scale search (PTQ4ViT; Q-TinySAM follows it) on cached calibration tensors.

The objective of a layer with output ``O`` and output gradient ``g = ∂L/∂O`` is
``E[(Ô − O)ᵀ diag(g²)(Ô − O)]``, computed as the mean over output elements of ``g²(Ô − O)²`` (the
expectation divided by the output width; the factor changes no argmin). ``g`` is supplied by the
caller; this module never computes a task loss. Alternative metrics (``l2``, ``cosine``,
``pearson``) are turned into "lower is better".

Operands are quantized symmetrically on the signed grid with
:func:`quantizers.functional.uniform.fake_quantize`. Each group of an operand starts at
``Δ = max|·| / (2^(b−1) − 0.5)`` and searches ``Δ·(α + i(β − α)/n)``, ``i = 0..n``, plus its current
scale (so a step never makes the objective worse). Rounds alternate: weight then input (linear),
``A`` then ``B`` (matmul), each with the other operand fake-quantized at its current scale; both
operands start at their ``Δ``. Groups of one operand touch disjoint slices of the output (a qkv
block its output columns, a head its output head), so every group picks its own best candidate in one
vectorised pass. The layer objective is the mean over those output slices of each slice's metric (for
``hessian`` and ``l2`` this is the metric of the whole output); an operand with a single scale (the
linear input) minimises that mean. Candidates are evaluated in chunks that fit ``memory_budget``
bytes, each chunk with one batched product (:mod:`quantizers.search.candidates`). With
``max_rows`` the objective is estimated on a seeded random subset of the output rows (a Linear's
tokens, the rows of a matmul's ``A``): the cost of a search is proportional to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch

from quantizers.errors import QuantizationError
from quantizers.functional.checks import check_tensor
from quantizers.functional.uniform import SCALE_EPS
from quantizers.options import Options
from quantizers.registry import register_search
from quantizers.search.base import ScaleSearch
from quantizers.search.candidates import Operand as _Operand
from quantizers.search.candidates import Output as _Output
from quantizers.search.candidates import by_group as _by_group
from quantizers.search.candidates import flat_score as _flat_score
from quantizers.search.candidates import grouped_shape as _grouped_shape
from quantizers.search.candidates import quantize_groups as _quantize_groups
from quantizers.search.candidates import score_candidates as _score_candidates
from quantizers.spec import check_bits

if TYPE_CHECKING:
    from quantizers.spec import QuantSpec

METRICS = ("hessian", "l2", "cosine", "pearson")
WEIGHT_GRANULARITIES = ("tensor", "block", "channel")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise QuantizationError(f"unknown metric {metric!r}; choose one of {METRICS}")


@dataclass(frozen=True)
class HessianSearchConfig(Options):
    """Settings of the search; field names are the ``hessian`` search options of a spec.

    Arguments:
      alpha: smallest candidate, as a fraction of the initial scale Δ.
      beta: largest candidate, as a fraction of Δ.
      n: the grid has ``n + 1`` candidates.
      rounds: alternating rounds (each searches both operands once).
      metric: ``hessian``, ``l2``, ``cosine`` or ``pearson``.
      memory_budget: bytes the candidate outputs of one chunk may take.
      max_rows: score candidates on at most this many output rows, drawn at random (seed 0)
        without replacement; None: every row.
    """

    alpha: float = 0.01
    beta: float = 1.2
    n: int = 100
    rounds: int = 3
    metric: str = "hessian"
    memory_budget: int = 256 * 2**20
    max_rows: int | None = None

    def __post_init__(self) -> None:
        for name in ("alpha", "beta"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), (int, float)):
                raise QuantizationError(f"{name} must be a number, got {getattr(self, name)!r}")
        if not 0.0 < self.alpha < self.beta:
            raise QuantizationError(f"need 0 < alpha < beta, got alpha={self.alpha}, beta={self.beta}")
        for name in ("n", "rounds", "memory_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise QuantizationError(f"{name} must be a positive integer, got {value!r}")
        if self.max_rows is not None and (isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int)
                                          or self.max_rows < 1):
            raise QuantizationError(f"max_rows must be a positive integer or None, got {self.max_rows!r}")
        _check_metric(self.metric)


@register_search("hessian", HessianSearchConfig)
class HessianSearch(ScaleSearch):
    """PTQ4ViT's Hessian-guided search: signed symmetric uniform grids, per tensor or per channel
    (axis 0, weights); twin-uniform quantizers are fitted on the same objective."""

    @classmethod
    def check_spec(cls, spec: "QuantSpec") -> None:
        if spec.quantizer == "uniform" and not (spec.symmetric and spec.signed):
            raise QuantizationError(
                "search 'hessian' searches a signed symmetric grid (zero point 0): the spec must have "
                f"symmetric: true and signed: true, got symmetric: {spec.symmetric}, signed: {spec.signed}"
            )
        g = spec.granularity
        if g.kind == "group" or (g.kind == "channel" and g.axis != 0):
            raise QuantizationError(
                f"search 'hessian' supports per-tensor or per-channel (axis 0) scales, got granularity {g.to_dict()}"
            )


@dataclass(frozen=True)
class LinearScales:
    """Result of :func:`search_linear`.

    Arguments:
      weight_scale: one scale per weight group (1, ``blocks`` or ``out_features``).
      input_scale: the per-tensor input scale, shape ``(1,)``.
      history: the objective before the search, then after every step (weight, input, weight, ...);
        the mean over weight groups of each group's objective. Never increases (beyond float
        rounding: the two steps score the same scales through differently batched products).
    """

    weight_scale: torch.Tensor
    input_scale: torch.Tensor
    history: tuple[float, ...]

    def per_output_channel(self, out_features: int) -> torch.Tensor:
        """The weight scale repeated to one entry per output channel (for a per-channel quantizer)."""
        groups = self.weight_scale.numel()
        if out_features % groups:
            raise QuantizationError(f"{out_features} output channels do not split into {groups} groups")
        return self.weight_scale.repeat_interleave(out_features // groups)


@dataclass(frozen=True)
class MatmulScales:
    """Result of :func:`search_matmul`.

    Arguments:
      a_scale: one scale per head of ``A`` (shape ``(1,)`` per-tensor).
      b_scale: one scale per head of ``B``.
      history: the objective before the search, then after every step (A, B, A, ...).
    """

    a_scale: torch.Tensor
    b_scale: torch.Tensor
    history: tuple[float, ...]


def initial_scale(t: torch.Tensor, bits: int, axis: int = 0, groups: int = 1) -> torch.Tensor:
    """``Δ = max|·| / (2^(b−1) − 0.5)`` of each of ``groups`` contiguous slices of ``t`` along ``axis``.

    Scales are floored at ``SCALE_EPS`` (an all-zero group gets a tiny, valid scale).
    """
    check_tensor(t)
    check_bits(bits)
    amax = _by_group(t.detach().float().reshape(_grouped_shape(t.shape, axis, groups))).abs().amax(dim=1)
    return torch.clamp(amax / (2 ** (bits - 1) - 0.5), min=SCALE_EPS)


def candidate_scales(base: torch.Tensor, alpha: float = 0.01, beta: float = 1.2, n: int = 100) -> torch.Tensor:
    """``base·(α + i(β − α)/n)`` for ``i = 0..n``: shape ``(*base.shape, n + 1)``, float32.

    The fractions are formed in float64 so each entry is the correctly rounded product.
    """
    fractions = alpha + torch.arange(n + 1, dtype=torch.float64, device=base.device) * (beta - alpha) / n
    return (base.to(torch.float64).unsqueeze(-1) * fractions).to(torch.float32)


def objective(
    out_hat: torch.Tensor, out: torch.Tensor, grad: torch.Tensor | None = None, metric: str = "hessian"
) -> torch.Tensor:
    """Scalar "lower is better" distance of ``out_hat`` from ``out`` over all elements.

    ``hessian``: mean of ``grad²(out_hat − out)²``; ``l2``: mean of ``(out_hat − out)²``;
    ``cosine``: ``1 − cos(out_hat, out)``; ``pearson``: ``1 − corr(out_hat, out)`` (both over the
    flattened tensors).
    """
    if out_hat.shape != out.shape:
        raise QuantizationError(f"output shapes differ: {tuple(out_hat.shape)} vs {tuple(out.shape)}")
    return _flat_score(out_hat, out, _grad_weight(grad, out, metric), metric)


def output_objective(
    out: torch.Tensor, grad: torch.Tensor | None = None, metric: str = "hessian"
) -> Callable[[torch.Tensor], float]:
    """``out_hat -> objective(out_hat, out, grad, metric)`` as a float, with ``out`` and ``grad``
    validated (and ``grad²`` formed) once: for scoring many candidate outputs of one layer."""
    check_tensor(out, "reference output")
    weight = _grad_weight(grad, out, metric)

    def score(out_hat: torch.Tensor) -> float:
        if out_hat.shape != out.shape:
            raise QuantizationError(f"output shapes differ: {tuple(out_hat.shape)} vs {tuple(out.shape)}")
        return float(_flat_score(out_hat, out, weight, metric))

    return score


def best_candidate(
    outputs: Iterable[Callable[[], torch.Tensor]],
    out: torch.Tensor,
    grad: torch.Tensor | None = None,
    metric: str = "hessian",
) -> tuple[int, torch.Tensor]:
    """Index of the candidate whose output is closest to ``out`` by ``metric``, and all scores.

    Each entry of ``outputs`` computes the layer output with one candidate (any fake-quant scheme),
    called one at a time so only one candidate output is alive. Ties go to the earliest candidate.
    """
    check_tensor(out, "reference output")
    weight = _grad_weight(grad, out, metric)
    scores = []
    for make_output in outputs:
        out_hat = make_output()
        if out_hat.shape != out.shape:
            raise QuantizationError(f"candidate output shape {tuple(out_hat.shape)} != {tuple(out.shape)}")
        scores.append(_flat_score(out_hat, out, weight, metric))
    if not scores:
        raise QuantizationError("best_candidate needs at least one candidate")
    stacked = torch.stack(scores)
    return int(torch.argmin(stacked)), stacked


def search_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    grad_out: torch.Tensor | None,
    w_bits: int,
    a_bits: int,
    weight_granularity: str = "tensor",
    blocks: int = 3,
    config: HessianSearchConfig = HessianSearchConfig(),
) -> LinearScales:
    """Search the weight and input scales of ``out = x @ weightᵀ + bias``.

    Arguments:
      x: cached inputs ``(..., in_features)``.
      weight: ``(out_features, in_features)``.
      bias: ``(out_features,)`` or None; kept in float.
      out: the float output ``(..., out_features)``.
      grad_out: ``∂L/∂out``, same shape as ``out`` (required by the ``hessian`` metric).
      w_bits, a_bits: weight and input bit-widths.
      weight_granularity: ``tensor`` (one scale), ``block`` (``blocks`` equal slices of the output
        dimension, e.g. q, k, v of a fused qkv) or ``channel`` (one per output channel).
      blocks: number of blocks for ``block`` granularity.
      config: grid, rounds, metric and memory budget.
    """
    for t, what in ((x, "input"), (weight, "weight"), (out, "output")):
        check_tensor(t, what)
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise QuantizationError(f"weight {tuple(weight.shape)} does not match input {tuple(x.shape)}")
    out_features = weight.shape[0]
    if out.shape != (*x.shape[:-1], out_features):
        raise QuantizationError(f"output shape {tuple(out.shape)} != {(*x.shape[:-1], out_features)}")
    if bias is not None and bias.shape != (out_features,):
        raise QuantizationError(f"bias shape {tuple(bias.shape)} != ({out_features},)")
    groups = _weight_groups(weight_granularity, blocks, out_features)
    x, out, grad_out = subsample_rows(config.max_rows, x, out, grad_out, matmul=False)
    x2, out2 = x.detach().float().reshape(-1, x.shape[-1]), out.detach().float().reshape(-1, out_features)
    grad_sq = _grad_weight(grad_out, out, config.metric)
    grad_sq = None if grad_sq is None else grad_sq.reshape(-1, out_features)
    b = None if bias is None else bias.detach().float()

    def forward(w_hat: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """One product for all candidates (the bias added inside it): ``(c, N, out)`` for ``c``
        weights ``(c, out, in)`` or inputs ``(c, N, in)``."""
        if w_hat.dim() == 3:
            xs = x_hat.expand(w_hat.shape[0], *x_hat.shape)
            return torch.bmm(xs, w_hat.transpose(1, 2)) if b is None else torch.baddbmm(b, xs, w_hat.transpose(1, 2))
        flat = x_hat.reshape(-1, x_hat.shape[-1])
        y = flat @ w_hat.T if b is None else torch.addmm(b, flat, w_hat.T)
        return y.reshape(*x_hat.shape[:-1], w_hat.shape[0])

    operands = (
        _Operand(weight.detach().float(), check_bits(w_bits), axis=0, groups=groups),
        _Operand(x2, check_bits(a_bits), axis=0, groups=1),
    )
    output = _Output.along(out2, grad_sq, 1, groups)
    (w_scale, x_scale), history = _alternate(operands, forward, output, config)
    return LinearScales(w_scale, x_scale, history)


def search_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor,
    grad_out: torch.Tensor | None,
    a_bits: int,
    b_bits: int,
    head_axis: int | None = None,
    config: HessianSearchConfig = HessianSearchConfig(),
) -> MatmulScales:
    """Search the scales of both operands of ``out = a @ b`` (e.g. ``q @ kᵀ`` or ``attn @ v``).

    Arguments:
      a: ``(..., N, K)``; b: ``(..., K, M)`` with the same leading dimensions.
      out: the float product ``(..., N, M)``.
      grad_out: ``∂L/∂out`` (required by the ``hessian`` metric).
      a_bits, b_bits: bit-widths of ``a`` and ``b``.
      head_axis: a leading axis holding heads: each head of ``a`` and of ``b`` gets its own scale.
        None: one scale per operand.
      config: grid, rounds, metric and memory budget.
    """
    for t, what in ((a, "operand A"), (b, "operand B"), (out, "output")):
        check_tensor(t, what)
    if a.dim() < 2 or a.dim() != b.dim() or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise QuantizationError(f"cannot multiply A {tuple(a.shape)} by B {tuple(b.shape)}")
    if out.shape != (*a.shape[:-1], b.shape[-1]):
        raise QuantizationError(f"output shape {tuple(out.shape)} != {(*a.shape[:-1], b.shape[-1])}")
    if head_axis is None:
        axis, heads = 0, 1
    elif -a.dim() <= head_axis < a.dim() and head_axis % a.dim() < a.dim() - 2:
        axis = head_axis % a.dim()
        heads = a.shape[axis]
    else:
        raise QuantizationError(f"head_axis {head_axis} must be a leading (batch) axis of a {a.dim()}-D operand")
    a, out, grad_out = subsample_rows(config.max_rows, a, out, grad_out, matmul=True)
    grad_sq = _grad_weight(grad_out, out, config.metric)
    operands = (
        _Operand(a.detach().float(), check_bits(a_bits), axis, heads),
        _Operand(b.detach().float(), check_bits(b_bits), axis, heads),
    )
    output = _Output.along(out.detach().float(), grad_sq, axis, heads)
    (a_scale, b_scale), history = _alternate(operands, torch.matmul, output, config)
    return MatmulScales(a_scale, b_scale, history)


def _alternate(
    operands: Sequence[_Operand],
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    output: _Output,
    config: HessianSearchConfig,
) -> tuple[list[torch.Tensor], tuple[float, ...]]:
    """Coordinate descent over the two operands' scales (``forward(first, second)``).

    A step whose partner has not moved since this operand's last step is not computed again: it
    would score the same candidates against the same outputs, and its incumbent (their argmin then)
    would stay; its history entry repeats that step's. Once neither operand moves, the remaining
    rounds cost nothing."""
    bases = [initial_scale(op.tensor, op.bits, op.axis, op.groups) for op in operands]
    grids = [candidate_scales(base, config.alpha, config.beta, config.n) for base in bases]
    scales = list(bases)
    history: list[float] = []
    last_step: list[tuple[torch.Tensor, float] | None] = [None, None]  # per operand: partner's scales, score
    for _ in range(config.rounds):
        for k, op in enumerate(operands):
            if last_step[k] is not None and torch.equal(last_step[k][0], scales[1 - k]):
                history.append(last_step[k][1])
                continue
            other = operands[1 - k]
            other_hat = _quantize_groups(other.tensor, other.axis, other.groups, scales[1 - k][:, None], other.bits)[0]

            def candidate_output(q: torch.Tensor, k: int = k, other_hat: torch.Tensor = other_hat) -> torch.Tensor:
                return forward(q, other_hat) if k == 0 else forward(other_hat, q)

            candidates = torch.cat([scales[k][:, None], grids[k]], dim=1)  # incumbent first: ties keep it
            scores = _score_candidates(op, candidates, candidate_output, output, config)
            if not history:
                history.append(float(scores[:, 0].mean()))
            best = scores.argmin(dim=1)
            rows = torch.arange(op.groups, device=candidates.device)
            scales[k] = candidates[rows, best]
            history.append(float(scores[rows, best].mean()))
            last_step[k] = (scales[1 - k], history[-1])
    return scales, tuple(history)


def subsample_rows(
    max_rows: int | None, a: torch.Tensor, out: torch.Tensor, grad: torch.Tensor | None, matmul: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The same seeded random rows of an operand, the output and its gradient (``max_rows``).

    Linear (``matmul=False``): leading dims are flattened and at most ``max_rows`` rows kept.
    Matmul: ``a`` is ``(..., N, K)``; the same ``max_rows // (leading size)`` rows (at least one) of
    ``N`` are kept under every leading index. ``max_rows=None`` or enough rows: unchanged.
    """
    if max_rows is None:
        return a, out, grad
    if matmul:
        dim, rows = -2, _row_subset(a.shape[-2], max(1, max_rows // a[..., 0, 0].numel()))
    else:
        a, out = a.reshape(-1, a.shape[-1]), out.reshape(-1, out.shape[-1])
        grad = None if grad is None else grad.reshape(-1, grad.shape[-1])
        dim, rows = 0, _row_subset(a.shape[0], max_rows)
    if rows is None:
        return a, out, grad
    rows = rows.to(a.device)
    return a.index_select(dim, rows), out.index_select(dim, rows), None if grad is None else grad.index_select(dim, rows)


def _row_subset(rows: int, keep: int) -> torch.Tensor | None:
    """Sorted indices of ``keep`` of ``rows`` rows drawn without replacement (seed 0); None: all."""
    if keep >= rows:
        return None
    return torch.randperm(rows, generator=torch.Generator().manual_seed(0))[:keep].sort().values


def _grad_weight(grad: torch.Tensor | None, out: torch.Tensor, metric: str) -> torch.Tensor | None:
    """``grad²`` for the hessian metric (validated), None for the others."""
    _check_metric(metric)
    if metric != "hessian":
        return None
    if grad is None:
        raise QuantizationError("the hessian metric needs the output gradient ∂L/∂O")
    check_tensor(grad, "output gradient")
    if grad.shape != out.shape:
        raise QuantizationError(f"output gradient shape {tuple(grad.shape)} != output shape {tuple(out.shape)}")
    if not bool(grad.any()):
        raise QuantizationError(
            "the output gradient is identically zero, so the Hessian objective is degenerate: "
            "the task loss must depend on the layer output (e.g. not KL(FP || FP))"
        )
    return grad.detach().float().square()


def _weight_groups(granularity: str, blocks: int, out_features: int) -> int:
    if granularity == "tensor":
        return 1
    if granularity == "channel":
        return out_features
    if granularity == "block":
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1 or out_features % blocks:
            raise QuantizationError(f"{out_features} output channels do not split into {blocks!r} blocks")
        return blocks
    raise QuantizationError(f"weight_granularity must be one of {WEIGHT_GRANULARITIES}, got {granularity!r}")


__all__ = [
    "HessianSearch",
    "HessianSearchConfig",
    "LinearScales",
    "MatmulScales",
    "METRICS",
    "best_candidate",
    "candidate_scales",
    "initial_scale",
    "objective",
    "output_objective",
    "search_linear",
    "search_matmul",
]
