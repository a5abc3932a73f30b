"""Temporary forward hooks, owned by one context manager: added on entry, removed on exit, always."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from torch import nn

#: ``hook(module, args, output)`` as torch calls a forward hook.
ForwardHook = Callable[[nn.Module, tuple, Any], Any]


@contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, ForwardHook]]) -> Iterator[None]:
    """Register ``hook`` on ``module`` for each pair while the block runs; every hook is removed
    when the block ends, also on errors (the only way ptqsam adds temporary hooks)."""
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
