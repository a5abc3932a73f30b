"""Scoring the candidate scales of one operand of a product (the inner loop of the Hessian-guided
search, :mod:`quantizers.search.hessian`).

For a chunk of candidates: the operand fake-quantized at every candidate (one tensor, one fused
pass), one batched product, and one pass over the candidate outputs to score them against the
float output (a fused reduction for the ``hessian`` and ``l2`` metrics; the two-pass textbook form
for ``cosine`` and ``pearson``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from quantizers.errors import QuantizationError
from quantizers.functional.fused import FusedKernel
from quantizers.functional.uniform import fake_quantize_candidates, quant_range

if TYPE_CHECKING:
    from quantizers.search.hessian import HessianSearchConfig


@dataclass(frozen=True)
class Operand:
    """One operand: ``groups`` equal contiguous slices along ``axis``, each with its own scale."""

    tensor: torch.Tensor
    bits: int
    axis: int
    groups: int


@dataclass(frozen=True)
class Output:
    """The float output scored in ``groups`` equal slices along one axis (the layer objective is the
    mean over them). An operand has one scale per output group (each touches only its slice) or
    one scale for all. ``ref`` and ``weight`` are the output reshaped to ``(pre, groups, post)``:
    the axis split in ``groups``, everything before it in ``pre``, the rest of the axis and
    everything after it in ``post`` (build with :meth:`along`). Candidate outputs take the same
    shape, so layers of every rank share the compiled scoring kernels (one graph per pattern of
    size-1 dimensions, which the compiler specialises)."""

    ref: torch.Tensor
    weight: torch.Tensor | None

    @classmethod
    def along(cls, ref: torch.Tensor, weight: torch.Tensor | None, axis: int, groups: int) -> "Output":
        """``ref`` (and ``weight``, the same shape or None) split in ``groups`` along ``axis``."""
        view = grouped_shape(ref.shape, axis, groups)
        return cls(ref.reshape(view), None if weight is None else weight.reshape(view))

    @property
    def groups(self) -> int:
        return self.ref.shape[1]

    def candidates(self, out_hat: torch.Tensor) -> torch.Tensor:
        """Candidate outputs ``(c, *output shape)`` as ``(c, pre, groups, post)``."""
        return out_hat.reshape(out_hat.shape[0], *self.ref.shape)


def grouped_shape(shape: torch.Size, axis: int, groups: int) -> tuple[int, int, int]:
    """``(pre, groups, post)``: ``shape`` with ``axis`` split in ``groups`` equal slices."""
    size = shape[axis]
    if size % groups:
        raise QuantizationError(f"axis {axis} of size {size} does not split into {groups} equal groups")
    pre = math.prod(shape[:axis])
    return pre, groups, math.prod(shape) // (pre * groups)


def by_group(t: torch.Tensor) -> torch.Tensor:
    """``(..., pre, groups, post)`` as ``(..., groups, pre·post)``: each group's elements in one row."""
    return t.transpose(-3, -2).reshape(*t.shape[:-3], t.shape[-2], -1)


def score_candidates(
    op: Operand,
    candidates: torch.Tensor,
    candidate_output: Callable[[torch.Tensor], torch.Tensor],
    output: Output,
    config: HessianSearchConfig,
) -> torch.Tensor:
    """``(op.groups, candidates)`` objective, chunk by chunk: each operand group's own output slice,
    or the mean over all output groups for an operand with one scale. A chunk is the operand
    fake-quantized at every candidate of the chunk (one tensor), one batched product and one pass
    over the candidate outputs to score them (fused for the ``hessian`` and ``l2`` metrics)."""
    # Per candidate: the operand copy and its fake-quantized copy, the output and about two
    # output-sized temporaries of the metric.
    per_candidate = 4 * (2 * op.tensor.numel() + 3 * output.ref.numel())
    chunk = max(1, config.memory_budget // per_candidate)
    scores = []
    for start in range(0, candidates.shape[1], chunk):
        q = quantize_groups(op.tensor, op.axis, op.groups, candidates[:, start : start + chunk], op.bits)
        group_scores = candidate_scores(candidate_output(q), output, config.metric)
        scores.append((group_scores if op.groups == output.groups else group_scores.mean(1, keepdim=True)).T)
    return torch.cat(scores, dim=1)


def candidate_scores(out_hat: torch.Tensor, output: Output, metric: str) -> torch.Tensor:
    """``(c, groups)`` scores of candidate outputs ``(c, *output shape)`` against ``output``."""
    grouped = output.candidates(out_hat)
    weight = () if output.weight is None else (output.weight,)
    if metric in ("hessian", "l2"):
        kernel = _fused_weighted_scores if weight else _fused_scores
        if kernel.wants(grouped):
            return kernel(grouped, output.ref, *weight)
    return group_scores(by_group(grouped), by_group(output.ref), by_group(*weight) if weight else None, metric)


def _squared_errors(out_hat: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Fused kernel: ``(c, groups)`` mean squared error of candidate outputs ``(c, pre, groups,
    post)`` against ``ref`` ``(pre, groups, post)``."""
    return (out_hat - ref).square().mean(dim=(1, 3))


def _weighted_squared_errors(out_hat: torch.Tensor, ref: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Fused kernel: :func:`_squared_errors` with each element weighted (``weight`` like ``ref``)."""
    return ((out_hat - ref).square() * weight).mean(dim=(1, 3))


_fused_scores = FusedKernel(_squared_errors)
_fused_weighted_scores = FusedKernel(_weighted_squared_errors)


def quantize_groups(t: torch.Tensor, axis: int, groups: int, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantize ``t`` once per column of ``scales`` ``(groups, c)``: shape ``(c, *t.shape)``."""
    qmin, qmax = quant_range(bits, signed=True)
    moved = t.movedim(axis, 0)
    q = fake_quantize_candidates(moved.reshape(groups, -1), scales.T, qmin, qmax)
    return q.reshape(scales.shape[1], *moved.shape).movedim(1, axis + 1)


def flat_score(out_hat: torch.Tensor, out: torch.Tensor, grad_sq: torch.Tensor | None, metric: str) -> torch.Tensor:
    """The score of one output over all its elements (one group)."""
    weight = None if grad_sq is None else grad_sq.reshape(-1)
    flat_hat, flat_ref = out_hat.detach().float().reshape(1, -1), out.detach().float().reshape(-1)
    return candidate_scores(flat_hat, Output.along(flat_ref, weight, axis=0, groups=1), metric)[0, 0]


def group_scores(
    out_hat: torch.Tensor, ref: torch.Tensor, grad_sq: torch.Tensor | None, metric: str
) -> torch.Tensor:
    """``(c, groups)`` scores of candidate outputs ``(c, groups, E)`` against ``ref`` ``(groups, E)``."""
    if metric in ("hessian", "l2"):
        err = (out_hat - ref).square()
        return (err if grad_sq is None else err * grad_sq).mean(dim=-1)
    if metric == "pearson":
        out_hat = out_hat - out_hat.mean(dim=-1, keepdim=True)
        ref = ref - ref.mean(dim=-1, keepdim=True)
    dot = (out_hat * ref).sum(dim=-1)
    norms = out_hat.norm(dim=-1) * ref.norm(dim=-1)
    return 1.0 - dot / norms.clamp(min=torch.finfo(torch.float32).tiny)
