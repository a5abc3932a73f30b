"""Block reconstruction: after calibration, each unit (a layer, a model block or a stage of blocks)
is tuned so its quantized output matches the float model's, in model order, the quantized prefix
feeding the next.

Per unit: its inputs are cached from the quantized model (the units before it already
reconstructed) and, for QDrop, from the float model; its targets are the float model's outputs
on float inputs. The weight quantizers get AdaRound's soft rounding, the activation quantizers
learnable scales (LSQ); Adam minimises the reconstruction loss plus λ·Σ(1 − |2h − 1|^β) after the
warm-up. With QDrop each activation element stays float with probability ``drop_prob`` and each
input element comes from the float model with that probability. With ``response_weight`` (SAQ-SAM's
PAR) the loss adds the error of the mask decoder's response computed from the unit's output
(:mod:`.response`). Quantizers with milestones (AHCPTQ's channel groups) are called at their
fractions of the iterations, and the optimiser takes their new parameters. At the end of the unit the
rounding is hardened, the scales frozen and the dropping switched off (unless the PTQ4SAM
reference bug is reproduced on purpose), so evaluation quantizes every element.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from typing import Any, Iterator, Sequence

import torch
from segment_anything.modeling import Sam
from torch import nn
from tqdm import tqdm

from ptqsam.data.samples import CalibrationSample
from ptqsam.errors import CalibrationError
from ptqsam.instrument.instrument import attached_quantizers, sites
from ptqsam.instrument.modes import disabled, dropping, quantizing
from ptqsam.models.blocks import part_of
from ptqsam.passes import SampleLoop
from ptqsam.reconstruction.cache import TensorCache, capture_inputs, capture_outputs, tree_map, tree_tensors
from ptqsam.reconstruction.config import ReconstructionConfig
from ptqsam.reconstruction.response import continuation
from ptqsam.reconstruction.units import ReconUnit, reconstruction_units, unit_module
from quantizers import Quantizer
from quantizers.modules.uniform import UniformQuantizer
from quantizers.parts.adaround import rounding_regulariser
from quantizers.parts.rounding import NearestRounding

#: key of the reference-bug settings in the saved calibration state's ``extra``
REFERENCE_BUG_KEY = "reference_drop_bug"


def reconstruct(model: Sam, samples: list[CalibrationSample], config: ReconstructionConfig,
                progress: bool = True, only: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Reconstruct every unit of the calibrated ``model`` on ``samples`` (or the units named in
    ``only``); returns a record per unit: iterations, seconds (all) and seconds per optimisation
    step, output MSE against float before and after, first and last loss."""
    quantizers = attached_quantizers(model)
    encoder_float = not any(part_of(n) == "image_encoder" for n in quantizers)
    loop = SampleLoop(model, samples, encoder_float=encoder_float, progress=False)
    units = reconstruction_units(model, config)
    if only is not None:
        unknown = sorted(set(only) - {unit.name for unit in units})
        if unknown:
            raise CalibrationError(f"no reconstruction unit named {unknown}; units: {[u.name for u in units]}")
        units = [unit for unit in units if unit.name in set(only)]
    records = {}
    with _frozen_parameters(model):
        for index, unit in enumerate(tqdm(units, desc="reconstruction", disable=not progress, leave=False)):
            records[unit.name] = _reconstruct_unit(model, loop, unit, config, index, progress)
            if config.reference_drop_bug:  # as the reference: the later units' inputs are cached with it on
                apply_reference_drop_bug(model, reference_bug_sites(model, [unit]), config.drop_prob, config.seed)
    if config.reference_drop_bug:  # fresh generators: the masks a loaded state draws
        apply_reference_drop_bug(model, reference_bug_sites(model, units), config.drop_prob, config.seed)
    return records


def reference_bug_sites(model: Sam, units: list[ReconUnit]) -> list[str]:
    """The layer-input quantizers PTQ4SAM's code leaves dropping after reconstruction."""
    kinds = {name: site.kind for name, site in sites(model).items()}
    return [n for unit in units for n in unit.quantizers if kinds[n] == "input"]


