"""Recipes: which sites a PTQ method quantizes and how, as data (YAML), not code paths.

A recipe holds ordered rules (fnmatch include/exclude patterns on site names plus a
:class:`~quantizers.QuantSpec` dict whose ``bits`` may be the placeholder ``"W"`` or ``"A"``),
``keep_float`` patterns checked before any rule, and transforms applied to modules before
calibration (e.g. PTQ4SAM's bimodal fold). The first matching rule wins; unmatched sites stay float.

Patterns that match nothing (:meth:`Recipe.check_sites`, run when a recipe is attached, before any
calibration work): a rule none of whose include patterns selects a site of the model is an error
naming the rule, as it would silently leave its sites in float. One pattern of a rule may be meant
for another model (``ptq4vit`` names both SAM's ``lin2`` and TinyViT's ``fc2``): a rule is valid
when one of its patterns matches, and sites the user excludes (``--float-encoder``) do not count
against it. ``keep_float`` and transform patterns that match nothing are only warned
about (once per process): a recipe may list patterns for each of the models it serves, and keeping
fewer sites in float or folding fewer attentions than listed leaves no selected site unquantized.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ptqsam.bits import check_bit_width, parse_bits
from ptqsam.errors import RecipeError
from ptqsam.typed import check_fields, reject_unknown_keys
from ptqsam.reconstruction.config import ReconstructionConfig
from quantizers import QuantizationError, QuantSpec
from quantizers.transforms.bimodal import BimodalConfig
from quantizers.transforms.repq import RepQConfig

#: Placeholders a rule's ``bits`` may hold: replaced by the weight or activation bit-width.
BITS_PLACEHOLDERS = ("W", "A")

#: Transforms a recipe may ask for (applied by the calibration runner) -> their options' config.
TRANSFORM_CONFIGS: dict[str, type] = {"bimodal_fold": BimodalConfig, "repq_fold": RepQConfig}


def _patterns(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise RecipeError(f"{what} must be a list of patterns, got {value!r}")
    if not all(isinstance(p, str) and p for p in value):
        raise RecipeError(f"{what} must hold non-empty strings, got {list(value)!r}")
    return tuple(value)


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` matches one of the fnmatch ``patterns`` (case-sensitive; ``*`` spans dots)."""
    return any(fnmatchcase(name, p) for p in patterns)


def _build(cls: type, data: Any, what: str, required: tuple[str, ...]) -> Any:
    """``cls(**data)`` after checking ``data`` has the ``required`` keys and no unknown ones."""
    reject_unknown_keys(data, cls, what, RecipeError)
    missing = [key for key in required if key not in data]
    if missing:
        raise RecipeError(f"a {what} needs {missing}, got keys {sorted(data)}")
    return cls(**data)


@dataclass(frozen=True)
class Rule:
    """Sites whose name matches an ``include`` pattern and no ``exclude`` pattern get ``spec``.

    Arguments:
      include: fnmatch patterns on site names (``*`` also matches dots).
      exclude: fnmatch patterns removing sites from ``include``.
      spec: a :class:`~quantizers.QuantSpec` dict; ``bits`` may be ``"W"`` or ``"A"``.
    """

    include: tuple[str, ...]
    spec: Mapping[str, Any]
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", _patterns(self.include, "rule include"))
        object.__setattr__(self, "exclude", _patterns(self.exclude, "rule exclude"))
        if not isinstance(self.spec, Mapping):
            raise RecipeError(f"rule spec must be a mapping, got {self.spec!r}")
        object.__setattr__(self, "spec", dict(self.spec))
        check_fields(self, RecipeError, "rule")
        self.resolve(8, 8)  # validates the spec and that its search can serve it

    def matches(self, name: str) -> bool:
        return matches_any(name, self.include) and not matches_any(name, self.exclude)

    def resolve(self, w_bits: int, a_bits: int) -> QuantSpec:
        """The spec with its bits placeholder replaced."""
        spec = dict(self.spec)
        if spec.get("bits") in BITS_PLACEHOLDERS:
            spec["bits"] = {"W": w_bits, "A": a_bits}[spec["bits"]]
        try:
            resolved = QuantSpec.from_dict(spec)
            resolved.check_search()
            return resolved
        except QuantizationError as error:
            raise RecipeError(f"bad spec {self.spec!r} for sites {list(self.include)}: {error}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Rule":
        return _build(cls, data, "rule", ("include", "spec"))

    def to_dict(self) -> dict[str, Any]:
        return {"include": list(self.include), "exclude": list(self.exclude), "spec": dict(self.spec)}


@dataclass(frozen=True)
class Transform:
    """A model transform applied before calibration to the modules matching ``sites``.

    Arguments:
      kind: one of :data:`TRANSFORM_CONFIGS`.
      sites: fnmatch patterns on module paths (e.g. the decoder's token→image attentions).
      options: fields of the transform's config (``bimodal_fold``: :class:`BimodalConfig`).
    """

    kind: str
    sites: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in TRANSFORM_CONFIGS:
            raise RecipeError(f"unknown transform kind {self.kind!r}; choose one of {sorted(TRANSFORM_CONFIGS)}")
        object.__setattr__(self, "sites", _patterns(self.sites, f"{self.kind} sites"))
        reject_unknown_keys(self.options, TRANSFORM_CONFIGS[self.kind], f"{self.kind} option", RecipeError)
        object.__setattr__(self, "options", dict(self.options))
        check_fields(self, RecipeError, "transform")
        self.config()  # validates the option values

    def config(self) -> Any:
        """The transform's config object built from :attr:`options`."""
        try:
            return TRANSFORM_CONFIGS[self.kind](**self.options)
        except QuantizationError as error:
            raise RecipeError(f"bad {self.kind} options {self.options!r}: {error}") from None

    def matches(self, module_name: str) -> bool:
        return matches_any(module_name, self.sites)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Transform":
        return _build(cls, data, "transform", ("kind", "sites"))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "sites": list(self.sites), "options": dict(self.options)}


