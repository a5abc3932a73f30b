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

Under ``torchrun`` each process captures its shard of the samples and one process computes each
step, the others following it exactly (:mod:`.sharded`): the one-process result bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from dataclasses import replace
from typing import Any, Iterator, NamedTuple, Sequence

import torch
from segment_anything.modeling import Sam
from torch import nn

from ptqsam import distributed
from ptqsam.data.samples import CalibrationSample
from ptqsam.errors import CalibrationError, DistributedError
from ptqsam.instrument.attention import chunked_attention
from ptqsam.instrument.instrument import attached_quantizers, sites
from ptqsam.instrument.modes import disabled, dropping, quantizing
from ptqsam.models.blocks import touches_encoder
from ptqsam.passes import SampleLoop
from ptqsam.progress import bar
from ptqsam.reconstruction.cache import TensorCache, capture_inputs, capture_outputs
from ptqsam.reconstruction.config import ReconstructionConfig
from ptqsam.reconstruction.response import continuation
from ptqsam.reconstruction.sharded import SampleShard, fetch, share_step
from ptqsam.reconstruction.units import ReconUnit, reconstruction_units, unit_module
from ptqsam.trees import tree_map, tree_tensors
from quantizers import Quantizer
from quantizers.modules.base import overridden
from quantizers.modules.uniform import UniformQuantizer
from quantizers.parts.adaround import rounding_regulariser
from quantizers.parts.rounding import NearestRounding

log = logging.getLogger("ptqsam")

#: key of the reference-bug settings in the saved calibration state's ``extra``
REFERENCE_BUG_KEY = "reference_drop_bug"


