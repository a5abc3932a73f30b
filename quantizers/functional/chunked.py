"""Chunked elementwise evaluation: run a chain of tensor ops inside the CPU cache.

A chain of k elementwise ops over a large tensor (a 12×4096×4096 attention map is 805 MB) streams
it through memory k times. Running the chain on chunks of :data:`SERIAL_CHUNK` elements keeps every
temporary in cache and writes each result once into a preallocated output.

The chunk is just below ATen's parallel grain size (32768 elements), so each op runs on the calling
thread. Ops that open an OpenMP region per call on small inputs (``torch.log2``, ``torch.round``,
``torch.floor``, ``torch.dot``: they parallelise from ~2k elements) must not be used in a chunk
kernel: on a shared machine a parallel region per small op waits for its slowest thread (measured
5 to 100 times slower under load).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

#: Elements per chunk on CPU: a multiple of 16 below ATen's GRAIN_SIZE (32768).
SERIAL_CHUNK = 32752

#: Adding then subtracting 1.5·2^23 rounds a float32 to the nearest integer, ties to even (the
#: rounding of ``torch.round``/``std::nearbyint``), exactly, for |v| <= 2^22.
ROUND_MAGIC = 12582912.0

#: ``kernel(chunk, out)`` writes the result for a 1-D input chunk into the same-length ``out``.
ChunkKernel = Callable[[torch.Tensor, torch.Tensor], None]


def iter_chunks(x: torch.Tensor) -> Iterator[torch.Tensor]:
    """1-D slices of ``x`` (flattened) in order: :data:`SERIAL_CHUNK` elements on CPU, one slice
    on other devices (their kernels are fused launches, not cache-bound loops)."""
    flat = x.reshape(-1)
    step = SERIAL_CHUNK if x.device.type == "cpu" else max(flat.numel(), 1)
    for start in range(0, flat.numel(), step):
        yield flat[start : start + step]


def map_chunks(x: torch.Tensor, kernel: ChunkKernel, out_dtype: torch.dtype) -> torch.Tensor:
    """Apply ``kernel`` chunk by chunk; returns a new tensor of ``x``'s shape and ``out_dtype``."""
    out = torch.empty(x.numel(), dtype=out_dtype, device=x.device)
    start = 0
    for chunk in iter_chunks(x):
        kernel(chunk, out[start : start + chunk.numel()])
        start += chunk.numel()
    return out.view(x.shape)


def fake_quantize_chunks(x: torch.Tensor, kernel: ChunkKernel) -> torch.Tensor:
    """Fake-quantize with a float32 ``kernel``: ``x``'s dtype is kept (computed in float32) and
    gradients pass straight through (identity), as no chunk op is recorded by autograd."""
    x32 = x.detach().to(torch.float32)
    return straight_through(x, map_chunks(x32, kernel, torch.float32).to(x.dtype))


def straight_through(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """``x_hat`` (computed without autograd), with the gradient passed to ``x`` unchanged."""
    return _StraightThrough.apply(x, x_hat) if x.requires_grad else x_hat


class _StraightThrough(torch.autograd.Function):
    """Forward returns ``x_hat`` bit for bit; backward passes the gradient to ``x`` unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x_hat.view_as(x_hat)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad, None
