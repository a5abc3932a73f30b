"""A parameter's fake-quantized value, reused while nothing it depends on changes.

A weight is the same tensor at every forward; fake-quantizing it once per forward re-reads every
weight of the model. :class:`ParameterCache` keeps the last result of one quantizer for one
parameter (or a view of one, e.g. a transposed ConvTranspose2d weight) and returns it while the key
is unchanged. The key holds:

- the parameter, weakly, and its version counter, which every in-place change bumps (optimizer
  steps, ``load_state_dict``, ``mul_`` under ``no_grad``); with the view's data pointer, shape,
  strides, offset, dtype and device (``module.to(...)`` swaps the data). The key holds the
  parameter's storage, so the memory a swap frees cannot be reused for the new data at the same
  address (which would look unchanged); after ``module.to(...)`` the old copy is kept until the
  next quantized call or :meth:`clear`, as the cached value already is;
- every tensor of the quantizer (qparams, the state of its parts) and every submodule, by identity
  and version: re-assigning a buffer, ``set_qparams``, ``finalize`` or swapping a part invalidates.
  The key holds them strongly, so a new tensor can never take an old one's identity. Inference
  tensors (made in ``torch.inference_mode``, e.g. observer statistics) have no version counter:
  the key holds a copy of their values instead.

A change made through ``param.data`` is not seen by version counters (torch documents ``.data`` as
untracked): after one, call :meth:`clear`. Values are cached only while gradients are off (no_grad
or inference mode), so a cached tensor is never part of an autograd graph.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, TypeVar

import torch
from torch import nn


class ParameterCache:
    """One cached ``(key, value)``; see the module docstring."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: torch.Tensor | None = None

    @staticmethod
    def applies(x: torch.Tensor) -> bool:
        """Whether ``x`` can be cached: a parameter (or a view of one), with gradients off."""
        if torch.is_grad_enabled() or not is_parameter(x):
            return False
        return not (x._base if x._base is not None else x).is_inference()

    def get(self, x: torch.Tensor, owner: nn.Module) -> torch.Tensor | None:
        """The cached value for ``x`` under ``owner``'s current state, or None."""
        if self._key is None or not _same(self._key, _key(x, owner)):
            return None
        return self._value

    def put(self, x: torch.Tensor, owner: nn.Module, value: torch.Tensor) -> None:
        """Remember ``value`` as the result for ``x`` under ``owner``'s current state."""
        self._key, self._value = _key(x, owner), value

    def clear(self) -> None:
        """Forget the cached value."""
        self._key = self._value = None

    def __deepcopy__(self, memo: dict) -> "ParameterCache":
        return ParameterCache()  # a copy of the quantizer quantizes its own parameters

    def __getstate__(self) -> dict[str, Any]:
        return {"_key": None, "_value": None}


T = TypeVar("T")


class DerivedCache:
    """A value derived from some tensors (a check of qparam values, a grid built from them, a flag
    read off the device), reused while those tensors are unchanged: the same tensors (held, so no
    other tensor can take their identity), version counters (bumped by every in-place change) and
    data pointers (a ``.data`` swap; their storages are held too, so a swap's new data cannot reuse
    the old address), with the same ``extra`` key. Reuse spares a device-to-host read per call.
    Sources that are inference tensors have no version counter: derived at every call.
    Like :class:`ParameterCache`, a write into the same memory that torch does not track (through
    ``.numpy()``) is not seen."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: Any = None

    def get(self, sources: tuple[torch.Tensor, ...], derive: Callable[[], T], extra: tuple = ()) -> T:
        """``derive()``'s result for these sources: the one remembered, or made now (and remembered
        when it succeeds)."""
        key = _sources_key(sources, extra)
        if key is None or self._key is None or key[1] != self._key[1] or not same_tensors(key[0], self._key[0]):
            self._value = derive()
            self._key = key
        return self._value

    def __deepcopy__(self, memo: dict) -> "DerivedCache":
        return DerivedCache()

    def __getstate__(self) -> dict[str, Any]:
        return {"_key": None, "_value": None}


def _sources_key(sources: tuple[torch.Tensor, ...], extra: tuple) -> tuple | None:
    """``(tensors with their stamps, extra, held storages)``; the storages are held, not compared."""
    if any(t.is_inference() for t in sources):
        return None
    return tuple((t, t._version, t.data_ptr()) for t in sources), extra, [t.untyped_storage() for t in sources]


def is_parameter(x: torch.Tensor) -> bool:
    """Whether ``x`` is an ``nn.Parameter`` or a view of one."""
    return isinstance(x._base if x._base is not None else x, nn.Parameter)


def _key(x: torch.Tensor, owner: nn.Module) -> tuple:
    base = x._base if x._base is not None else x
    geometry = (x.data_ptr(), tuple(x.shape), x.stride(), x.storage_offset(), x.dtype, x.device)
    modules = tuple(owner.modules())  # one walk of the submodules (owner first)
    state = tuple((t, _stamp(t)) for m in modules for tensors in (m._buffers, m._parameters)
                  for t in tensors.values() if t is not None)
    return weakref.ref(base), base._version, geometry, state, modules[1:], base.untyped_storage()


def _same(old: tuple, new: tuple) -> bool:
    (old_ref, old_version, old_geometry, old_state, old_modules, _) = old  # the held storage is not compared
    (new_ref, new_version, new_geometry, new_state, new_modules, _) = new
    return (
        old_ref() is not None
        and old_ref() is new_ref()
        and old_version == new_version
        and old_geometry == new_geometry
        and same_tensors(old_state, new_state)
        and len(old_modules) == len(new_modules)
        and all(a is b for a, b in zip(old_modules, new_modules))
    )


def same_tensors(old: tuple, new: tuple) -> bool:
    """Whether two tuples of ``(tensor, stamp, *more)`` entries hold the same tensors (by identity)
    with the same stamps (:func:`_stamp`, or a version counter) and equal ``more``."""
    return len(old) == len(new) and all(
        a[0] is b[0] and _same_stamp(a[1], b[1]) and a[2:] == b[2:] for a, b in zip(old, new))


def _stamp(t: torch.Tensor) -> int | torch.Tensor:
    """The version of ``t``, or a copy of its values when it has no version counter."""
    return t.detach().clone() if t.is_inference() else t._version


def _same_stamp(old: int | torch.Tensor, new: int | torch.Tensor) -> bool:
    if isinstance(old, int) or isinstance(new, int):
        return old == new
    return torch.equal(old, new)
