"""Instrumentation: sites on every quantizable tensor, recipes, quantizer modes, calibrated state.

``instrument(model)`` swaps layer/attention classes for subclasses that route each quantizable tensor
through a :class:`Site`; ``attach(model, recipe, w_bits, a_bits)`` hangs recipe-built quantizers on
the selected sites; ``observing`` / ``quantizing`` / ``disabled`` switch their modes;
``save_state`` / ``load_state`` persist calibration.
"""

from ptqsam.instrument.instrument import (
    SiteRow,
    attach,
    attach_quantizer,
    attached_quantizers,
    detach,
    detach_site,
    instrument,
    site_inventory,
    sites,
)
from ptqsam.instrument.modes import disabled, observing, quantizing, select_quantizers, switched
from ptqsam.instrument.recipe import Recipe, Rule, Transform, load_recipe, parse_bits, shipped_recipes
from ptqsam.instrument.sites import SITE_KINDS, Site
from ptqsam.instrument.state import StateInfo, load_state, save_state

__all__ = [
    "SITE_KINDS",
    "Recipe",
    "Rule",
    "Site",
    "SiteRow",
    "StateInfo",
    "Transform",
    "attach",
    "attach_quantizer",
    "attached_quantizers",
    "detach",
    "detach_site",
    "disabled",
    "instrument",
    "load_recipe",
    "load_state",
    "observing",
    "parse_bits",
    "quantizing",
    "save_state",
    "select_quantizers",
    "shipped_recipes",
    "site_inventory",
    "sites",
    "switched",
]
