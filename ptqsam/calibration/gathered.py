"""Calibration statistics of several processes, folded as one process would fold them.

Under ``torchrun`` each process observes its contiguous shard of the calibration samples
(:func:`~ptqsam.distributed.shard`). Every quantizer kind that :meth:`~quantizers.modules.base.
Quantizer.splits` its observation (MinMax, averaged MinMax, EMA MinMax, MSE, the log quantizer's
AGQ per-τ sums, the twin quantizers' candidate errors) records one small summary per observed batch
instead of folding it (:func:`deferred`); :func:`fold` gathers every process's summaries and folds
them on every rank in the global sample order, so the state is the one-process state bit for bit —
order-dependent statistics such as the EMA included, and float sums in the same order.

Histogram observers (percentile, KL) cannot summarize a batch apart from the range seen so far:
each process observes its shard, then the histograms are moved to the widest range and summed
(:meth:`~quantizers.observers.histogram.HistogramObserver.merge`). Their ranges are powers of two,
so the move adds whole bins and the merged counts are the one-process counts bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Mapping

import torch

from ptqsam import distributed
from ptqsam.errors import DistributedError
from ptqsam.trees import tree_map
from quantizers.errors import QuantizationError
from quantizers.modules.base import Quantizer


@contextlib.contextmanager
def deferred(quantizers: Mapping[str, Quantizer]) -> Iterator[None]:
    """While inside, the quantizers that split record summaries instead of folding them (in one
    process nothing changes)."""
    splitting = [q for q in quantizers.values() if q.splits()] if distributed.active() else []
    for quantizer in splitting:
        quantizer.deferred = []
    try:
        yield
    finally:
        for quantizer in splitting:
            quantizer.deferred = None


def fold(quantizers: Mapping[str, Quantizer], summaries: Mapping[str, list], device: torch.device) -> None:
    """After a pass under :func:`deferred`: every quantizer ends with the state of one process that
    observed every shard in order (no-op in one process)."""
    if not distributed.active():
        return
    mine = {"summaries": {name: list(batch) for name, batch in summaries.items()},
            "states": {name: q.state_dict() for name, q in quantizers.items() if not q.splits()}}
    parts = distributed.all_gather_parts([mine])
    with torch.inference_mode():  # the state was made in inference mode (the passes run in it)
        _fold_parts(quantizers, summaries, parts, device)


def _fold_parts(quantizers: Mapping[str, Quantizer], summaries: Mapping[str, list], parts: list[dict],
                device: torch.device) -> None:
    for name in summaries:
        quantizer = quantizers[name]
        for part in parts:
            for summary in part["summaries"][name]:
                quantizer.absorb(tree_map(lambda t: t.to(device), summary))
    for name, quantizer in quantizers.items():
        if not quantizer.splits():
            _merge(name, quantizer, [part["states"][name] for part in parts])


def take_summaries(quantizers: Mapping[str, Quantizer]) -> dict[str, list]:
    """The summaries each splitting quantizer recorded under :func:`deferred` (in order)."""
    return {name: list(q.deferred) for name, q in quantizers.items() if q.deferred is not None}


def _merge(name: str, quantizer: Quantizer, states: list[dict[str, torch.Tensor]]) -> None:
    """The quantizer becomes rank 0's state merged with the others' in rank order (so every rank
    holds the same result)."""
    copies = []
    for state in states:
        part = copy.deepcopy(quantizer)
        part.load_state_dict(state)
        copies.append(part)
    quantizer.load_state_dict(copies[0].state_dict())
    try:
        quantizer.merge(copies[1:])
    except QuantizationError as error:
        raise DistributedError(f"{name}: {error}; calibrate it in one process (without torchrun)") from error