def apply_reference_drop_bug(model: Sam, site_names: list[str], probability: float, seed: int) -> None:
    """Leave ``site_names`` dropping ``probability`` of their elements (PTQ4SAM's evaluation bug,
    reproduced on purpose), each from a generator seeded by ``seed`` and its name."""
    quantizers = attached_quantizers(model)
    for name in site_names:
        quantizer = quantizers[name]
        device = quantizer.calibrated.device
        quantizer.drop_generator = torch.Generator(device=device).manual_seed(_name_seed(seed, name))
        quantizer.drop_prob = probability


def _reconstruct_unit(model: Sam, loop: SampleLoop, unit: ReconUnit, config: ReconstructionConfig,
                      index: int, progress: bool) -> dict[str, Any]:
    start = time.perf_counter()
    module = unit_module(model, unit)
    quantizers = attached_quantizers(model)
    kinds = {name: site.kind for name, site in sites(model).items()}
    weights = {n: quantizers[n] for n in unit.quantizers if kinds[n] == "weight"}
    activations = {n: quantizers[n] for n in unit.quantizers if kinds[n] != "weight"}
    data = _UnitData(loop, model, unit, config)
    try:
        before = _output_mse(module, unit, data)
        round_parts, w_params = _start_adaround(model, weights) if config.round_weights else ([], [])
        a_params = [p for q in activations.values() for p in q.learn()] if config.learn_activations else []
        loop_start = time.perf_counter()
        losses = _optimise(module, unit, data, config, index, round_parts, w_params, a_params, activations,
                           progress)
        loop_seconds = time.perf_counter() - loop_start
        for quantizer in weights.values():
            quantizer.harden()
        for quantizer in activations.values():
            quantizer.freeze()
        after = _output_mse(module, unit, data)
    finally:
        data.close()
    return {"iterations": config.iterations, "seconds": round(time.perf_counter() - start, 3),
            "seconds_per_iteration": round(loop_seconds / config.iterations, 5), "mse_before": before,
            "mse_after": after, "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None, "weights_rounded": len(round_parts),
            "scales_learned": len(a_params), "spilled_to_disk": data.spilled}


class _UnitData:
    """The unit's cached inputs (quantized prefix; float prefix for QDrop and the response term),
    float targets, for the Fisher loss the targets' gradients and, for the response term
    (:mod:`.response`), the float responses and the mask decoder's calls."""

    def __init__(self, loop: SampleLoop, model: Sam, unit: ReconUnit, config: ReconstructionConfig) -> None:
        budget = config.cache_bytes
        first, last = model.get_submodule(unit.modules[0]), model.get_submodule(unit.modules[-1])
        self.root = loop.runner.model
        self.response, needs_decoder = continuation(model, unit) if config.response_weight > 0 else (None, False)
        with disabled(self.root):
            wants_float = config.drop_prob > 0 or self.response is not None
            self.float_inputs = capture_inputs(loop, first, budget) if wants_float else None
            self.targets, self.grads = capture_outputs(loop, last, budget, with_grad=config.loss == "fisher")
            self.decoder_calls = capture_inputs(loop, model.mask_decoder, budget) if needs_decoder else None
        with quantizing(self.root, allow_drop=True):  # earlier units may drop on purpose (reference bug)
            self.inputs = capture_inputs(loop, first, budget)
        self.device = next(first.parameters(), torch.empty(0)).device
        self.target_responses = self._float_responses(budget) if self.response is not None else None

    @torch.no_grad()
    def _float_responses(self, budget: int) -> TensorCache:
        responses = TensorCache(budget)
        with disabled(self.root):
            for i in range(len(self.targets)):
                args, kwargs = self.batch(self.float_inputs, [i])
                responses.append(self.response(self.batch(self.targets, [i]), args, kwargs, self.decoder_call([i])))
        return responses

    def decoder_call(self, indices: list[int]) -> Any:
        """The mask decoder's call for the sample at ``indices`` (one sample), or None."""
        return None if self.decoder_calls is None else self.batch(self.decoder_calls, indices)

    def response_loss(self, output: Any, args: tuple, kwargs: dict, indices: list[int]) -> torch.Tensor:
        """The response of ``output`` against the float response of the same samples."""
        response = self.response(output, args, kwargs, self.decoder_call(indices))
        return reconstruction_loss(response, self.batch(self.target_responses, indices), None, -1)

    @property
    def caches(self) -> list[TensorCache]:
        return [c for c in (self.float_inputs, self.targets, self.grads, self.inputs, self.decoder_calls,
                            self.target_responses) if c is not None]

    @property
    def spilled(self) -> int:
        return sum(c.spilled for c in self.caches)

    def batch(self, cache: TensorCache, indices: list[int]) -> Any:
        items = [cache[i] for i in indices]
        if len(items) == 1:
            return tree_map(lambda t: t.to(self.device), items[0])
        return _concatenate(items, self.device)

    def close(self) -> None:
        for cache in self.caches:
            cache.close()


