"""Groups of sites that sensitivity analysis and bit allocation treat as one.

Three granularities, all read from the structure the model declares (never from name patterns):
``site`` (each site alone), ``unit`` (each product of :func:`~ptqsam.instrument.model_units`: a
layer's weight and input, an attention's query/key or probs/value pair, the decoder's final matmul)
and ``block`` (each block of :func:`~ptqsam.models.blocks.model_blocks`; sites outside every block,
e.g. the IoU head, are grouped by product). A group's sites split into its weights and its
activations, which a mixed-precision recipe gives separate bit-widths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from torch import nn

from ptqsam.errors import AnalysisError
from ptqsam.instrument import attached_quantizers, model_units, sites
from ptqsam.models.blocks import block_of, model_blocks

GRANULARITIES = ("site", "unit", "block")
#: Which sites of a group a measurement quantizes: all of them, its weights, or its activations.
ROLES = ("all", "weight", "activation")


@dataclass(frozen=True)
class Group:
    """Sites quantized (or kept float) together.

    Arguments:
      name: the site, unit or block name.
      weights: its weight sites, in model order.
      activations: its other sites (inputs, attention operands), in model order.
      block: the block that holds it, or None (outside every block).
    """

    name: str
    weights: tuple[str, ...]
    activations: tuple[str, ...]
    block: str | None = None

    @property
    def sites(self) -> tuple[str, ...]:
        return self.weights + self.activations

    def role_sites(self, role: str) -> tuple[str, ...]:
        """The sites of ``role`` (one of :data:`ROLES`)."""
        if role not in ROLES:
            raise AnalysisError(f"role must be one of {ROLES}, got {role!r}")
        return {"all": self.sites, "weight": self.weights, "activation": self.activations}[role]

    def to_dict(self) -> dict:
        return {"name": self.name, "weights": list(self.weights), "activations": list(self.activations),
                "block": self.block}

    @classmethod
    def from_dict(cls, data: dict) -> "Group":
        return cls(data["name"], tuple(data["weights"]), tuple(data["activations"]), data.get("block"))


def model_groups(model: nn.Module, granularity: str = "unit", site_names: Iterable[str] | None = None) -> list[Group]:
    """The groups of ``site_names`` (default: every site carrying a quantizer) at ``granularity``,
    in model order; a group holds only sites of ``site_names`` and groups left empty are dropped."""
    if granularity not in GRANULARITIES:
        raise AnalysisError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    model_sites = sites(model)
    chosen = list(attached_quantizers(model) if site_names is None else dict.fromkeys(site_names))
    unknown = [name for name in chosen if name not in model_sites]
    if unknown:
        raise AnalysisError(f"no site named {unknown[:5]}")
    owner = _unit_of(model) if granularity != "site" else {}
    blocks = model_blocks(model)
    order = {name: i for i, name in enumerate(model_sites)}
    members: dict[str, list[str]] = {}
    for name in sorted(chosen, key=order.__getitem__):
        block = block_of(blocks, name)
        key = block.name if granularity == "block" and block is not None else owner.get(name, name)
        members.setdefault(key, []).append(name)
    groups = []
    for key, names in members.items():
        weights = tuple(n for n in names if model_sites[n].kind == "weight")
        activations = tuple(n for n in names if model_sites[n].kind != "weight")
        block = block_of(blocks, names[0])
        groups.append(Group(key, weights, activations, None if block is None else block.name))
    return groups


def _unit_of(model: nn.Module) -> dict[str, str]:
    """site -> the name of the product it is an operand of (sites of no product are absent)."""
    owner: dict[str, str] = {}
    for unit in model_units(model):
        for site in (unit.a, unit.b):
            owner.setdefault(site, unit.name)
    return owner

