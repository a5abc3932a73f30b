"""Fused elementwise kernels: one read and one write of the tensor, compiled by ``torch.compile``.

A fake-quantization formula written as a chain of torch ops streams the tensor through memory once
per op; compiled by Inductor (C++/OpenMP on CPU, Triton on CUDA) it becomes one loop. Each kernel
also returns the statistics its caller needs to validate the input (the sum, for NaN/Inf), so the
check costs no extra pass, and can write its result into the input (``out=x``) when the caller
hands over a temporary: a fresh output of hundreds of MB costs more in page faults than the
arithmetic.

Kernels compile once per process and device type with dynamic shapes (every scalar is passed as a
tensor, so no value triggers a recompilation); Inductor keeps the compiled code in its on-disk
cache, so later processes load it in seconds. Small tensors (below :func:`min_numel` elements) and
tensors that are not contiguous float32 keep the callers' eager kernels (uniform fake quantization
first brings a tensor that is dense in another layout into memory order, :func:`memory_order`). Where compilation fails
(no C++ compiler, no Triton), the kernel says so once in the log and the eager kernels take over.
``QUANTIZERS_FUSED=0`` in the environment, or :func:`fused_kernels`, turns the fused path off.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

log = logging.getLogger("quantizers")

#: Tensors with fewer elements take the eager kernels (a compiled call costs tens of microseconds).
MIN_NUMEL = 1 << 14

#: Compiled variants allowed per kernel (ranks, sizes of 1, an output aliasing the input... each
#: gets its own graph; torch's default of 8 is shared with nothing else here, but is too few).
RECOMPILE_LIMIT = 64

_settings = {"enabled": os.environ.get("QUANTIZERS_FUSED", "1") != "0", "min_numel": MIN_NUMEL}


def _without_cuda_home_notice(record: logging.LogRecord) -> bool:
    """False for torch's "No CUDA runtime is found, using CUDA_HOME=..." (logged once per process
    when Inductor, compiling a kernel on a machine without a GPU, imports ``torch.utils.cpp_extension``
    and a CUDA build of torch finds a CUDA toolkit): nothing is wrong on a CPU-only run."""
    return not str(record.msg).startswith("No CUDA runtime is found")


logging.getLogger("torch.utils.cpp_extension").addFilter(_without_cuda_home_notice)


@contextmanager
def fused_kernels(enabled: bool = True, min_numel: int = MIN_NUMEL) -> Iterator[None]:
    """Use (or not) the fused kernels while the block runs, from ``min_numel`` elements on."""
    previous = dict(_settings)
    _settings.update(enabled=enabled, min_numel=min_numel)
    try:
        yield
    finally:
        _settings.update(previous)


def min_numel() -> int:
    """Smallest tensor (in elements) that takes the fused kernels now."""
    return _settings["min_numel"]


class FusedKernel:
    """``fn(x, out, *small)`` compiled on first use per device type; :meth:`wants` says whether a
    tensor takes it.

    ``x`` is the tensor the kernel streams, ``out`` where it writes (``x`` itself, or a view of
    it, to overwrite it: that runs a second compiled variant taking ``x`` once, since aliased
    inputs are a fragile corner of the compiler), the others small tensors on its device. Inputs
    are detached: a kernel never carries gradients (callers take it only where none flow). If
    compiling or running the compiled code fails, the failure is logged once, the kernel is turned
    off on that device type and ``fn`` runs eagerly (same values, unfused); the callers' eager
    kernels take over from then on.
    """

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.name = fn.__name__.lstrip("_")
        self._compiled: dict[bool, Callable] = {}
        self._off: set[str] = set()
        self._limit = None  # the recompile-limit patch, made once (building one costs more than the call)

    def wants(self, x: torch.Tensor, passes: int = 1) -> bool:
        """Whether ``x`` takes this kernel (on, large enough, contiguous float32, compilable here);
        ``passes``: how many times the kernel reads ``x`` (its work is ``passes × x.numel()``)."""
        return (
            _settings["enabled"]
            and x.numel() * passes >= _settings["min_numel"]
            and x.dtype == torch.float32
            and x.is_contiguous()
            and x.device.type not in self._off
            and not torch.compiler.is_compiling()
        )

    def __call__(self, x: torch.Tensor, out: torch.Tensor, *small: torch.Tensor):
        device = x.device.type
        if device in self._off:
            return self.fn(x, out, *small)
        in_place = out.data_ptr() == x.data_ptr()
        x, out, small = _plain(x), _plain(out), tuple(_plain(t) for t in small)
        try:
            with self._recompile_limit():
                return self._variant(in_place)(x, *small) if in_place else self._variant(in_place)(x, out, *small)
        except Exception as error:  # noqa: BLE001 - a compiler failure means: run eagerly from now on
            self._off.add(device)
            log.warning("quantizers: fused %s kernel unavailable on %s (%s: %s); using eager kernels",
                        self.name, device, type(error).__name__, str(error).strip().splitlines()[0] if str(error) else "")
            return self.fn(x, out, *small)

    def _recompile_limit(self):
        if self._limit is None:
            self._limit = torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)
        return self._limit

    def _variant(self, in_place: bool) -> Callable:
        if in_place not in self._compiled:
            fn = _overwriting(self.fn) if in_place else self.fn
            self._compiled[in_place] = torch.compile(fn, dynamic=True, fullgraph=True)
        return self._compiled[in_place]


def memory_order(x: torch.Tensor) -> tuple[int, ...] | None:
    """The permutation ``p`` for which ``x.permute(p)`` is contiguous, when ``x`` is dense in some
    layout (a transposed or permuted view of a contiguous tensor, a channels-last activation); None
    when ``x`` has gaps or overlaps. An elementwise kernel can then run on ``x.permute(p)`` and
    give its result back as ``out.permute(inverse)``, in ``x``'s own layout, without a copy."""
    order = tuple(sorted(range(x.dim()), key=lambda d: -x.stride(d)))
    return order if x.permute(order).is_contiguous() else None


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A detached alias of ``t`` that is not a view, with the strides of a fresh tensor where ``t``
    is contiguous: compiled code guards on a view's base and on the strides of dimensions of size 1
    (which torch leaves arbitrary), so without this each caller's layout costs a recompilation."""
    if not (type(t) is torch.Tensor and t._base is None and not t.requires_grad):
        t = t.detach()
    if t.is_contiguous() and t.stride() != _contiguous_strides(t.shape):
        t = t.as_strided(t.shape, _contiguous_strides(t.shape)).detach()
    return t


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]
    return tuple(strides)


def _overwriting(fn: Callable) -> Callable:
    """``fn(x, out, *small)`` as ``kernel(x, *small)`` writing into ``x``."""
    def kernel(x: torch.Tensor, *small: torch.Tensor):
        return fn(x, x, *small)
    return kernel


_constants: dict[tuple, torch.Tensor] = {}


def constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A float32 tensor of ``values`` on ``device``, made once (scalars reach kernels as tensors)."""
    key = (values, str(device))
    found = _constants.get(key)
    if found is None:
        found = _constants[key] = torch.tensor(values, dtype=torch.float32, device=device)
    return found
