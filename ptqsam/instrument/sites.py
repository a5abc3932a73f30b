"""Site: an identity marker module for one quantizable tensor of a model."""

from __future__ import annotations

import torch
from torch import nn

from ptqsam.constants import SITE_KINDS  # noqa: F401 - re-exported (ptqsam.instrument.SITE_KINDS)
from quantizers import Quantizer

#: Kinds whose callers hand over a fresh temporary (the sited attention forwards pass the softmax
#: output straight to the probs site): a quantizer may write its result into it.
HANDED_OVER_KINDS = ("probs",)

#: Suffix of the attribute that holds a site inside its owner module (``qkv.input_site``); the
#: site's name is the attribute path without it (``qkv.input``).
SITE_SUFFIX = "_site"


class Site(nn.Module):
    """Identity on one tensor: ``forward(x, *context) -> x``.

    A quantizer is attached by :func:`ptqsam.instrument.attach`, which sets ``site.quantizer``;
    the site then returns ``quantizer(x, *context)`` (the quantizer's mode decides what that is).
    Context tensors (the attention's ``v`` for a ``probs`` site) are passed as extra arguments and
    never modified. Weight sites always present the weight with output channels on axis 0. Sites
    of the :data:`HANDED_OVER_KINDS` let their quantizer overwrite the input (a temporary of the
    sited forward, e.g. a 12×4096×4096 attention map: no second map is allocated) unless a hook
    watches the site or its quantizer (it would see the input after the fact).

    Arguments:
      kind: one of :data:`SITE_KINDS`.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in SITE_KINDS:
            raise ValueError(f"unknown site kind {kind!r}; choose one of {SITE_KINDS}")  # a programming error
        self.kind = kind
        self.name = ""  # set by instrument(): the owner's module path + the role
        self.handed_over = kind in HANDED_OVER_KINDS

    @property
    def attached(self) -> Quantizer | None:
        """The attached quantizer, or None."""
        return self._modules.get("quantizer")

    def forward(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        quantizer = self.attached
        if quantizer is None:
            return x
        if self.handed_over and not (self._forward_hooks or quantizer._forward_hooks):
            return quantizer(x, *context, overwrite=True)
        return quantizer(x, *context)

    def extra_repr(self) -> str:
        return f"kind={self.kind}"


def add_sites(owner: nn.Module, roles: dict[str, str]) -> None:
    """Register one :class:`Site` per ``role -> kind`` on ``owner`` (as ``<role>_site``)."""
    for role, kind in roles.items():
        owner.add_module(role + SITE_SUFFIX, Site(kind))
