"""Hessian-guided scale search as a calibration pass (PTQ4ViT, Q-TinySAM).

A *unit* is one product whose two operands may be quantized: a Linear (input, weight) or an
attention / decoder matmul (query·keyᵀ, probs·value, hyper_in·upscaled). For the units whose
operand quantizers ask for ``search: hessian``, the pass caches on the float model, for every
calibration image, the operands, the product O and ∂L/∂O, then searches the scales on them.

The task loss is BCE + Dice of the mask logits against the float model's own binary masks: its
gradient is not zero (unlike PTQ4ViT's KL(FP‖FP), whose gradient vanishes, a known bug). Every unit
is calibrated on float inputs ("parallel" calibration, not layer after layer). What grows with
the number of images: the cached operands, outputs and gradients of the units searched together;
units are searched in groups whose cache fits ``memory_budget``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ptqsam.errors import CalibrationError
from ptqsam.instrument.hooks import ForwardHook, forward_hooks
from ptqsam.instrument.instrument import attached_quantizers, sites
from ptqsam.instrument.units import Unit, model_units
from ptqsam.passes import task_loss
from quantizers.modules.base import Quantizer
from quantizers.modules.uniform import UniformQuantizer
from quantizers.search.hessian import HessianSearchConfig, output_objective, search_linear, search_matmul, subsample_rows

#: bits at which a twin-quantized operand is re-quantized while its uniform partner is searched:
#: the search functions quantize both operands; 16 bits adds at most max|x|/65535 of error.
FIXED_OPERAND_BITS = 16
#: unit kinds the search handles
SEARCHED_KINDS = ("linear", "matmul")


def search_units(model: nn.Module) -> list[Unit]:
    """The units (see :mod:`ptqsam.instrument.units`) with at least one operand quantizer asking for
    the Hessian search (an operand whose site carries no quantizer stays float)."""
    wants = {n for n, q in attached_quantizers(model).items() if q.spec.search == "hessian"}
    return [unit for unit in model_units(model) if unit.kind in SEARCHED_KINDS and {unit.a, unit.b} & wants]


class _Capture:
    """Hooks caching each unit's operands, output and output gradient over the calibration set (on
    the model's device: the search runs there too)."""

    def __init__(self, model: nn.Module, units: Sequence[Unit]) -> None:
        self.data: dict[str, dict[str, list[torch.Tensor]]] = {u.name: {"a": [], "b": [], "out": [], "grad": []}
                                                               for u in units}
        modules, all_sites = dict(model.named_modules()), sites(model)
        self.hooks: list[tuple[nn.Module, ForwardHook]] = []
        for unit in units:
            store = self.data[unit.name]
            if unit.output is None:
                self.hooks.append((modules[unit.module], self._layer_hook(store)))
            else:
                self.hooks += [(all_sites[unit.a], self._keep(store["a"])), (all_sites[unit.b], self._keep(store["b"])),
                               (all_sites[unit.output], self._output_hook(store))]

    @staticmethod
    def _keep(bucket: list) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            bucket.append(output.detach())
        return hook

    @staticmethod
    def _output_hook(store: dict) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            store["out"].append(output.detach())
            if output.requires_grad:
                output.register_hook(lambda g: store["grad"].append(g.detach()))
        return hook

    @classmethod
    def _layer_hook(cls, store: dict) -> Callable:
        output_hook = cls._output_hook(store)

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            store["a"].append(args[0].detach())
            output_hook(module, args, output)
        return hook


def capture(model: nn.Module, units: Sequence[Unit], run_with_grad: Callable[[Callable], None]) -> dict:
    """Cache the units' tensors while ``run_with_grad(task_loss)`` runs one forward + backward per
    image (each unit is called once per image, so outputs and gradients stay aligned)."""
    cap = _Capture(model, units)
    with forward_hooks(cap.hooks):
        run_with_grad(task_loss)
    for name, store in cap.data.items():
        if store["grad"] and len(store["grad"]) != len(store["out"]):
            raise CalibrationError(f"unit {name}: {len(store['out'])} outputs but {len(store['grad'])} gradients")
    return cap.data


