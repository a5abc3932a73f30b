"""torch.distributed for ptqsam: the process group of a ``torchrun`` launch, sharding and gathering.

Without ``torchrun`` (no ``WORLD_SIZE > 1`` in the environment) everything here is a no-op over
one process. Under ``torchrun`` :func:`process_group` joins the group (NCCL for CUDA tensors and
gloo for CPU tensors on a machine with GPUs, each rank on the GPU ``LOCAL_RANK``; gloo alone on
CPU) and leaves it on exit.

Work is split by :func:`shard`: contiguous slices of the ordered list, sizes differing by at most
one, the first ranks taking the extra items — no padding, no duplicates, every item exactly once
(unlike a ``DistributedSampler``, which pads the list to a multiple of the world size). Because
the slices are contiguous and in rank order, concatenating the ranks' parts in rank order
(:func:`gather_parts`, :func:`all_gather_parts`) restores the one-process order, so results
folded in that order are bit-identical to one process.

A rank that fails or dies makes every other rank's next collective fail: that failure becomes one
:class:`~ptqsam.errors.DistributedError` line naming the rank (and ``torchrun`` ends the other
ranks), never a hang until the timeout.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from ptqsam.errors import DistributedError
from ptqsam.trees import tree_map

T = TypeVar("T")
#: how long a collective waits for the other ranks (env ``PTQSAM_DIST_TIMEOUT``, seconds); a rank
#: that died is detected at once by gloo / NCCL, the timeout only bounds a rank that hangs
DEFAULT_TIMEOUT_S = 1800


def launched() -> bool:
    """True when ``torchrun`` (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """True on rank 0, the only rank that writes files and prints results."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK``, 0 without ``torchrun``)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


@contextlib.contextmanager
def process_group(timeout_s: float | None = None) -> Iterator[None]:
    """Join the ``torchrun`` process group for the duration (nothing to do without ``torchrun``, or
    when a group exists already); on a machine with CUDA, this rank's GPU becomes ``LOCAL_RANK``."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield
        return
    timeout = timeout_s if timeout_s is not None else float(os.environ.get("PTQSAM_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    backend = "gloo"
    if torch.cuda.is_available():
        if local_rank() >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK {local_rank()} but this node has {torch.cuda.device_count()} GPU(s): "
                                   "start at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as error:
        raise DistributedError(f"cannot join the torchrun process group ({backend}): {error}") from error
    try:
        yield
        collective(dist.barrier)  # gloo aborts a rank that tears its group down while a peer still talks to it
    finally:
        dist.destroy_process_group()


def shard_bounds(count: int, size: int | None = None, index: int | None = None) -> tuple[int, int]:
    """``(start, stop)`` of rank ``index``'s contiguous slice of ``count`` items over ``size`` ranks
    (default: this process in its group)."""
    size = world_size() if size is None else size
    index = rank() if index is None else index
    base, extra = divmod(count, size)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def shard(items: Sequence[T]) -> list[T]:
    """This rank's contiguous slice of ``items`` (all of them in one process)."""
    start, stop = shard_bounds(len(items))
    return list(items[start:stop])


def collective(work: Callable[[], T]) -> T:
    """Run one collective; a peer that failed or died becomes one clear DistributedError."""
    try:
        return work()
    except (RuntimeError, ValueError, EOFError, ConnectionError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DistributedError(f"rank {rank()} of {world_size()}: another process failed or was killed "
                               f"(see its message; nothing half-written is kept): {first}") from error


def all_gather_parts(part: list[T]) -> list[T]:
    """Every rank's ``part`` concatenated in rank order, on every rank (``part`` in one process)."""
    if not active():
        return list(part)
    parts: list[Any] = [None] * world_size()
    collective(lambda: dist.all_gather_object(parts, _portable(list(part))))
    return [item for p in parts for item in p]


def gather_parts(part: list[T]) -> list[T] | None:
    """Every rank's ``part`` concatenated in rank order on rank 0; None on the other ranks."""
    if not active():
        return list(part)
    parts: list[Any] | None = [None] * world_size() if is_main() else None
    collective(lambda: dist.gather_object(_portable(list(part)), parts, dst=0))
    return None if parts is None else [item for p in parts for item in p]


def broadcast(value: T | None, source: int = 0) -> T:
    """Rank ``source``'s ``value`` on every rank (the others pass anything, e.g. None)."""
    if not active():
        return value  # type: ignore[return-value]
    box = [_portable(value)]
    collective(lambda: dist.broadcast_object_list(box, src=source))
    return value if rank() == source else box[0]  # type: ignore[return-value]


def _portable(value: T) -> T:
    """``value`` with the tensors of its tuples / lists / dicts on the CPU, for the object collectives:
    a pickled CUDA tensor is unpickled on its sender's GPU, where the receiver's tensors are not.
    Receivers move what they use to their own device."""
    return tree_map(lambda t: t.cpu(), value)


def in_rank_order(state: T, work: Callable[[T], T]) -> T:
    """``work(state)`` on rank 0, its result continued by ``work`` on rank 1, and so on; the last
    rank's result on every rank. For an order-dependent fold (a random generator drawn from call
    after call) this is exactly one process's fold, at the price of running the ranks one after
    the other."""
    for source in range(world_size()):
        if rank() == source:
            state = work(state)
        state = broadcast(state, source)
    return state


def barrier() -> None:
    """Wait for every rank."""
    if active():
        collective(dist.barrier)


def main_first(work: Callable[[], T]) -> T:
    """``work()`` on rank 0, its result broadcast to every rank (e.g. a decision that reads files
    only rank 0 writes). An error on rank 0 is raised there and ends the others with a
    DistributedError."""
    if not active():
        return work()
    return broadcast(work() if is_main() else None)
