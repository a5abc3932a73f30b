"""Temporary forward hooks, owned by one context manager: added on entry, removed on exit, always."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from torch import nn

#: ``hook(module, args, output)`` as torch calls a forward hook (``(module, args, kwargs, output)``
#: with ``with_kwargs``; ``(module, args[, kwargs])`` for a pre-hook).
ForwardHook = Callable[..., Any]


@contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, ForwardHook]], pre: bool = False,
                  with_kwargs: bool = False) -> Iterator[None]:
    """Register ``hook`` on ``module`` for each pair while the block runs; every hook is removed
    when the block ends, also on errors (the only way ptqsam adds temporary hooks).

    Arguments:
      hooks: ``(module, hook)`` pairs.
      pre: forward pre-hooks (called with the inputs, before the forward) instead of forward hooks.
      with_kwargs: the hooks also receive the keyword arguments of the call.
    """
    handles = []
    register = "register_forward_pre_hook" if pre else "register_forward_hook"
    try:
        for module, hook in hooks:
            handles.append(getattr(module, register)(hook, with_kwargs=with_kwargs))
        yield
    finally:
        for handle in handles:
            handle.remove()
