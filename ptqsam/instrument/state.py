"""Save and load calibrated quantization state (one file of plain data, written atomically)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ptqsam.errors import CheckpointError, RecipeError
from ptqsam.instrument.instrument import attach_quantizer, attached_quantizers, detach, instrument, model_device, sites
from ptqsam.instrument.recipe import Recipe, load_recipe
from ptqsam.io import write_atomic
from quantizers import Mode, Quantizer, QuantSpec, build_quantizer

STATE_FORMAT = "ptqsam-calibrated-state"
STATE_VERSION = 1


@dataclass(frozen=True)
class StateInfo:
    """What :func:`load_state` read.

    Arguments:
      model_type: the model type the state was calibrated for.
      recipe: the recipe it was calibrated with.
      w_bits, a_bits: the bit-widths.
      extra: the caller's plain data saved with it (e.g. transform state such as BIG signs).
      quantizers: ``name -> quantizer`` now attached to the model.
    """

    model_type: str
    recipe: Recipe
    w_bits: int
    a_bits: int
    extra: dict[str, Any]
    quantizers: dict[str, Quantizer]


def save_state(
    model: nn.Module,
    path: str | Path,
    recipe: Recipe | str | Path,
    model_type: str,
    w_bits: int,
    a_bits: int,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write the attached quantizers' specs, modes and state to ``path`` (torch.save of plain data).

    The attached specs must be those ``recipe`` gives at ``w_bits``/``a_bits`` (RecipeError
    otherwise). ``extra`` holds the caller's plain data (tensors, numbers, strings, lists, dicts),
    e.g. the per-channel signs of a bimodal fold.
    """
    recipe = load_recipe(recipe)
    quantizers = attached_quantizers(model)
    if not quantizers:
        raise RecipeError("the model has no attached quantizers: nothing to save")
    expected = recipe.specs_for(quantizers, w_bits, a_bits)
    wrong = [name for name, q in quantizers.items() if expected.get(name) != q.spec]
    if wrong:
        raise RecipeError(
            f"{len(wrong)} attached quantizer(s), e.g. at {wrong[:3]}, are not what recipe "
            f"{recipe.name!r} at W{w_bits}A{a_bits} specifies"
        )
    data = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "model_type": model_type,
        "recipe": recipe.to_dict(),
        "w_bits": w_bits,
        "a_bits": a_bits,
        "sites": {
            name: {
                "spec": q.spec.to_dict(),
                "mode": q.mode.value,
                "state": {k: v.detach().cpu() for k, v in q.state_dict().items()},
            }
            for name, q in quantizers.items()
        },
        "extra": dict(extra or {}),
    }
    write_atomic(path, lambda handle: torch.save(data, handle), mode="wb")


def load_state(
    model: nn.Module,
    path: str | Path,
    recipe: Recipe | str | Path | None = None,
    model_type: str | None = None,
) -> StateInfo:
    """Instrument ``model``, attach the saved quantizers and load their state and modes.

    ``model`` should be freshly built with the same weights (and transforms re-applied from
    ``extra``). A given ``recipe`` or ``model_type`` that differs from the saved one is refused
    with RecipeError naming both.
    """
    data = _read(Path(path))
    saved_recipe = Recipe.from_dict(data["recipe"])
    if recipe is not None:
        recipe = load_recipe(recipe)
        if recipe.to_dict() != saved_recipe.to_dict():
            raise RecipeError(
                f"{path} was calibrated with recipe {saved_recipe.name!r}, which differs from the "
                f"requested recipe {recipe.name!r}"
            )
    if model_type is not None and model_type != data["model_type"]:
        raise RecipeError(f"{path} was calibrated for model type {data['model_type']!r}, not {model_type!r}")

    instrument(model)
    detach(model)
    model_sites = sites(model)
    missing = [name for name in data["sites"] if name not in model_sites]
    if missing:
        raise RecipeError(f"{path} has quantizers for sites the model lacks: {missing[:5]}")
    device = model_device(model)
    quantizers = {}
    for name, entry in data["sites"].items():
        quantizer = build_quantizer(QuantSpec.from_dict(entry["spec"]))
        try:
            quantizer.load_state_dict(entry["state"])
        except RuntimeError as error:
            raise CheckpointError(f"{path}: state of site {name!r} does not load: {error}") from None
        quantizer.mode = Mode(entry["mode"])
        quantizers[name] = attach_quantizer(model_sites[name], quantizer.to(device))
    return StateInfo(data["model_type"], saved_recipe, data["w_bits"], data["a_bits"], data["extra"], quantizers)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"calibrated state file {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for unreadable files
        raise CheckpointError(f"cannot read calibrated state {path}: {error}") from None
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a ptqsam calibrated-state file")
    if data.get("version") != STATE_VERSION:
        raise CheckpointError(
            f"{path} has state format version {data.get('version')!r}; this ptqsam reads {STATE_VERSION}"
        )
    return data
