"""Instrument a model (sites on every quantizable tensor) and attach recipe-built quantizers."""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from typing import Iterable, NamedTuple

import torch
from torch import nn

from ptqsam.instrument.attention import SITED_BLOCKS
from ptqsam.instrument.layers import SITED_LAYERS
from ptqsam.instrument.recipe import Recipe, load_recipe, matches_any
from ptqsam.instrument.sites import SITE_SUFFIX, Site, add_sites
from quantizers import Mode, Quantizer, build_quantizer

#: original module class -> instrumented subclass (swapped in place by :func:`instrument`).
SITED_CLASSES: dict[type, type] = {**SITED_LAYERS, **SITED_BLOCKS}
ORIGINAL_CLASSES: dict[type, type] = {sited: original for original, sited in SITED_CLASSES.items()}


def instrument(model: nn.Module) -> nn.Module:
    """Give every quantizable tensor of ``model`` a :class:`Site` (in place, idempotent).

    Linear / Conv2d / ConvTranspose2d layers, the attention blocks and the mask decoder have their
    class swapped for an instrumented subclass; parameters, buffers and state_dict keys are
    unchanged. Sites carry no quantizer until :func:`attach`. Returns ``model``.
    """
    for module in list(model.modules()):
        sited = SITED_CLASSES.get(type(module))
        if sited is not None:
            module.__class__ = sited
            add_sites(module, sited.SITE_ROLES)
    for name, site in sites(model).items():
        site.name = name
    return model


def sites(model: nn.Module) -> dict[str, Site]:
    """``name -> site`` in module-registration order; names are ``<owner path>.<role>``."""
    return {
        path.removesuffix(SITE_SUFFIX): module
        for path, module in model.named_modules()
        if isinstance(module, Site)
    }


def attached_quantizers(model: nn.Module) -> dict[str, Quantizer]:
    """``name -> quantizer`` of the sites that carry one."""
    return {name: site.quantizer for name, site in sites(model).items() if _has_quantizer(site)}


def _has_quantizer(site: Site) -> bool:
    return "quantizer" in site._modules


def _quantize_output(site: Site, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return site.quantizer(output, *args[1:])


def attach_quantizer(site: Site, quantizer: Quantizer) -> Quantizer:
    """Make ``site`` return ``quantizer(x, *context)`` (replacing any quantizer it had)."""
    detach_site(site)
    site.quantizer = quantizer
    site._quantizer_hook = site.register_forward_hook(_quantize_output)
    return quantizer


def detach_site(site: Site) -> None:
    """Remove the quantizer and hook of one site (no-op when it has none)."""
    if _has_quantizer(site):
        site._quantizer_hook.remove()
        del site._quantizer_hook
        del site.quantizer


def detach(model: nn.Module) -> None:
    """Remove every attached quantizer and its hook; the model computes in float again."""
    for site in sites(model).values():
        detach_site(site)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless model)."""
    return next(model.parameters(), torch.empty(0)).device


def attach(
    model: nn.Module,
    recipe: Recipe | str | Path,
    w_bits: int,
    a_bits: int,
    exclude: Iterable[str] = (),
) -> dict[str, Quantizer]:
    """Instrument ``model`` and attach a quantizer (mode OFF) to each site ``recipe`` selects.

    Quantizers attached earlier are removed first.

    Arguments:
      model: a SAM-family model (instrumented here if it is not yet).
      recipe: a :class:`Recipe`, a shipped recipe name or a recipe YAML path.
      w_bits: bit-width replacing the recipe's ``"W"`` placeholder.
      a_bits: bit-width replacing the recipe's ``"A"`` placeholder.
      exclude: extra fnmatch patterns on site names kept in float (e.g. ``"image_encoder.*"``).

    Returns:
      ``name -> quantizer`` of the attached sites.
    """
    recipe = load_recipe(recipe)
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    instrument(model)
    detach(model)
    all_sites = sites(model)
    selected = [name for name in all_sites if not matches_any(name, exclude)]
    device = model_device(model)
    return {
        name: attach_quantizer(all_sites[name], build_quantizer(spec).to(device))
        for name, spec in recipe.specs_for(selected, w_bits, a_bits).items()
    }


class SiteRow(NamedTuple):
    """One row of :func:`site_inventory`."""

    name: str
    kind: str
    shape: tuple[int, ...] | None  #: None when the probe forward does not reach the site
    owner: str  #: class name of the module the site belongs to (the original, not instrumented)


def site_inventory(model: nn.Module, image_size: int | None = None) -> list[SiteRow]:
    """Every site of ``model`` with the shape of the tensor it sees.

    Shapes come from one probe forward: a ``image_size``² image (default: the encoder's
    ``img_size``), one box prompt and a mask input, multimask output. The forward runs on a copy of
    the model on the "meta" device (no data, no compute); if that fails it runs on ``model``
    itself with every quantizer off, under ``torch.no_grad``.
    """
    instrument(model)
    size = image_size if image_size is not None else model.image_encoder.img_size
    try:
        shapes = _probe_shapes(_meta_copy(model), size)
    except (RuntimeError, NotImplementedError):
        from ptqsam.instrument.modes import disabled  # modes imports this module

        with disabled(model):
            shapes = _probe_shapes(model, size)
    rows = []
    for name, site in sites(model).items():
        owner = type(model.get_submodule(name.rpartition(".")[0]))
        rows.append(SiteRow(name, site.kind, shapes.get(name), ORIGINAL_CLASSES.get(owner, owner).__name__))
    return rows


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers live on "meta" (nothing is copied), quantizers off."""
    memo: dict[int, object] = {}
    for param in model.parameters():
        memo[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), param.requires_grad)
    for buffer in model.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    meta = copy.deepcopy(model, memo)
    for quantizer in attached_quantizers(meta).values():
        quantizer.mode = Mode.OFF
    return meta


@torch.no_grad()
def _probe_shapes(model: nn.Module, image_size: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, site: Site, args: tuple, output: torch.Tensor) -> None:
        shapes.setdefault(name, tuple(output.shape))

    handles = [site.register_forward_hook(partial(record, name)) for name, site in sites(model).items()]
    try:
        device = model_device(model)
        embedding = model.image_encoder(torch.zeros(1, 3, image_size, image_size, device=device))
        box = torch.tensor([[0.0, 0.0, image_size / 2, image_size / 2]], device=device)
        mask = torch.zeros(1, 1, *model.prompt_encoder.mask_input_size, device=device)
        sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=mask)
        model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)
    finally:
        for handle in handles:
            handle.remove()
    return shapes
