"""Instrument a model (sites on every quantizable tensor) and attach recipe-built quantizers."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from ptqsam.instrument.attention import SITED_BLOCKS
from ptqsam.instrument.layers import SITED_LAYERS
from ptqsam.instrument.recipe import Recipe, load_recipe, matches_any
from ptqsam.instrument.sites import SITE_SUFFIX, Site, add_sites
from quantizers import Quantizer, build_quantizer

#: original module class -> instrumented subclass (swapped in place by :func:`instrument`).
SITED_CLASSES: dict[type, type] = {**SITED_LAYERS, **SITED_BLOCKS}
ORIGINAL_CLASSES: dict[type, type] = {sited: original for original, sited in SITED_CLASSES.items()}

log = logging.getLogger("ptqsam")


def instrument(model: nn.Module) -> nn.Module:
    """Give every quantizable tensor of ``model`` a :class:`Site` (in place, idempotent).

    Linear / Conv2d / ConvTranspose2d layers, the attention blocks and the mask decoder have their
    class swapped for an instrumented subclass; parameters, buffers and state_dict keys are
    unchanged. Sites carry no quantizer until :func:`attach`. Returns ``model``.
    """
    for _, module in list(run_modules(model)):
        sited = SITED_CLASSES.get(type(module))
        if sited is not None:
            module.__class__ = sited
            add_sites(module, sited.SITE_ROLES)
    for name, site in sites(model).items():
        site.name = name
    return model


def run_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``named_modules()`` of ``model`` without the children that a module's forward never runs:
    those its class lists in ``UNUSED_CHILDREN`` (e.g. TinyViT's classification head, kept so that
    official checkpoints load strictly). They get no sites and count in no cost."""
    unused: list[str] = []
    for path, module in model.named_modules():
        if any(path == u or path.startswith(u + ".") for u in unused):
            continue
        unused += [f"{path}.{child}" if path else child for child in getattr(module, "UNUSED_CHILDREN", ())]
        yield path, module


def unused_parameters(model: nn.Module) -> int:
    """How many parameters ``model`` holds outside :func:`run_modules` (never used by its forward)."""
    used = {id(p) for _, module in run_modules(model) for p in module.parameters(recurse=False)}
    return sum(p.numel() for p in model.parameters() if id(p) not in used)


def sites(model: nn.Module) -> dict[str, Site]:
    """``name -> site`` in module-registration order; names are ``<owner path>.<role>``."""
    return {
        path.removesuffix(SITE_SUFFIX): module
        for path, module in model.named_modules()
        if isinstance(module, Site)
    }


def site_names(model: nn.Module) -> list[str]:
    """The names :func:`instrument` gives (or gave) the sites of ``model``, without instrumenting it
    (works on a model built on the "meta" device)."""
    names = []
    for path, module in run_modules(model):
        sited = SITED_CLASSES.get(type(module), type(module) if type(module) in ORIGINAL_CLASSES else None)
        if sited is not None:
            names += [f"{path}.{role}" if path else role for role in sited.SITE_ROLES]
    return names


def check_recipe_sites(model: nn.Module, recipe: Recipe | str | Path) -> Recipe:
    """RecipeError for a rule of ``recipe`` that selects no site of ``model``; a warning (once per
    process) for each ``keep_float`` or transform pattern matching nothing (see
    :meth:`Recipe.check_sites`). Returns the recipe."""
    recipe = load_recipe(recipe)
    for pattern in recipe.check_sites(site_names(model), (name for name, _ in model.named_modules())):
        _warn_once(f"recipe {recipe.name!r}: {pattern} matches nothing in this model (meant for another model?)")
    return recipe


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    log.warning(message)


def attached_quantizers(model: nn.Module) -> dict[str, Quantizer]:
    """``name -> quantizer`` of the sites that carry one."""
    return {name: site.quantizer for name, site in sites(model).items() if site.attached is not None}


def attach_quantizer(site: Site, quantizer: Quantizer) -> Quantizer:
    """Make ``site`` return ``quantizer(x, *context)`` (replacing any quantizer it had)."""
    site.quantizer = quantizer
    return quantizer


def detach_site(site: Site) -> None:
    """Remove the quantizer of one site (no-op when it has none)."""
    if site.attached is not None:
        del site.quantizer


def detach(model: nn.Module) -> None:
    """Remove every attached quantizer; the model computes in float again."""
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

    Quantizers attached earlier are removed first. A rule of ``recipe`` that selects no site of
    the model raises RecipeError (:func:`check_recipe_sites`).

    Arguments:
      model: a SAM-family model (instrumented here if it is not yet).
      recipe: a :class:`Recipe`, a shipped recipe name or a recipe YAML path.
      w_bits: bit-width replacing the recipe's ``"W"`` placeholder.
      a_bits: bit-width replacing the recipe's ``"A"`` placeholder.
      exclude: extra fnmatch patterns on site names kept in float (e.g. ``"image_encoder.*"``).

    Returns:
      ``name -> quantizer`` of the attached sites.
    """
    recipe = check_recipe_sites(model, recipe)
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
