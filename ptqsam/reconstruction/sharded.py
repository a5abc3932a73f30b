"""Block reconstruction over several processes (``torchrun``), with the one-process numbers.

Each process captures the unit's cached inputs and targets of its contiguous shard of the
calibration samples only (:func:`~ptqsam.distributed.shard`): the model passes over the samples
and the cache memory are split. Every process draws the same sample indices at each step (the
same seeded generator), and the step is computed by one process, the one holding the first drawn
sample (:class:`SampleShard`); it receives the other drawn samples from their holders (only when
``batch_size > 1``), so the batch, the QDrop masks and the loss are one process's. Its gradients,
its loss and the states of the random generators it drew from are then sent to every process
(:func:`share_step`): each applies the same optimiser step, so the learned parameters stay equal on
every rank and equal to one process, bit for bit, for any batch size, QDrop, the Fisher loss and
the response term (the response items are cached with the samples: the worker gets them too).

The optimisation steps are therefore no faster than in one process: with one image per step (the
reference setting) a step cannot be split without changing its numbers, and splitting a larger
batch over processes would change the QDrop masks (drawn per forward over the whole batch) and the
last bits of the loss. What the processes share is the capture, the memory and the data.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ptqsam import distributed


class SampleShard:
    """Which process holds which of ``count`` calibration samples (contiguous shards in rank order)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.bounds = [distributed.shard_bounds(count, distributed.world_size(), r)
                       for r in range(distributed.world_size())]
        self.start, self.stop = self.bounds[distributed.rank()]

    def holds(self, index: int) -> bool:
        """Whether this process holds sample ``index`` (an index in the whole calibration set)."""
        return self.start <= index < self.stop

    def owner(self, index: int) -> int:
        """The rank holding sample ``index``."""
        return next(r for r, (start, stop) in enumerate(self.bounds) if start <= index < stop)

    def local(self, index: int) -> int:
        """The position of sample ``index`` in this process's shard."""
        return index - self.start


def fetch(shard: SampleShard, indices: Sequence[int], worker: int, item: Any) -> dict[int, Any]:
    """The items of ``indices`` that ``worker`` does not hold, sent from their holders (``item(i)``
    gives a held one); the worker gets them, every other rank an empty dict. Every rank calls it."""
    fetched: dict[int, Any] = {}
    for index in sorted({i for i in indices if shard.owner(i) != worker}):
        owner = shard.owner(index)
        received = distributed.broadcast(item(index) if distributed.rank() == owner else None, owner)
        if distributed.rank() == worker:
            fetched[index] = received
    return fetched


def share_step(params: list[nn.Parameter], losses: Sequence[torch.Tensor] | None, worker: int,
               generators: list[torch.Generator]) -> tuple[float, ...]:
    """After ``worker`` computed a step's ``losses`` (the loss and the terms shown beside it) and
    gradients: every rank gets its gradients (None where the worker's is None), and the states of
    ``generators``; returns the values of ``losses``."""
    values = None if losses is None else tuple(float(loss.detach()) for loss in losses)
    if not distributed.active():
        return values  # type: ignore[return-value]
    mine = distributed.rank() == worker
    meta = distributed.broadcast({"losses": values, "present": [p.grad is not None for p in params],
                                  "generators": [g.get_state() for g in generators]} if mine else None, worker)
    present = [p for p, has in zip(params, meta["present"]) if has]
    for group in _by_device(present):
        flat = torch.cat([p.grad.reshape(-1) for p in group]) if mine else \
            torch.empty(sum(p.numel() for p in group), dtype=group[0].dtype, device=group[0].device)
        distributed.collective(lambda: dist.broadcast(flat, src=worker))
        if not mine:
            for param, grad in zip(group, flat.split([p.numel() for p in group])):
                param.grad = grad.view_as(param).clone()
    if not mine:
        for param, has in zip(params, meta["present"]):
            if not has:
                param.grad = None
        for generator, state in zip(generators, meta["generators"]):
            generator.set_state(state)
    return meta["losses"]


def _by_device(params: list[nn.Parameter]) -> list[list[nn.Parameter]]:
    """``params`` grouped by (device, dtype), in order (one flat tensor per group)."""
    groups: dict[tuple, list[nn.Parameter]] = {}
    for param in params:
        groups.setdefault((param.device, param.dtype), []).append(param)
    return list(groups.values())

