"""GPTQ weight rounding as a calibration pass: for every Linear / Conv2d whose weight quantizer
asks for ``search: gptq``, ``H = 2 X Xᵀ / n`` of its calibration inputs, then the codes
(:func:`quantizers.search.gptq.gptq_codes`) stored in the weight quantizer (a ``codes`` rounding
part, saved with the state); the float weights are never touched.

Block by block in model order, as GPTQ's sequential mode: the inputs of a block's layers come from
the model with the weights of the blocks before it already GPTQ-quantized (activations float).
Each layer's record compares the proxy error ``tr((W − Q) H (W − Q)ᵀ)`` of round-to-nearest and
GPTQ.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ptqsam.instrument.hooks import forward_hooks
from ptqsam.instrument.instrument import attached_quantizers
from ptqsam.instrument.modes import quantizing
from ptqsam.instrument.units import Unit, model_units
from ptqsam.models.blocks import group_by_block, model_blocks
from ptqsam.passes import SampleLoop
from quantizers.functional.uniform import group_rows, ungroup_rows
from quantizers.modules.uniform import UniformQuantizer
from quantizers.search.gptq import gptq_codes


def gptq_units(model: nn.Module) -> list[Unit]:
    """Linear and (ungrouped) Conv2d units whose calibrated weight quantizer asks for the GPTQ search
    (other layers asking for it, e.g. transposed convolutions, keep round-to-nearest)."""
    quantizers, modules = attached_quantizers(model), dict(model.named_modules())
    return [unit for unit in model_units(model) if unit.kind in ("linear", "conv2d") and unit.b in quantizers
            and quantizers[unit.b].spec.search == "gptq" and quantizers[unit.b].is_calibrated
            and getattr(modules[unit.module], "groups", 1) == 1]


def gptq_pass(model: nn.Module, loop: SampleLoop, units: list[Unit]) -> dict[str, dict]:
    """Collect each layer's H block by block and install its GPTQ codes; returns a record per layer."""
    quantizers = attached_quantizers(model)
    modules = dict(model.named_modules())
    records, done = {}, []
    for group_name, group in group_by_block(model_blocks(model), units, lambda unit: unit.module).items():
        hessians = {unit.module: _Hessian(modules[unit.module]) for unit in group}
        with quantizing(model, done) if done else nullcontext(), \
                forward_hooks([(modules[name], h) for name, h in hessians.items()], pre=True):
            loop.run(f"gptq {group_name}")
        for unit in group:
            records[unit.module] = _quantize(modules[unit.module], quantizers[unit.b], hessians[unit.module].value())
            done.append(unit.b)
    return records


class _Hessian:
    """Running ``2 X Xᵀ / n`` of a layer's inputs (Conv2d inputs unfolded to the kernel's patches)."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.sum: torch.Tensor | None = None
        self.count = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        if isinstance(self.layer, nn.Conv2d):
            x = F.unfold(x, self.layer.kernel_size, self.layer.dilation, self.layer.padding, self.layer.stride)
            x = x.transpose(1, 2)
        x = x.reshape(-1, x.shape[-1]).double()
        product = 2.0 * x.T @ x
        self.sum = product if self.sum is None else self.sum + product
        self.count += x.shape[0]

    def value(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)


def _quantize(layer: nn.Module, quantizer: UniformQuantizer, hessian: torch.Tensor) -> dict:
    weight = layer.site_weight().detach()
    matrix = weight.reshape(weight.shape[0], -1)
    granularity = quantizer.spec.granularity
    scale, zero_point = quantizer.group_qparams()
    rows = group_rows(weight, granularity)
    per_element = [ungroup_rows(v.detach().double().reshape(-1, 1).expand(rows.shape), weight.shape, granularity)
                   .reshape(matrix.shape) for v in (scale, zero_point)]
    qmin, qmax = quantizer.qrange
    codes = gptq_codes(matrix, hessian, *per_element, qmin, qmax, quantizer.spec.search_config)
    nearest = torch.clamp(torch.round(matrix.double() / per_element[0]) + per_element[1], qmin, qmax) - per_element[1]
    quantizer.set_codes(group_rows(codes.reshape(weight.shape), granularity))

    def proxy(c: torch.Tensor) -> float:
        delta = matrix.double() - c * per_element[0]
        return float(torch.einsum("ij,jk,ik->", delta, hessian, delta))
    return {"error_nearest": proxy(nearest), "error_gptq": proxy(codes), "columns": matrix.shape[1]}

