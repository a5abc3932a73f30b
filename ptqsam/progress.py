"""Progress bars on stderr: every bar ptqsam shows is made by :func:`bar`, so :func:`silenced`
(the CLI's ``--quiet``, for CI logs) turns every one of them off, and under ``torchrun`` only
rank 0 draws them."""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

from tqdm import tqdm

_STATE = {"quiet": False}


@contextlib.contextmanager
def silenced(quiet: bool = True) -> Iterator[None]:
    """While open (with ``quiet``), :func:`bar` draws nothing; the previous setting is restored."""
    before = _STATE["quiet"]
    _STATE["quiet"] = quiet
    try:
        yield
    finally:
        _STATE["quiet"] = before


def bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on stderr, drawn only when ``enabled``, not :func:`silenced` and on rank 0;
    ``options`` go to tqdm."""
    from ptqsam import distributed

    return tqdm(iterable, disable=not enabled or _STATE["quiet"] or not distributed.is_main(), **options)
