"""SAQ-SAM's perceptual-consistency clipping (PCC) as a calibration pass.

Every quantizer whose spec asks for ``search: pcc`` (SAQ-SAM: the inputs of the mask decoder's
q_proj / k_proj and the q / k operands, in every decoder attention) gets the clipping percentile
that best keeps its attention's salient entries (:mod:`quantizers.search.pcc`): on the first
calibration image(s), for each candidate p the quantizer clips to the p-quantiles of its current
input, and the candidate with the lowest ``1 − IoU`` between the float and the quantized attention
masks wins (ties: the earlier, i.e. smaller p). Greedy, in forward order, the quantizers already
chosen quantizing and everything else float; ``rounds`` passes over all of them. The chosen
quantizers stay calibrated (their observers never run) and quantize during the statistics pass
that follows, as in SAQ-SAM's code.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ptqsam.data.samples import CalibrationSample
from ptqsam.errors import CalibrationError
from ptqsam.instrument.attention import AttentionSites
from ptqsam.instrument.hooks import forward_hooks
from ptqsam.instrument.instrument import attached_quantizers, sites
from ptqsam.instrument.modes import disabled, quantizing
from ptqsam.models.blocks import touches_encoder
from ptqsam.passes import SampleLoop, StopForward, each_sample
from quantizers.functional.uniform import qparams_from_minmax
from quantizers.search.pcc import attention_masks, mask_iou_loss, percentile_ranges


def pcc_sites(model: nn.Module) -> list[str]:
    """Sites whose quantizer asks for the PCC search, in model order."""
    return [name for name, q in attached_quantizers(model).items() if q.spec.search == "pcc"]


def pcc_pass(model: nn.Module, samples: list[CalibrationSample], names: list[str]) -> dict[str, dict]:
    """Choose and install the clipping range of every quantizer at ``names``; returns per site the
    chosen percentile, its loss and the loss of every candidate (last round)."""
    quantizers = attached_quantizers(model)
    options = quantizers[names[0]].spec.search_config
    owners = {name: attention_of(model, name) for name in names}
    modules = dict(model.named_modules())
    encoder_float = not touches_encoder(owners.values())
    loop = SampleLoop(model, samples[: options.images], encoder_float=encoder_float, progress=False)
    with disabled(model):
        reference = {owner: _probs(loop, modules[owner]) for owner in set(owners.values())}
    chosen: list[str] = []
    records = {}
    for _ in range(options.rounds):
        for name in names:
            config, quantizer = quantizers[name].spec.search_config, quantizers[name]
            with quantizing(model, [n for n in chosen if n != name]):
                lows, highs = percentile_ranges(_inputs(loop, sites(model)[name]), config.percentiles)
                calls = _calls(loop, modules[owners[name]])
            expected = [attention_masks(p, config.threshold) for p in reference[owners[name]]]
            losses = []
            with quantizing(model, list({*chosen, name})):
                for low, high in zip(lows, highs):
                    quantizer.set_qparams(*qparams_from_minmax(low, high, quantizer.spec.bits, False))
                    probs = [_attention_probs(modules[owners[name]], call) for call in calls]
                    losses.append(sum(mask_iou_loss(e, attention_masks(p, config.threshold))
                                      for e, p in zip(expected, probs)) / len(probs))
            best = min(range(len(losses)), key=lambda i: (losses[i], i))
            quantizer.set_qparams(*qparams_from_minmax(lows[best], highs[best], quantizer.spec.bits, False))
            if name not in chosen:
                chosen.append(name)
            records[name] = {"attention": owners[name], "percentile": config.percentiles[best],
                             "loss": losses[best], "losses": losses}
    return records


def attention_of(model: nn.Module, site_name: str) -> str:
    """The path of the attention block holding ``site_name`` (CalibrationError when none does)."""
    modules = dict(model.named_modules())
    parts = site_name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        path = ".".join(parts[:end])
        if isinstance(modules.get(path), AttentionSites):
            return path
    raise CalibrationError(f"the pcc search clips quantizers inside attention blocks; {site_name!r} is in none")


def _probs(loop: SampleLoop, attention: nn.Module) -> list[torch.Tensor]:
    """The attention probabilities of ``attention`` for every sample."""
    found: list[torch.Tensor] = []
    with forward_hooks([(attention.probs_site, _keeper(found, "args"))], pre=True):
        each_sample(loop, lambda sample: loop.decode(loop.embed(sample), sample))
    return found


def _calls(loop: SampleLoop, attention: nn.Module) -> list[tuple]:
    """The ``(args, kwargs)`` the attention receives for every sample (its inputs do not depend on
    its own quantizers, so each candidate only re-runs the attention)."""
    found: list[tuple] = []
    with forward_hooks([(attention, _keeper(found, "call", stop=True))], pre=True, with_kwargs=True):
        each_sample(loop, lambda sample: loop.decode(loop.embed(sample), sample))
    return found


@torch.no_grad()
def _attention_probs(attention: nn.Module, call: tuple) -> torch.Tensor:
    found: list[torch.Tensor] = []
    with forward_hooks([(attention.probs_site, _keeper(found, "args", stop=True))], pre=True):
        try:
            attention(*call[0], **call[1])
        except StopForward:
            pass
    return found[0]


def _inputs(loop: SampleLoop, site: nn.Module) -> torch.Tensor:
    """Everything the site receives over the samples, flattened into one tensor."""
    found: list[torch.Tensor] = []
    with forward_hooks([(site, _keeper(found, "args", stop=True))], pre=True):
        each_sample(loop, lambda sample: loop.decode(loop.embed(sample), sample))
    return torch.cat([x.reshape(-1) for x in found])


def _keeper(found: list, what: str, stop: bool = False) -> Callable:
    """A pre-hook appending its first argument (``args``) or its whole call (``call``) to ``found``,
    then ending the forward when ``stop``."""
    def hook(module: nn.Module, args: tuple, kwargs: dict | None = None) -> None:
        found.append(args[0].detach() if what == "args" else
                     (tuple(a.detach() for a in args), {k: v.detach() for k, v in (kwargs or {}).items()}))
        if stop:
            raise StopForward
    return hook