def reconstruct(model: Sam, samples: list[CalibrationSample], config: ReconstructionConfig,
                progress: bool = True, only: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Reconstruct every unit of the calibrated ``model`` on ``samples`` (or the units named in
    ``only``); returns a record per unit: iterations, seconds (all) and seconds per optimisation
    step, output MSE against float before and after, first and last loss. Under ``torchrun`` each
    process holds its shard of ``samples`` (all of them given on every process)."""
    if config.reference_drop_bug and distributed.active():
        # each process would draw the dropped elements of its shard's captures from a fresh generator
        raise DistributedError("reference_drop_bug cannot be reproduced under torchrun (the dropped elements "
                               "depend on the one-process order of the captures); reconstruct in one process")
    shard, loop = _sharded_loop(model, samples)
    units = reconstruction_units(model, config)
    position = {unit.name: index for index, unit in enumerate(units)}  # seeds a unit's drop masks, ``only`` or not
    if only is not None:
        unknown = sorted(set(only) - set(position))
        if unknown:
            raise CalibrationError(f"no reconstruction unit named {unknown}; units: {list(position)}")
        units = [unit for unit in units if unit.name in set(only)]
    if config.response_weight > 0:
        without = [unit.name for unit in units if continuation(model, unit)[0] is None]
        if without and distributed.is_main():
            log.warning("%d of %d reconstruction units have no response term (%s): they reconstruct their output "
                        "alone", len(without), len(units), ", ".join(without[:4]) + (" ..." if len(without) > 4 else ""))
    records = {}
    with _frozen_parameters(model):
        for unit in bar(units, enabled=progress, desc="reconstruction", leave=False):
            records[unit.name] = _reconstruct_unit(model, loop, shard, unit, config, position[unit.name], progress)
            if config.reference_drop_bug:  # as the reference: the later units' inputs are cached with it on
                apply_reference_drop_bug(model, reference_bug_sites(model, [unit]), config.drop_prob, config.seed)
    if config.reference_drop_bug:  # fresh generators: the masks a loaded state draws
        apply_reference_drop_bug(model, reference_bug_sites(model, units), config.drop_prob, config.seed)
    return records


def unit_output_errors(model: Sam, samples: list[CalibrationSample],
                       config: ReconstructionConfig = ReconstructionConfig()) -> dict[str, float]:
    """Each unit's output MSE against the float model's on ``samples``, its inputs from the quantized
    model as at evaluation (no dropping): on images reconstruction was not fitted on, whether it
    carried over. Units as ``config.unit`` makes them; under ``torchrun`` each process holds its shard."""
    config = replace(config, drop_prob=0.0, response_weight=0.0, loss="mse", reference_drop_bug=False)
    shard, loop = _sharded_loop(model, samples)
    errors = {}
    for unit in reconstruction_units(model, config):
        data = _UnitData(loop, shard, model, unit, config)
        try:
            errors[unit.name] = _output_mse(unit_module(model, unit), unit, data)
        finally:
            data.close()
    return errors


def _sharded_loop(model: Sam, samples: list[CalibrationSample]) -> tuple[SampleShard, SampleLoop]:
    """This process's shard of ``samples`` and the loop over it (the encoder float unless quantized)."""
    shard = SampleShard(len(samples))
    loop = SampleLoop(model, samples[shard.start:shard.stop], progress=False, first_index=shard.start,
                      encoder_float=not touches_encoder(attached_quantizers(model)))
    return shard, loop


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


def _reconstruct_unit(model: Sam, loop: SampleLoop, shard: SampleShard, unit: ReconUnit,
                      config: ReconstructionConfig, index: int, progress: bool) -> dict[str, Any]:
    start = time.perf_counter()
    module = unit_module(model, unit)
    quantizers = attached_quantizers(model)
    kinds = {name: site.kind for name, site in sites(model).items()}
    weights = {n: quantizers[n] for n in unit.quantizers if kinds[n] == "weight"}
    activations = {n: quantizers[n] for n in unit.quantizers if kinds[n] != "weight"}
    data = _UnitData(loop, shard, model, unit, config)
    try:
        with _calibrated_on_error({**weights, **activations}):
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
        spilled = sum(distributed.all_gather_parts([data.spilled]))
    finally:
        data.close()
    return {"iterations": config.iterations, "seconds": round(time.perf_counter() - start, 3),
            "seconds_per_iteration": round(loop_seconds / config.iterations, 5), "mse_before": before,
            "mse_after": after, "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None, "weights_rounded": len(round_parts),
            "scales_learned": len(a_params), "spilled_to_disk": spilled, "response": data.response is not None}


class _Batch(NamedTuple):
    """Drawn samples' cached items, joined along dim 0 (None for what is not cached)."""

    inputs: Any
    float_inputs: Any
    targets: Any
    grads: Any
    decoder_calls: Any
    target_responses: Any


class _UnitData:
    """The unit's cached inputs (quantized prefix; float prefix for QDrop and the response term),
    float targets, for the Fisher loss the targets' gradients and, for the response term
    (:mod:`.response`), the float responses and the mask decoder's calls, of this process's shard
    of the samples (each sample's response is computed by the process holding it)."""

    def __init__(self, loop: SampleLoop, shard: SampleShard, model: Sam, unit: ReconUnit,
                 config: ReconstructionConfig) -> None:
        budget = config.cache_bytes
        self.shard = shard
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
        self.target_responses: TensorCache | None = None
        self.target_responses = self._float_responses(budget) if self.response is not None else None

    @torch.no_grad()
    def _float_responses(self, budget: int) -> TensorCache:
        responses = TensorCache(budget)
        with disabled(self.root):
            for i in range(self.shard.start, self.shard.stop):
                batch = self.batch([i])
                args, kwargs = batch.float_inputs
                responses.append(self.response(batch.targets, args, kwargs, batch.decoder_calls))
        return responses

    def response_loss(self, output: Any, args: tuple, kwargs: dict, batch: _Batch) -> torch.Tensor:
        """The response of ``output`` against the float response of the same samples (``batch``)."""
        response = self.response(output, args, kwargs, batch.decoder_calls)
        return reconstruction_loss(response, batch.target_responses, None, -1)

    def _columns(self) -> tuple[TensorCache | None, ...]:
        return (self.inputs, self.float_inputs, self.targets, self.grads, self.decoder_calls,
                self.target_responses)

    @property
    def caches(self) -> list[TensorCache]:
        return [c for c in self._columns() if c is not None]

    @property
    def spilled(self) -> int:
        return sum(c.spilled for c in self.caches)

    def item(self, index: int) -> tuple:
        """The cached items of sample ``index`` (held by this process), in :class:`_Batch` order."""
        local = self.shard.local(index)
        return tuple(None if cache is None else cache[local] for cache in self._columns())

    def batch(self, indices: list[int], worker: int | None = None) -> _Batch | None:
        """Samples ``indices`` (whole-set indices) joined, on the process ``worker`` (default: this
        one, holding them all); under ``torchrun`` every process calls it and the samples the worker
        does not hold are sent to it; None on the other processes."""
        worker = distributed.rank() if worker is None else worker
        fetched = fetch(self.shard, indices, worker, self.item)
        if distributed.rank() != worker:
            return None
        items = [fetched[i] if i in fetched else self.item(i) for i in indices]
        return _Batch(*(None if column[0] is None else self._join(list(column)) for column in zip(*items)))

    def _join(self, items: list[Any]) -> Any:
        if len(items) == 1:
            return tree_map(lambda t: t.to(self.device), items[0])
        return _concatenate(items, self.device)

    def close(self) -> None:
        for cache in self.caches:
            cache.close()


def _optimise(module: nn.Module, unit: ReconUnit, data: _UnitData, config: ReconstructionConfig, index: int,
              round_parts: list, w_params: list, a_params: list, activations: dict[str, Quantizer],
              progress: bool) -> list[float]:
    """The optimisation loop of one unit; returns the loss at every step. Each step is computed by
    the process holding its first drawn sample, the others following (:mod:`.sharded`). The
    activation quantizers' milestones (:meth:`~quantizers.Quantizer.milestones`) are met at their
    fraction of the iterations on every process (all of them, in order, when nothing is learned)."""
    events = _milestones(activations, config.iterations)
    if not (w_params or a_params):
        for _, quantizer, number in events:
            quantizer.at_milestone(number)
        return []
    optimisers = [torch.optim.Adam(params, lr=lr) for params, lr in
                  ((w_params, config.weight_lr), (a_params, config.activation_lr)) if params]
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimisers[-1], T_max=config.iterations, eta_min=0.0) \
        if a_params else None
    generator = torch.Generator().manual_seed(_name_seed(config.seed, unit.name))
    drop = dropping(data.root, config.drop_prob, list(activations), seed=config.seed + index) \
        if config.drop_prob > 0 and activations else contextlib.nullcontext({})
    losses = []
    steps = bar(range(config.iterations), enabled=progress, desc=unit.name, leave=False, mininterval=1.0)
    with drop as dropped, quantizing(data.root, list(unit.quantizers), allow_drop=True), torch.enable_grad(), \
            chunked_attention(data.root, config.query_chunk or None):
        generators = [generator] + [q.drop_generator for q in dropped.values()]
        for step in steps:
            while events and events[0][0] == step:
                _, quantizer, number = events.pop(0)
                quantizer.at_milestone(number)
                if a_params and config.learn_activations:
                    a_params = [p for q in activations.values() for p in q.learn()]
                    _replace_parameters(optimisers[-1], a_params)
            indices = torch.randint(data.shard.count, (config.batch_size,), generator=generator).tolist()
            worker = data.shard.owner(indices[0])
            batch = data.batch(indices, worker)
            for optimiser in optimisers:
                optimiser.zero_grad(set_to_none=True)
            step_losses = None
            if batch is not None:
                step_losses = _step_loss(module, unit, data, batch, config, step, round_parts, generator)
                step_losses[0].backward()
            loss, output_loss = share_step(w_params + a_params, step_losses, worker, generators)
            losses.append(loss)
            for optimiser in optimisers:
                optimiser.step()
            if schedule is not None:
                schedule.step()
            if progress and step % 50 == 0:
                steps.set_postfix(loss=f"{losses[-1]:.4g}", output=f"{output_loss:.4g}")
    return losses


