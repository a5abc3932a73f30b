"""Mixed-precision recipes: a base recipe's quantizer specs with explicit bits per site.

:func:`mixed_recipe` turns a ``site -> bits`` assignment into a recipe the recipe system runs
unchanged: one rule per (base rule, bits) naming its sites exactly, with the base rule's spec and
an integer ``bits`` instead of ``W``/``A``; the base recipe's keep-float list, transforms and
imports are kept, and its sites absent from the assignment stay float. No rule holds a
placeholder, so the bit-widths a caller passes with the recipe (``--bits``) change nothing.

:func:`assemble` builds the mixed model from models calibrated at uniform bit-widths instead (each
site takes the quantizer calibrated at its bits). For recipes whose calibration is per-site
statistics (every observer sees float tensors: minmax, ptq4sam) that is what calibrating the
mixed recipe gives; a search coupling a product's two operands (ptq4vit's Hessian search) would
calibrate them differently.
"""

from __future__ import annotations

import copy
import glob
from pathlib import Path
from typing import Mapping, Sequence

from segment_anything.modeling import Sam

from ptqsam.errors import AllocationError, RecipeError
from ptqsam.instrument import Recipe, Rule, attach_quantizer, attached_quantizers, detach_site, sites
from ptqsam.instrument.recipe import matches_any
from ptqsam.io import write_or_rescue
from quantizers import Quantizer


def mixed_recipe(base: Recipe, bits_by_site: Mapping[str, int], name: str, description: str = "") -> Recipe:
    """``base`` with the bits of ``bits_by_site`` written into one rule per (base rule, bits)."""
    members: dict[tuple[int, int], list[str]] = {}
    for site, bits in bits_by_site.items():
        members.setdefault((base_rule_index(base, site), bits), []).append(site)
    rules = tuple(Rule(tuple(glob.escape(s) for s in names), {**base.rules[index].spec, "bits": bits})
                  for (index, bits), names in sorted(members.items()))
    return Recipe(name, description, rules, base.keep_float, base.transforms, base.imports)


def base_rule_index(recipe: Recipe, site: str) -> int:
    """The index of the rule of ``recipe`` that quantizes ``site`` (RecipeError when none does)."""
    if not matches_any(site, recipe.keep_float):
        for index, rule in enumerate(recipe.rules):
            if rule.matches(site):
                return index
    raise RecipeError(f"recipe {recipe.name!r} does not quantize site {site!r}")


def write_recipe(path: str | Path, recipe: Recipe, comments: Sequence[str] = ()) -> Path:
    """The recipe's YAML under ``# comment`` lines (budgets, predicted costs), written atomically
    (or to a rescue file named by the error when ``path`` cannot be written)."""
    text = "".join(f"# {line}\n" for comment in comments for line in comment.splitlines()) + recipe.to_yaml()
    return write_or_rescue(path, lambda file: file.write(text))


def assemble(calibrated: Sequence[Sam], bits_by_site: Mapping[str, int]) -> Sam:
    """A copy of ``calibrated[0]`` whose site ``s`` carries a copy of the quantizer calibrated at
    ``bits_by_site[s]`` (found among the ``calibrated`` models, e.g. one per uniform bit-width);
    sites absent from ``bits_by_site`` carry none (float)."""
    if not calibrated:
        raise AllocationError("assemble needs at least one calibrated model")
    sources: dict[tuple[str, int], Quantizer] = {}
    for model in calibrated:
        for name, quantizer in attached_quantizers(model).items():
            sources.setdefault((name, quantizer.spec.bits), quantizer)
    model = copy.deepcopy(calibrated[0])
    model_sites, attached = sites(model), attached_quantizers(model)
    unknown = [name for name in bits_by_site if name not in attached]
    if unknown:
        raise AllocationError(f"site(s) {unknown[:5]} carry no calibrated quantizer")
    for name in attached:
        if name not in bits_by_site:
            detach_site(model_sites[name])
            continue
        source = sources.get((name, bits_by_site[name]))
        if source is None:
            raise AllocationError(f"no model was calibrated at {bits_by_site[name]} bits for site {name}")
        attach_quantizer(model_sites[name], copy.deepcopy(source))
    return model
