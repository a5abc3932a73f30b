"""Products of two sited operands, as the instrumented classes declare them, and where they are.

An instrumented class lists its products in ``PRODUCTS``: a Linear's ``input · weightᵀ``, a
convolution's, an attention's ``query · keyᵀ`` and ``probs · value``, the mask decoder's final
``hyper_in · upscaled``. :func:`model_units` finds every product of a model with the names of its
sites, so calibration passes (the Hessian-guided search) and analyses never guess the structure
from names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

UnitKind = Literal["linear", "conv2d", "conv_transpose2d", "matmul"]


@dataclass(frozen=True)
class Product:
    """A product declared by an instrumented class: ``output = a ⊗ b`` over two of its sites.

    Arguments:
      kind: ``linear`` (``F.linear(a, b, bias)``), ``conv2d``, ``conv_transpose2d`` (the module's
        own convolution of input ``a`` with weight ``b``) or ``matmul`` (``a @ b``).
      a, b: roles of the operand sites (``input``/``weight``, ``query``/``key``, ...).
      output: role of the site that sees the product (matmuls), or None: the module's output.
      b_transposed: the product uses ``bᵀ`` (``query @ keyᵀ``); the site sees ``b`` untransposed.
    """

    kind: UnitKind
    a: str
    b: str
    output: str | None = None
    b_transposed: bool = False


@dataclass(frozen=True)
class Unit:
    """One product of a model, with the full names of its sites.

    Arguments:
      name: the module path for layers (``image_encoder.blocks.0.attn.qkv``), else
        ``<module>.<a>@<b>`` (``image_encoder.blocks.0.attn.query@key``).
      kind, b_transposed: as in :class:`Product`.
      module: path of the module that computes the product.
      a, b: site names of the operands.
      output: site name of the product (matmuls), or None: the module's output.
    """

    name: str
    kind: UnitKind
    module: str
    a: str
    b: str
    output: str | None
    b_transposed: bool


def model_units(model: nn.Module) -> list[Unit]:
    """Every declared product of an instrumented ``model``, in module order."""
    found = []
    for path, module in model.named_modules():
        for product in getattr(type(module), "PRODUCTS", ()):
            prefix = f"{path}." if path else ""
            name = path if product.output is None else f"{prefix}{product.a}@{product.b}"
            output = None if product.output is None else prefix + product.output
            found.append(Unit(name, product.kind, path, prefix + product.a, prefix + product.b, output,
                              product.b_transposed))
    return found