def _optimise(module: nn.Module, unit: ReconUnit, data: _UnitData, config: ReconstructionConfig, index: int,
              round_parts: list, w_params: list, a_params: list, activations: dict[str, Quantizer],
              progress: bool) -> list[float]:
    """The optimisation loop of one unit; returns the loss at every step. The activation
    quantizers' milestones (:meth:`~quantizers.Quantizer.milestones`) are met at their fraction of
    the iterations (all of them, in order, when nothing is learned)."""
    events = _milestones(activations, config.iterations)
    if not (w_params or a_params):
        for _, quantizer, number in events:
            quantizer.at_milestone(number)
        return []
    w_opt = torch.optim.Adam(w_params, lr=config.weight_lr) if w_params else None
    a_opt = torch.optim.Adam(a_params, lr=config.activation_lr) if a_params else None
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(a_opt, T_max=config.iterations, eta_min=0.0) if a_opt else None
    generator = torch.Generator().manual_seed(_name_seed(config.seed, unit.name))
    drop = dropping(data.root, config.drop_prob, list(activations), seed=config.seed + index) \
        if config.drop_prob > 0 and activations else contextlib.nullcontext()
    losses = []
    steps = tqdm(range(config.iterations), desc=unit.name, disable=not progress, leave=False, mininterval=1.0)
    with drop, quantizing(data.root, list(unit.quantizers), allow_drop=True), torch.enable_grad():
        for step in steps:
            while events and events[0][0] == step:
                _, quantizer, number = events.pop(0)
                quantizer.at_milestone(number)
                if a_opt is not None and config.learn_activations:
                    _replace_parameters(a_opt, [p for q in activations.values() for p in q.learn()])
            indices = torch.randint(len(data.inputs), (config.batch_size,), generator=generator).tolist()
            args, kwargs = _unit_inputs(data, indices, config, generator)
            output = module(*args, **kwargs)
            output_loss = reconstruction_loss(output, data.batch(data.targets, indices),
                                              None if data.grads is None else data.batch(data.grads, indices),
                                              unit.channel_axis)
            loss = output_loss
            if data.response is not None:
                loss = loss + config.response_weight * data.response_loss(output, args, kwargs, indices)
            if round_parts and config.regularised(step):
                beta = config.beta(step)
                loss = loss + config.round_loss_weight * sum(rounding_regulariser(p.soft_values(), beta)
                                                              for p in round_parts)
            for optimiser in (w_opt, a_opt):
                if optimiser is not None:
                    optimiser.zero_grad(set_to_none=True)
            loss.backward()
            for optimiser in (w_opt, a_opt):
                if optimiser is not None:
                    optimiser.step()
            if schedule is not None:
                schedule.step()
            losses.append(float(loss.detach()))
            if progress and step % 50 == 0:
                steps.set_postfix(loss=f"{losses[-1]:.4g}", output=f"{float(output_loss.detach()):.4g}")
    return losses


def _milestones(quantizers: dict[str, Quantizer], iterations: int) -> list[tuple[int, Quantizer, int]]:
    """``(step, quantizer, milestone index)`` for every milestone, in step order."""
    events = [(int(fraction * iterations), n, q, i) for n, q in quantizers.items()
              for i, fraction in enumerate(q.milestones())]
    return [(step, q, i) for step, _, q, i in sorted(events, key=lambda e: (e[0], e[1], e[3]))]


