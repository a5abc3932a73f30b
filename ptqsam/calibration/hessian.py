"""Hessian-guided scale search as a calibration pass (PTQ4ViT, Q-TinySAM).

A *unit* is one product whose two operands may be quantized: a Linear or a convolution (input,
weight) or an attention / decoder matmul (query·keyᵀ, probs·value, hyper_in·upscaled). For the
units whose operand quantizers ask for ``search: hessian``, the pass caches on the float model, for
every calibration image, the operands, the product O and ∂L/∂O, then searches the scales on them.

The task loss is BCE + Dice of the mask logits against the float model's own binary masks (summed
over the prompts: every prompt weighs the same whatever the number of prompts on its image): its
gradient is not zero (unlike PTQ4ViT's KL(FP‖FP), whose gradient vanishes, a known bug); a loss
that gives the mask logits an identically zero gradient is refused (:class:`CalibrationError`).
A unit whose output gets no gradient from the loss although the loss is sound — its output never
reaches the loss (the IoU head), or is discarded before it (the hypernetwork MLP of the mask that
multimask output drops) — is searched on the unweighted output error (metric ``l2``); this is
logged as a warning and recorded in the unit's record (``fallback``).

Every unit is calibrated on float inputs ("parallel" calibration, not layer after layer). What
grows with the number of images: the cached operands, outputs and gradients of the units searched
together (one model block at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
from quantizers.search.conv import ConvGeometry, search_conv, subsample_batch
from quantizers.search.hessian import HessianSearchConfig, output_objective, search_linear, search_matmul, subsample_rows

#: bits at which a twin-quantized operand is re-quantized while its uniform partner is searched:
#: the search functions quantize both operands; 16 bits adds at most max|x|/65535 of error.
FIXED_OPERAND_BITS = 16
#: unit kinds the search handles (every kind :mod:`ptqsam.instrument.units` declares)
SEARCHED_KINDS = ("linear", "conv2d", "conv_transpose2d", "matmul")
#: trailing dims of a unit's cached tensors kept when the images' tensors are concatenated
_KEPT_DIMS = {"linear": 1, "matmul": 2, "conv2d": 3, "conv_transpose2d": 3}
NO_GRADIENT = "no gradient: the output does not reach the task loss"
ZERO_GRADIENT = "zero gradient: the output is discarded before the task loss"
SAMPLED_ZERO_GRADIENT = "zero gradient on every row sampled for the search (max_rows / --search-rows)"


def search_units(model: nn.Module) -> list[Unit]:
    """The units (see :mod:`ptqsam.instrument.units`) with at least one operand quantizer asking for
    the Hessian search (an operand whose site carries no quantizer stays float)."""
    wants = {n for n, q in attached_quantizers(model).items() if asks_for_search(q)}
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
    """Cache the units' tensors while ``run_with_grad(loss)`` runs one forward + backward per image
    (each unit is called once per image, so outputs and gradients stay aligned). Raises
    :class:`CalibrationError` when :func:`task_loss` gives the mask logits an identically zero
    gradient on some image (a broken task loss would silently degrade every unit's objective)."""
    cap = _Capture(model, units)
    sound: list[bool] = []

    def checked_loss(logits: torch.Tensor) -> torch.Tensor:
        logits.register_hook(lambda g: sound.append(bool(g.any())))
        return task_loss(logits)

    with forward_hooks(cap.hooks):
        run_with_grad(checked_loss)
    if not all(sound):
        raise CalibrationError(
            f"the task loss gives the mask logits an identically zero gradient on {sound.count(False)} of "
            f"{len(sound)} calibration images: the Hessian objective would be degenerate (a loss such as "
            "KL(FP || FP) has no gradient)")
    for name, store in cap.data.items():
        if store["grad"] and len(store["grad"]) != len(store["out"]):
            raise CalibrationError(f"unit {name}: {len(store['out'])} outputs but {len(store['grad'])} gradients")
    return cap.data


@dataclass(frozen=True)
class _Problem:
    """A unit's cached operands with its product and the search that fits both scales."""

    a: torch.Tensor
    b: torch.Tensor
    out: torch.Tensor
    grad: torch.Tensor | None
    product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    search: Callable[..., tuple[torch.Tensor, torch.Tensor, tuple[float, ...]]]


def search_unit(unit: Unit, store: dict, model: nn.Module, max_rows: int | None = None) -> dict | None:
    """Search the unit's operand scales on its cached tensors and install them; returns a record
    (``metric``, ``history``, ``fallback`` where the l2 metric replaced the Hessian one, ``a``/``b``
    ``"twin"`` for twin operands), or None when no calibration image reached the unit.

    ``max_rows`` is the search's ``max_rows`` where the recipe leaves it unset: Linear units keep
    that many seeded-random tokens, matmul units rows of ``A``, convolutions whole batch elements
    (:func:`quantizers.search.conv.subsample_batch`). Rows whose output gradient is zero throughout
    (the IoU token's, say) leave the Hessian objective nothing to weigh: the l2 metric replaces it.
    """
    if not store["out"]:
        return None
    quantizers = attached_quantizers(model)
    qa, qb = quantizers.get(unit.a), quantizers.get(unit.b)
    cfg = next(q for q in (qa, qb) if asks_for_search(q)).spec.search_config
    if cfg.max_rows is None:
        cfg = replace(cfg, max_rows=max_rows)
    grad, fallback = _gradient(store["grad"], _KEPT_DIMS[unit.kind])
    if fallback:
        cfg = replace(cfg, metric="l2")
    problem = _problem(unit, store, model, grad, cfg)
    if problem.grad is not None and not bool(problem.grad.any()):
        cfg, fallback = replace(cfg, metric="l2"), SAMPLED_ZERO_GRADIENT
    record = _search_pair(qa, qb, problem, replace(cfg, max_rows=None))
    record["metric"] = cfg.metric
    if fallback:
        record["fallback"] = fallback
    return record


def _gradient(grads: list[torch.Tensor], keep: int) -> tuple[torch.Tensor | None, str | None]:
    """The concatenated output gradient, or None with the reason the l2 metric replaces it."""
    if not grads:
        return None, NO_GRADIENT
    grad = _cat(grads, keep)
    return (grad, None) if bool(grad.any()) else (None, ZERO_GRADIENT)


def _problem(unit: Unit, store: dict, model: nn.Module, grad, cfg: HessianSearchConfig) -> _Problem:
    """The unit's operands, subsampled once here (``cfg.max_rows``) so that a twin operand is fitted
    on the rows its partner's search scores."""
    keep = _KEPT_DIMS[unit.kind]
    a, out = _cat(store["a"], keep), _cat(store["out"], keep)
    if unit.kind == "matmul":
        b = _cat(store["b"], 2)
        # the product is q @ kᵀ; key scales are per tensor, so layout-free
        return _matmul_problem(a, b.transpose(-2, -1) if unit.b_transposed else b, out, grad, cfg.max_rows)
    module = model.get_submodule(unit.module)
    if unit.kind == "linear":
        return _linear_problem(a, module, out, grad, cfg.max_rows)
    return _conv_problem(a, module, out, grad, cfg.max_rows)


def _matmul_problem(a, b, out, grad, max_rows: int | None) -> _Problem:
    a, out, grad = subsample_rows(max_rows, a, out, grad, matmul=True)

    def search(a, b, a_bits, b_bits, b_channel, config):
        found = search_matmul(a, b, out, grad, a_bits, b_bits, config=config)
        return found.a_scale, found.b_scale, found.history
    return _Problem(a, b, out, grad, torch.matmul, search)


def _linear_problem(x, module: nn.Linear, out, grad, max_rows: int | None) -> _Problem:
    x, out, grad = subsample_rows(max_rows, x, out, grad, matmul=False)
    bias = None if module.bias is None else module.bias.detach()

    def search(x, w, x_bits, w_bits, w_channel, config):
        found = search_linear(x, w, bias, out, grad, w_bits, x_bits, "channel" if w_channel else "tensor",
                              config=config)
        return found.input_scale, found.weight_scale, found.history
    return _Problem(x, module.weight.detach(), out, grad, lambda x, w: F.linear(x, w, bias), search)


def _conv_problem(x, module: nn.Conv2d | nn.ConvTranspose2d, out, grad, max_rows: int | None) -> _Problem:
    """A convolution: its weight in the site's layout (a transposed conv's site sees
    ``(out/groups, in, kH, kW)``), whole batch elements subsampled."""
    x, out, grad = subsample_batch(max_rows, x, out, grad)
    geometry = ConvGeometry.of(module)
    weight = module.weight.detach()
    bias = None if module.bias is None else module.bias.detach()

    def search(x, w, x_bits, w_bits, w_channel, config):
        found = search_conv(x, w, bias, out, grad, w_bits, x_bits, geometry, "channel" if w_channel else "tensor",
                            config=config)
        return found.input_scale, found.weight_scale, found.history

    def conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = geometry(x, w)
        return y if bias is None else y + bias.view(-1, 1, 1)
    return _Problem(x, weight.transpose(0, 1) if geometry.transposed else weight, out, grad, conv, search)


def _search_pair(qa, qb, problem: _Problem, cfg: HessianSearchConfig) -> dict:
    """Uniform operands asking for the search: the alternating search. A twin operand asking for
    it is fitted first on the weighted output error (its partner in float), then its uniform partner
    is searched with the twin-quantized operand held fixed. An operand that does not ask for the
    search (already calibrated as its own spec says: ``"fixed"``) or has no quantizer (float) is
    held fixed too; its qparams are never touched."""
    a, b, out, grad = problem.a, problem.b, problem.out, problem.grad
    record: dict = {}
    for quantizer in (qa, qb):
        if quantizer is not None and not asks_for_search(quantizer) and not quantizer.is_calibrated:
            raise CalibrationError(f"a {quantizer.spec.quantizer} operand without the Hessian search is not "
                                   "calibrated when its partner's search runs: give both operands search: hessian")
    if asks_for_search(qa) and not _is_uniform(qa):
        _fit_twin(qa, a, lambda a_hat: problem.product(a_hat, b), out, grad, cfg)
        a, record["a"] = qa.fake_quantize(a), "twin"
    elif qa is not None and not asks_for_search(qa):
        a, record["a"] = qa.fake_quantize(a), "fixed"
    if asks_for_search(qb) and not _is_uniform(qb):
        _fit_twin(qb, b, lambda b_hat: problem.product(a, b_hat), out, grad, cfg)
        b, record["b"] = qb.fake_quantize(b), "twin"
    elif qb is not None and not asks_for_search(qb):
        b, record["b"] = qb.fake_quantize(b), "fixed"
    searched_a, searched_b = asks_for_search(qa) and _is_uniform(qa), asks_for_search(qb) and _is_uniform(qb)
    if not (searched_a or searched_b):
        return record
    a_bits = qa.spec.bits if searched_a else FIXED_OPERAND_BITS
    b_bits = qb.spec.bits if searched_b else FIXED_OPERAND_BITS
    b_channel = searched_b and qb.spec.granularity.kind == "channel"
    a_scale, b_scale, history = problem.search(a, b, a_bits, b_bits, b_channel, cfg)
    for quantizer, scale, searched in ((qa, a_scale, searched_a), (qb, b_scale, searched_b)):
        if searched:
            quantizer.set_qparams(scale, torch.zeros_like(scale, dtype=torch.int32))
    record["history"] = [float(h) for h in history]
    return record


def asks_for_search(quantizer: Quantizer | None) -> bool:
    """Whether an operand's quantizer asks for the Hessian-guided search (its spec's ``search``)."""
    return quantizer is not None and quantizer.spec.search == "hessian"



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
    ``keep`` dims (1 for Linear inputs/outputs, 2 for matmul operands, 3 for conv feature maps)."""
    return torch.cat([t.reshape(-1, *t.shape[-keep:]) for t in tensors])
