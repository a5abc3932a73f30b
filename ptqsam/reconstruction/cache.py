"""What one reconstruction unit sees over the calibration set: its inputs from the quantized prefix
and from the float model, the float outputs (targets) and, for the Fisher loss, their gradients.

Each is captured by running the model over the samples with a hook on the unit; a pass that only
needs the unit's inputs or outputs stops the forward there (the rest of the model never runs).
Only one unit's data is held at a time, in memory up to a byte budget and on disk beyond it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptqsam.errors import CalibrationError
from ptqsam.instrument.hooks import forward_hooks
from ptqsam.io import write_atomic
from ptqsam.passes import SampleLoop, StopForward, each_sample, task_loss
from ptqsam.trees import tree_map, tree_tensors


class TensorCache:
    """Per-sample items (nested tensors) in memory up to ``budget`` bytes, the rest on disk.

    Arguments:
      budget: bytes kept in memory.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._items: list[Any] = []
        self._spill: tempfile.TemporaryDirectory | None = None

    def append(self, item: Any) -> None:
        item = tree_map(lambda t: t.detach().cpu(), item)
        size = sum(t.numel() * t.element_size() for t in tree_tensors(item))
        if self.used + size <= self.budget:
            self.used += size
            self._items.append(item)
            return
        if self._spill is None:
            self._spill = tempfile.TemporaryDirectory(prefix="ptqsam-recon-")
        path = Path(self._spill.name) / f"{len(self._items)}.pt"
        write_atomic(path, lambda f: torch.save(item, f), mode="wb")
        self._items.append(path)

    def __getitem__(self, index: int) -> Any:
        item = self._items[index]
        return torch.load(item, weights_only=True) if isinstance(item, Path) else item

    def __len__(self) -> int:
        return len(self._items)

    @property
    def spilled(self) -> int:
        """How many items live on disk."""
        return sum(isinstance(item, Path) for item in self._items)

    def close(self) -> None:
        """Forget the items and delete the spill folder."""
        self._items.clear()
        if self._spill is not None:
            self._spill.cleanup()
            self._spill = None


def capture_inputs(loop: SampleLoop, unit: nn.Module, budget: int) -> TensorCache:
    """The call ``(args, kwargs)`` the unit receives for each sample, in the model's current modes;
    each forward stops at the unit."""
    cache = TensorCache(budget)

    def keep(module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache.append((args, kwargs))
        raise StopForward

    with forward_hooks([(unit, keep)], pre=True, with_kwargs=True), torch.no_grad():
        each_sample(loop, lambda sample: loop.decode(loop.embed(sample), sample))
    _check_count(cache, loop, "inputs")
    return cache


def capture_outputs(loop: SampleLoop, unit: nn.Module, budget: int, with_grad: bool) -> tuple[TensorCache, TensorCache | None]:
    """The unit's output for each sample, in the model's current modes, and with ``with_grad`` the
    gradient of the task loss (:func:`ptqsam.calibration.hessian.task_loss`) at that output."""
    outputs, grads = TensorCache(budget), TensorCache(budget) if with_grad else None
    leaves: list[Any] = []

    def keep(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        outputs.append(output)
        if not with_grad:
            raise StopForward
        leaf = tree_map(lambda t: t.detach().requires_grad_(True), output)
        leaves.append(leaf)
        return leaf

    def run(sample) -> None:
        leaves.clear()
        with torch.enable_grad():
            low_res = loop.decode(loop.embed(sample), sample).low_res_logits
            tensors = tree_tensors(leaves[0])
            grads.append(tuple(torch.autograd.grad(task_loss(low_res), tensors, allow_unused=True)))

    with forward_hooks([(unit, keep)], with_kwargs=True):
        if with_grad:
            each_sample(loop, run)
        else:
            with torch.no_grad():
                each_sample(loop, lambda sample: loop.decode(loop.embed(sample), sample))
    _check_count(outputs, loop, "outputs")
    return outputs, grads


def _check_count(cache: TensorCache, loop: SampleLoop, what: str) -> None:
    if len(cache) != len(loop.samples):
        raise CalibrationError(f"captured {what} of {len(cache)} calls over {len(loop.samples)} samples: "
                               "a reconstruction unit must run exactly once per sample")