def _replace_parameters(optimiser: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
    """Optimise ``params`` from now on (one group); the state of parameters no longer optimised is
    dropped, new ones start fresh, the learning rate (and its schedule) continues. AHCPTQ's code
    instead builds a new Adam and a new cosine schedule over all the iterations at each regrouping,
    so its learning rate jumps back to the start and never reaches 0."""
    group = optimiser.param_groups[0]
    kept = {id(p) for p in params}
    for old in group["params"]:
        if id(old) not in kept:
            optimiser.state.pop(old, None)
    group["params"] = list(params)


def reconstruction_loss(output: Any, target: Any, grads: Any | None, channel_axis: int) -> torch.Tensor:
    """Squared error summed over the channel axis and averaged over the rest, added over the unit's
    output tensors; with ``grads`` weighted by their square (BRECQ's Fisher diagonal)."""
    outs, targets = tree_tensors(output), tree_tensors(target)
    weights = [None] * len(outs) if grads is None else list(grads)
    if len(outs) != len(targets) or len(weights) != len(outs):
        raise CalibrationError(f"unit output has {len(outs)} tensors, target {len(targets)}, gradients {len(weights)}")
    total = outs[0].new_zeros(())
    for out, ref, grad in zip(outs, targets, weights):
        error = (out - ref).square()
        if grads is not None:
            if grad is None:
                raise CalibrationError("the Fisher loss needs a gradient at every unit output: one does not reach "
                                       "the task loss")
            error = error * grad.square()
        total = total + error.sum(dim=channel_axis).mean()
    return total


def _unit_inputs(data: _UnitData, indices: list[int], config: ReconstructionConfig,
                 generator: torch.Generator) -> tuple[tuple, dict]:
    """The quantized-prefix inputs of the drawn samples; with QDrop each element is the float
    model's input instead with probability ``drop_prob``."""
    quantized = data.batch(data.inputs, indices)
    if data.float_inputs is None or config.drop_prob == 0:
        return quantized
    float_side = data.batch(data.float_inputs, indices)
    mixed = [torch.where(torch.rand(q.shape, generator=generator).to(q.device) < config.drop_prob, f, q)
             for q, f in zip(tree_tensors(quantized), tree_tensors(float_side))]
    position = iter(mixed)
    return tree_map(lambda t: next(position), quantized)


@torch.no_grad()
def _output_mse(module: nn.Module, unit: ReconUnit, data: _UnitData) -> float:
    """Mean squared error of the unit's quantized output against the float targets, on the
    quantized-prefix inputs of every sample (no dropping)."""
    total, count = 0.0, 0
    with quantizing(data.root, list(unit.quantizers), allow_drop=True), _no_dropping(data.root, unit.quantizers):
        for i in range(len(data.inputs)):
            args, kwargs = data.batch(data.inputs, [i])
            for out, ref in zip(tree_tensors(module(*args, **kwargs)), tree_tensors(data.batch(data.targets, [i]))):
                total += float((out - ref).double().square().sum())
                count += out.numel()
    return total / count


@contextlib.contextmanager
def _no_dropping(model: nn.Module, names: tuple[str, ...]) -> Iterator[None]:
    quantizers = attached_quantizers(model)
    saved = {n: quantizers[n].drop_prob for n in names}
    try:
        for name in names:
            quantizers[name].drop_prob = 0.0
        yield
    finally:
        for name, probability in saved.items():
            quantizers[name].drop_prob = probability


def _start_adaround(model: nn.Module, weights: dict[str, Quantizer]) -> tuple[list, list]:
    """AdaRound's soft rounding on every uniform weight quantizer still rounding to nearest (one
    whose codes a calibration pass chose, GPTQ, keeps them); returns the parts and logits."""
    parts = []
    for name, quantizer in weights.items():
        if isinstance(quantizer, UniformQuantizer) and isinstance(quantizer.rounding, NearestRounding):
            layer = model.get_submodule(name.rpartition(".")[0])
            parts.append(quantizer.start_adaround(layer.site_weight()))
    return parts, [part.logits for part in parts]


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """The model's own parameters need no gradient while its quantizers learn (restored on exit)."""
    quantizer_params = {id(p) for q in attached_quantizers(model).values() for p in q.parameters()}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in quantizer_params]
    try:
        for param in frozen:
            param.requires_grad_(False)
        yield
    finally:
        for param in frozen:
            param.requires_grad_(True)


def _concatenate(items: list[Any], device: torch.device) -> Any:
    """Items of the same structure joined along dim 0 of every tensor."""
    columns = [tree_tensors(item) for item in items]
    joined = iter([torch.cat([column[k] for column in columns]).to(device) for k in range(len(columns[0]))])
    return tree_map(lambda t: next(joined), items[0])


def _name_seed(seed: int, name: str) -> int:
    return seed * 1_000_003 + zlib.crc32(name.encode())
