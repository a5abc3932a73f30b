"""AHCPTQ's HLUQ grid choice as a calibration pass: every hybrid log-uniform quantizer scores its
candidate (r, g) grids on the float calibration data, by the error of the output of the Linear
whose input it quantizes (the MLP's second layer), or of its own tensor where no Linear follows."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ptqsam.instrument.hooks import forward_hooks
from ptqsam.instrument.instrument import attached_quantizers, sites
from ptqsam.instrument.modes import disabled
from ptqsam.instrument.units import model_units
from ptqsam.passes import SampleLoop
from quantizers.modules.hybrid import HybridLogUniformQuantizer


def hybrid_sites(model: nn.Module, names: list[str]) -> list[str]:
    """The names among ``names`` whose quantizer is a hybrid log-uniform one."""
    quantizers = attached_quantizers(model)
    return [name for name in names if isinstance(quantizers[name], HybridLogUniformQuantizer)]


def hybrid_grid_pass(model: nn.Module, loop: SampleLoop, names: list[str]) -> dict[str, dict]:
    """Score every candidate grid of the quantizers at ``names`` over the samples, in float (the
    observed min and max must be complete: run after the statistics pass, before ``finalize``).
    Returns, per site, the Linear scored against (None: the tensor itself) and each candidate's
    summed error."""
    quantizers = attached_quantizers(model)
    linears = {unit.a: unit.module for unit in model_units(model) if unit.kind == "linear"}
    modules = dict(model.named_modules())
    model_sites = sites(model)
    hooks = [(model_sites[name], _scorer(quantizers[name], modules.get(linears.get(name, "")))) for name in names]
    with disabled(model), forward_hooks(hooks, pre=True):
        loop.run("hluq grids")
    return {name: {"linear": linears.get(name),
                   "errors": {f"r={r:g},g={g:g}": float(e) for (r, g), e in
                              zip(quantizers[name].candidates, quantizers[name].grid_errors)}}
            for name in names}


def _scorer(quantizer: HybridLogUniformQuantizer, linear: nn.Module | None) -> Callable:
    def hook(site: nn.Module, args: tuple) -> None:
        if linear is None:
            quantizer.score_grids(args[0])
        else:
            bias = None if linear.bias is None else linear.bias.detach()
            quantizer.score_grids(args[0], linear.weight.detach(), bias)
    return hook