@dataclass(frozen=True)
class Recipe:
    """A PTQ method as data.

    Arguments:
      name: short name (the shipped file's stem).
      description: one paragraph for humans.
      rules: ordered :class:`Rule` s; the first rule matching a site name gives its spec.
      keep_float: site-name patterns checked before the rules; matching sites stay float.
      transforms: :class:`Transform` s the calibration runner applies before observing.
      imports: Python modules imported before the rules are read, so that quantizer kinds,
        observers or searches they register can be named in the specs (a researcher's own parts).
      reconstruction: fields of a :class:`~ptqsam.reconstruction.ReconstructionConfig`: block
        reconstruction after calibration (AdaRound, BRECQ, QDrop, PTQ4SAM-L); None: none.

    In YAML, ``extends: <recipe name or path>`` starts from another recipe: the keys given replace
    its keys, except ``reconstruction``, whose fields are merged into the base recipe's, and
    ``prepend_rules``, rules put before the base recipe's (so they win where they match: GPTQ
    weights over any activation recipe, a layer kept at 8 bits).
    """

    name: str
    description: str = ""
    rules: tuple[Rule, ...] = ()
    keep_float: tuple[str, ...] = ()
    transforms: tuple[Transform, ...] = ()
    imports: tuple[str, ...] = ()
    reconstruction: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise RecipeError(f"a recipe needs a non-empty name, got {self.name!r}")
        object.__setattr__(self, "imports", _patterns(self.imports, "imports"))
        for module in self.imports:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise RecipeError(f"recipe {self.name!r}: cannot import {module!r} (imports): {error}") from None
        object.__setattr__(self, "rules", tuple(_coerce(r, Rule) for r in self.rules))
        object.__setattr__(self, "keep_float", _patterns(self.keep_float, "keep_float"))
        object.__setattr__(self, "transforms", tuple(_coerce(t, Transform) for t in self.transforms))
        check_fields(self, RecipeError, "recipe")
        if self.reconstruction is not None:
            object.__setattr__(self, "reconstruction", self.reconstruction_config().to_dict())

    def reconstruction_config(self) -> ReconstructionConfig | None:
        """The validated reconstruction settings, or None when the recipe reconstructs nothing."""
        return None if self.reconstruction is None else ReconstructionConfig.from_dict(self.reconstruction)

    def spec_for(self, name: str, w_bits: int, a_bits: int) -> QuantSpec | None:
        """The spec of site ``name``, or ``None`` when it stays float."""
        if matches_any(name, self.keep_float):
            return None
        rule = next((r for r in self.rules if r.matches(name)), None)
        return None if rule is None else rule.resolve(w_bits, a_bits)

    def specs_for(self, site_names: Iterable[str], w_bits: int, a_bits: int) -> dict[str, QuantSpec]:
        """``name -> spec`` for the sites this recipe quantizes (in the order given)."""
        check_bit_width(w_bits, "weight bits")
        check_bit_width(a_bits, "activation bits")
        specs = {name: self.spec_for(name, w_bits, a_bits) for name in site_names}
        return {name: spec for name, spec in specs.items() if spec is not None}

    def check_sites(self, site_names: Iterable[str], module_names: Iterable[str]) -> list[str]:
        """Raise RecipeError naming each rule that selects none of ``site_names`` (all the sites of
        a model, before any exclusion); return one line per ``keep_float`` or transform pattern that
        matches no site or module (see the module docstring)."""
        names, modules = list(site_names), list(module_names)
        dead = [f"rules[{i}] (include {list(rule.include)}" + (f", exclude {list(rule.exclude)})" if rule.exclude else ")")
                for i, rule in enumerate(self.rules) if not any(rule.matches(name) for name in names)]
        if dead:
            raise RecipeError(f"recipe {self.name!r}: {'; '.join(dead)} select(s) no site of the model "
                              "(check the patterns against `ptqsam inspect`)")
        unmatched = [f"keep_float pattern {p!r}" for p in self.keep_float if not any(fnmatchcase(n, p) for n in names)]
        unmatched += [f"{t.kind} pattern {p!r}" for t in self.transforms for p in t.sites
                      if not any(fnmatchcase(m, p) for m in modules)]
        return unmatched

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, the inverse of :meth:`from_dict`."""
        return {
            "name": self.name,
            "description": self.description,
            "keep_float": list(self.keep_float),
            "transforms": [t.to_dict() for t in self.transforms],
            "rules": [r.to_dict() for r in self.rules],
            **({"imports": list(self.imports)} if self.imports else {}),
            **({"reconstruction": dict(self.reconstruction)} if self.reconstruction is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        """Build from a dict; unknown keys and bad specs raise :class:`RecipeError` naming them."""
        for key in ("rules", "transforms", "imports"):
            if isinstance(data, Mapping) and not isinstance(data.get(key, []), (list, tuple)):
                raise RecipeError(f"recipe {key} must be a list, got {data[key]!r}")
        return _build(cls, data, "recipe", ("name",))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, folder: Path | None = None) -> "Recipe":
        """Build from YAML text; an ``extends`` path is read relative to ``folder``."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise RecipeError(f"recipe is not valid YAML: {error}") from None
        return cls.from_dict(_extended(data, folder, ()))


