"""Nested tuples / lists / dicts of tensors (a block's inputs, a quantizer's summaries, what
processes send each other): map over their tensors, list them."""

from __future__ import annotations

from typing import Any, Callable

import torch


def tree_map(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    """``fn`` applied to every tensor of nested tuples / lists / dicts (other leaves unchanged)."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(fn, item) for item in tree)
    if isinstance(tree, dict):
        return {key: tree_map(fn, value) for key, value in tree.items()}
    return tree


def tree_tensors(tree: Any) -> list[torch.Tensor]:
    """The tensors of a nested structure, in order."""
    found: list[torch.Tensor] = []
    tree_map(found.append, tree)
    return found
