"""What a bit assignment costs: average weight and activation bits, model size, bit-operations.

Counted from the structure the model declares and the site shapes of one probe forward
(:func:`~ptqsam.instrument.site_inventory`: one image at the model's input size, one box prompt).
A site without bits in an assignment is float: 32 bits.

- ``weight_bits``: Σ numel·bits / Σ numel over the weight sites of the *domain* (the sites the
  base recipe quantizes), i.e. the parameter-weighted average bit-width of the quantized weights.
- ``activation_bits``: the same over the domain's activation sites, each weighted by the number
  of elements it sees in the probe forward.
- ``size_mb``: every parameter at its bits (weights at their site's bits; biases, norms,
  embeddings and float weights at 32), in MB of 10^6 bytes.
- ``gbops``: bit-operations in units of 10^9, Σ over the products (:func:`~ptqsam.instrument.
  model_units`) of MACs × bits(operand a) × bits(operand b) — BOPs = MACs × w_bits × a_bits for a
  layer, MACs × a_bits² for an attention matmul. MACs: linear numel(input)·out_features; conv2d
  numel(output)·(in/groups)·kh·kw; conv_transpose2d numel(input)·(out/groups)·kh·kw; matmul
  batch·M·K·N. Elementwise work, norms and softmax are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ptqsam.errors import AnalysisError
from ptqsam.instrument import model_units, site_inventory
from ptqsam.instrument.instrument import unused_parameters
from ptqsam.instrument.units import Unit

FLOAT_BITS = 32
#: Cost kinds, each a key of :meth:`ModelCosts.of`.
COST_KINDS = ("weight_bits", "activation_bits", "size_mb", "gbops")


@dataclass(frozen=True)
class ProductCost:
    """One product: its operand sites and its multiply-accumulates."""

    name: str
    a: str
    b: str
    macs: int


@dataclass(frozen=True)
class ModelCosts:
    """Sizes of a model's sites and products, and the domain averages are taken over.

    Arguments:
      weights: weight site -> parameters (every weight site of the model).
      activations: activation site -> elements seen in the probe forward (every non-output site).
      products: every product with its MACs.
      other_parameters: parameters on no weight site (biases, norms, embeddings), always 32 bits;
        parameters the forward never uses (TinyViT's classification head) are not counted.
      domain: the sites the base recipe quantizes (averages are over these).
    """

    weights: Mapping[str, int]
    activations: Mapping[str, int]
    products: tuple[ProductCost, ...]
    other_parameters: int
    domain: frozenset[str]

    def of(self, bits_by_site: Mapping[str, int]) -> dict[str, float]:
        """Every cost kind of an assignment (sites absent from it are float)."""
        outside = [name for name in bits_by_site if name not in self.domain]
        if outside:
            raise AnalysisError(f"bits given for site(s) the recipe does not quantize: {outside[:5]}")

        def bits(name: str) -> int:
            return bits_by_site.get(name, FLOAT_BITS)

        weight_bits = sum(numel * bits(n) for n, numel in self.weights.items()) + FLOAT_BITS * self.other_parameters
        return {
            "weight_bits": _average(self.weights, self.domain, bits),
            "activation_bits": _average(self.activations, self.domain, bits),
            "size_mb": weight_bits / 8 / 1e6,
            "gbops": sum(p.macs * bits(p.a) * bits(p.b) for p in self.products) / 1e9,
        }

    def unit(self, kind: str) -> float:
        """What one unit of ``kind`` is in integer counts (element·bits, bits or BOPs): a change
        of an assignment changes ``kind`` by a whole multiple of ``1 / unit(kind)``."""
        sizes = {"weight_bits": self.weights, "activation_bits": self.activations}.get(kind)
        if sizes is not None:
            return float(sum(numel for name, numel in sizes.items() if name in self.domain))
        return {"size_mb": 8e6, "gbops": 1e9}[kind]

    def uniform(self, w_bits: int, a_bits: int) -> dict[str, float]:
        """The costs of every domain weight at ``w_bits`` and every domain activation at ``a_bits``."""
        return self.of({n: w_bits if n in self.weights else a_bits for n in self.domain})


def _average(sizes: Mapping[str, int], domain: frozenset[str], bits) -> float:
    inside = {n: numel for n, numel in sizes.items() if n in domain}
    total = sum(inside.values())
    return sum(numel * bits(n) for n, numel in inside.items()) / total if total else float("nan")


def model_costs(model: nn.Module, domain: Iterable[str]) -> ModelCosts:
    """The :class:`ModelCosts` of ``model`` (instrumented) with averages over ``domain``."""
    rows = site_inventory(model)
    shapes = {row.name: row.shape for row in rows}
    missing = [row.name for row in rows if row.shape is None and row.kind != "output"]
    if missing:
        raise AnalysisError(f"the probe forward does not reach site(s) {missing[:5]}: their cost is unknown")
    weights = {row.name: math.prod(row.shape) for row in rows if row.kind == "weight"}
    activations = {row.name: math.prod(row.shape) for row in rows if row.kind not in ("weight", "output")}
    domain = frozenset(domain)
    unknown = sorted(domain - set(weights) - set(activations))
    if unknown:
        raise AnalysisError(f"no weight or activation site named {unknown[:5]}")
    products = tuple(ProductCost(u.name, u.a, u.b, unit_macs(model, u, shapes)) for u in model_units(model))
    others = sum(p.numel() for p in model.parameters()) - sum(weights.values()) - unused_parameters(model)
    return ModelCosts(weights, activations, products, others, domain)


def unit_macs(model: nn.Module, unit: Unit, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one product in the probe forward (see the module docstring)."""
    a, b = shapes[unit.a], shapes[unit.b]
    if unit.kind == "linear":
        return math.prod(a) * b[0]
    if unit.kind == "conv_transpose2d":  # the weight site sees (out / groups, in, kh, kw)
        return math.prod(a) * b[0] * b[2] * b[3]
    if unit.kind == "conv2d":
        conv = model.get_submodule(unit.module)
        out = F.conv2d(torch.empty(a, device="meta"), torch.empty(b, device="meta"), None, conv.stride,
                       conv.padding, conv.dilation, conv.groups)
        return out.numel() * math.prod(b[1:])
    if unit.b_transposed:
        b = (*b[:-2], b[-1], b[-2])
    batch = torch.broadcast_shapes(a[:-2], b[:-2])
    return math.prod(batch) * a[-2] * a[-1] * b[-1]