def search_unit(unit: Unit, store: dict, model: nn.Module, max_rows: int | None = None) -> dict:
    """Search the unit's operand scales on its cached tensors and install them; returns a record.

    ``max_rows`` is the search's ``max_rows`` where the recipe leaves it unset.

    A unit whose output does not reach the mask logits (the IoU head) has no gradient: it is
    searched on the unweighted output error (metric ``l2``) instead.
    """
    quantizers = attached_quantizers(model)
    qa, qb = quantizers.get(unit.a), quantizers.get(unit.b)
    cfg = (qa or qb).spec.search_config
    if cfg.max_rows is None:
        cfg = replace(cfg, max_rows=max_rows)
    keep = 1 if unit.kind == "linear" else 2
    out = _cat(store["out"], keep)
    grad = _cat(store["grad"], keep) if store["grad"] else None
    if grad is None or not bool(grad.any()):
        cfg, grad = replace(cfg, metric="l2"), None
    # the rows that score the candidates, chosen once here so a twin operand is fitted on them too
    a, out, grad = subsample_rows(cfg.max_rows, _cat(store["a"], keep), out, grad, matmul=unit.kind == "matmul")
    cfg = replace(cfg, max_rows=None)
    if unit.kind == "linear":
        module = model.get_submodule(unit.module)
        bias = None if module.bias is None else module.bias.detach()
        return _search_pair(qa, qb, a, module.weight.detach(), bias, out, grad, cfg)
    b = _cat(store["b"], 2)
    if unit.b_transposed:  # the product is q @ kᵀ; key scales are per tensor, so layout-free
        b = b.transpose(-2, -1)
    return _search_pair(qa, qb, a, b, None, out, grad, cfg, linear=False)


def _search_pair(qa, qb, a, b, bias, out, grad, cfg: HessianSearchConfig, linear: bool = True) -> dict:
    """Both operands uniform: the alternating search. A twin operand is fitted first on the
    weighted output error (its partner in float), then its uniform partner is searched with the
    twin-quantized operand held fixed. A float operand (None) is held fixed too."""

    def product(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.linear(x, y, bias) if linear else torch.matmul(x, y)

    record: dict = {}
    if qa is not None and not _is_uniform(qa):
        _fit_twin(qa, a, lambda a_hat: product(a_hat, b), out, grad, cfg)
        a, record["a"] = qa.fake_quantize(a), "twin"
    if qb is not None and not _is_uniform(qb):
        _fit_twin(qb, b, lambda b_hat: product(a, b_hat), out, grad, cfg)
        b, record["b"] = qb.fake_quantize(b), "twin"
    if not (_is_uniform(qa) or _is_uniform(qb)):
        return record
    a_bits = qa.spec.bits if _is_uniform(qa) else FIXED_OPERAND_BITS
    b_bits = qb.spec.bits if _is_uniform(qb) else FIXED_OPERAND_BITS
    if linear:
        granularity = "channel" if _is_uniform(qb) and qb.spec.granularity.kind == "channel" else "tensor"
        found = search_linear(a, b, bias, out, grad, b_bits, a_bits, granularity, config=cfg)
        a_scale, b_scale = found.input_scale, found.weight_scale
    else:
        found = search_matmul(a, b, out, grad, a_bits, b_bits, config=cfg)
        a_scale, b_scale = found.a_scale, found.b_scale
    for quantizer, scale in ((qa, a_scale), (qb, b_scale)):
        if _is_uniform(quantizer):
            quantizer.set_qparams(scale, torch.zeros_like(scale, dtype=torch.int32))
    record["metric"] = cfg.metric
    record["history"] = [float(h) for h in found.history]
    return record


def _fit_twin(quantizer: Quantizer, x: torch.Tensor, make_output: Callable, out, grad, cfg) -> None:
    score = output_objective(out, grad, cfg.metric)
    quantizer.objective = lambda x_hat, x_ref: score(make_output(x_hat))
    try:
        quantizer.observe(x)
    finally:
        quantizer.objective = None
    quantizer.finalize()


def _is_uniform(quantizer: Quantizer | None) -> bool:
    return isinstance(quantizer, UniformQuantizer)


def _cat(tensors: Iterable[torch.Tensor], keep: int) -> torch.Tensor:
    """Concatenate per-image tensors along one flattened leading dimension, keeping the trailing
    ``keep`` dims (1 for Linear inputs/outputs, 2 for matmul operands)."""
    return torch.cat([t.reshape(-1, *t.shape[-keep:]) for t in tensors])
