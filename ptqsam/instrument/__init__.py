"""Instrumentation: sites on every quantizable tensor, recipes, quantizer modes, calibrated state.

``instrument(model)`` swaps layer/attention classes for subclasses that route each quantizable tensor
through a :class:`Site` and declare their products (:mod:`.units`); ``attach(model, recipe, w_bits,
a_bits)`` hangs recipe-built quantizers on the selected sites; ``observing`` / ``quantizing`` /
``disabled`` / ``dropping`` switch their modes; ``save_state`` / ``load_state`` persist calibration;
``forward_hooks`` owns every temporary hook.
"""

from ptqsam.instrument.hooks import forward_hooks
from ptqsam.instrument.instrument import (
    attach,
    attach_quantizer,
    attached_quantizers,
    detach,
    detach_site,
    instrument,
    sites,
)
from ptqsam.instrument.inventory import SiteRow, site_inventory
from ptqsam.instrument.modes import disabled, dropping, observing, quantizing, select_quantizers, switched
from ptqsam.instrument.recipe import Recipe, Rule, Transform, load_recipe, parse_bits, shipped_recipes
from ptqsam.instrument.sites import SITE_KINDS, Site
from ptqsam.instrument.state import StateInfo, load_state, save_state
from ptqsam.instrument.units import Product, Unit, model_units

__all__ = [
    "SITE_KINDS",
    "Product",
    "Recipe",
    "Rule",
    "Site",
    "SiteRow",
    "StateInfo",
    "Transform",
    "Unit",
    "attach",
    "attach_quantizer",
    "attached_quantizers",
    "detach",
    "detach_site",
    "disabled",
    "dropping",
    "forward_hooks",
    "instrument",
    "load_recipe",
    "load_state",
    "model_units",
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