def _step_loss(module: nn.Module, unit: ReconUnit, data: _UnitData, batch: _Batch, config: ReconstructionConfig,
               step: int, round_parts: list, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, output loss)`` of one step's batch: the output loss, plus the weighted response term
    and, after the warm-up, the rounding regulariser."""
    args, kwargs = _unit_inputs(batch, config, generator)
    output = module(*args, **kwargs)
    output_loss = reconstruction_loss(output, batch.targets, batch.grads, unit.channel_axis)
    loss = output_loss
    if data.response is not None:
        loss = loss + config.response_weight * data.response_loss(output, args, kwargs, batch)
    if round_parts and config.regularised(step):
        beta = config.beta(step)
        loss = loss + config.round_loss_weight * sum(rounding_regulariser(p.soft_values(), beta) for p in round_parts)
    return loss, output_loss


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
    output tensors; with ``grads`` (g) weighted by ``(|g| + 1)²``, BRECQ's Fisher diagonal as its
    code computes it. The ``+ 1`` is not decoration: SAM's task loss is a mean over every mask pixel,
    so g is about 1e-6 at a block output and ``g²`` alone would leave a loss of ~1e-12 that Adam
    cannot follow (the rounding regulariser alone would then decide the rounding).

    The channel axis is the unit's own (the last one in SAM's (B, H, W, C) encoder blocks), as BRECQ
    and QDrop intend; PTQ4SAM's code sums dim 1 whatever the layout (H in the encoder), which
    weighs the output term C/H times less against the regulariser (12× for SAM-B)."""
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
            error = error * (grad.abs() + 1).square()
        total = total + error.sum(dim=channel_axis).mean()
    return total