def _coerce(value: Any, cls: type) -> Any:
    return value if isinstance(value, cls) else cls.from_dict(value)


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped in ``ptqsam/recipes``.

    >>> from ptqsam import shipped_recipes
    >>> "ptq4sam" in shipped_recipes()
    True
    """
    return sorted(p.name[: -len(".yaml")] for p in resources.files("ptqsam").joinpath("recipes").iterdir()
                  if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str | Path | Recipe) -> Recipe:
    """A shipped recipe by name, or a recipe YAML file by path (a :class:`Recipe` passes through).

    >>> from ptqsam import load_recipe
    >>> recipe = load_recipe("ptq4sam")        # or load_recipe("my_recipe.yaml")
    >>> recipe.name, recipe.reconstruction is None
    ('ptq4sam', True)
    """
    if isinstance(name_or_path, Recipe):
        return name_or_path
    text, folder = _recipe_text(name_or_path, None)
    return Recipe.from_yaml(text, folder)


def _recipe_text(name_or_path: str | Path, folder: Path | None) -> tuple[str, Path | None]:
    """The YAML text of a shipped recipe or a file (relative to ``folder``), and its folder."""
    if str(name_or_path) in shipped_recipes():
        return resources.files("ptqsam").joinpath("recipes", f"{name_or_path}.yaml").read_text(), None
    path = Path(name_or_path)
    if folder is not None and not path.is_absolute():
        path = folder / path
    if not path.is_file():
        raise RecipeError(f"unknown recipe {str(name_or_path)!r}: not a file and not one of {shipped_recipes()}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"cannot read recipe file {path}: {error}") from None
    return text, path.parent


def _extended(data: Any, folder: Path | None, chain: tuple[str, ...]) -> Any:
    """``data`` with its ``extends`` resolved: the base recipe's keys, replaced by ``data``'s
    (``reconstruction`` fields merged)."""
    if not isinstance(data, Mapping) or "extends" not in data:
        if isinstance(data, Mapping) and "prepend_rules" in data:
            raise RecipeError("recipe prepend_rules needs extends: they go before the rules of the recipe extended")
        return data
    base_name = data["extends"]
    if not isinstance(base_name, str) or not base_name:
        raise RecipeError(f"recipe extends must name a recipe, got {base_name!r}")
    if base_name in chain:
        raise RecipeError(f"recipe extends forms a loop: {' -> '.join(chain + (base_name,))}")
    text, base_folder = _recipe_text(base_name, folder)
    base = _extended(yaml.safe_load(text), base_folder, chain + (base_name,))
    merged = {**base, **{key: value for key, value in data.items() if key not in ("extends", "prepend_rules")}}
    if isinstance(base.get("reconstruction"), Mapping) and isinstance(data.get("reconstruction"), Mapping):
        merged["reconstruction"] = {**base["reconstruction"], **data["reconstruction"]}
    if "prepend_rules" in data:
        first, rest = data["prepend_rules"], merged.get("rules", [])
        if not isinstance(first, list) or not isinstance(rest, list):
            raise RecipeError(f"recipe prepend_rules and rules must be lists, got {first!r} and {rest!r}")
        merged["rules"] = first + rest
    return merged


__all__ = ["Recipe", "Rule", "Transform", "load_recipe", "matches_any", "parse_bits", "shipped_recipes"]