def _unit_inputs(batch: _Batch, config: ReconstructionConfig, generator: torch.Generator) -> tuple[tuple, dict]:
    """The quantized-prefix inputs of the drawn samples; with QDrop each element is the float
    model's input instead with probability ``drop_prob``."""
    if batch.float_inputs is None or config.drop_prob == 0:
        return batch.inputs
    mixed = [torch.where(torch.rand(q.shape, generator=generator).to(q.device) < config.drop_prob, f, q)
             for q, f in zip(tree_tensors(batch.inputs), tree_tensors(batch.float_inputs))]
    position = iter(mixed)
    return tree_map(lambda t: next(position), batch.inputs)


@torch.no_grad()
def _output_mse(module: nn.Module, unit: ReconUnit, data: _UnitData) -> float:
    """Mean squared error of the unit's quantized output against the float targets, on the
    quantized-prefix inputs of every sample (no dropping); under ``torchrun`` the per-sample sums
    of every process are added in the one-process order."""
    sums = []
    with quantizing(data.root, list(unit.quantizers), allow_drop=True), _no_dropping(data.root, unit.quantizers):
        for i in range(data.shard.start, data.shard.stop):
            batch = data.batch([i])
            args, kwargs = batch.inputs
            for out, ref in zip(tree_tensors(module(*args, **kwargs)), tree_tensors(batch.targets)):
                sums.append((float((out - ref).double().square().sum()), out.numel()))
    total, count = 0.0, 0
    for value, numel in distributed.all_gather_parts(sums):
        total += value
        count += numel
    return total / count


def _no_dropping(model: nn.Module, names: tuple[str, ...]) -> contextlib.AbstractContextManager:
    quantizers = attached_quantizers(model)
    return overridden([quantizers[n] for n in names], "drop_prob", 0.0)


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
def _calibrated_on_error(quantizers: dict[str, Quantizer]) -> Iterator[None]:
    """Should the block fail, ``quantizers`` are put back as calibrated: learned parameters back to
    buffers with their calibrated values, soft or hardened AdaRound back to the rounding it
    replaced. A half-learned unit would otherwise evaluate without complaint (weights off the grid)
    for a caller that catches the error."""
    saved = {name: ({key: value.clone() for key, value in q.state_dict().items()}, getattr(q, "rounding", None))
             for name, q in quantizers.items()}
    try:
        yield
    except BaseException:
        for name, quantizer in quantizers.items():
            state, rounding = saved[name]
            quantizer.freeze()
            if rounding is not None:
                quantizer.rounding = rounding
            now = quantizer.state_dict()
            for key, value in state.items():  # changed ones only: observers hold inference tensors
                if now[key].shape != value.shape or not torch.equal(now[key], value):
                    owner, _, buffer = key.rpartition(".")
                    quantizer.get_submodule(owner).register_buffer(buffer, value)
        raise


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
