"""Save and load calibrated quantization state (one file of plain data, written atomically).

A state records the fingerprint of the weights it was calibrated on (the SHA-256 of the model's own
tensors before any transform of the recipe, e.g. the bimodal sign fold, is applied) and the
fingerprint of every setting that made it; loading it into a model with other weights is refused
unless the caller explicitly allows it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ptqsam.errors import CheckpointError, RecipeError
from ptqsam.fingerprint import fingerprint, settings_hash, tensors_sha256
from ptqsam.instrument.instrument import attach_quantizer, attached_quantizers, detach, instrument, model_device, sites
from ptqsam.instrument.recipe import Recipe, load_recipe
from ptqsam.instrument.sites import SITE_SUFFIX
from ptqsam.io import write_or_rescue
from quantizers import Mode, QuantizationError, Quantizer, QuantSpec, build_quantizer

STATE_FORMAT = "ptqsam-calibrated-state"
STATE_VERSION = 2
#: what each top-level entry of a state file must be
_LAYOUT: dict[str, type] = {"model_type": str, "recipe": dict, "w_bits": int, "a_bits": int, "sites": dict,
                            "extra": dict, "weights": str, "fingerprint": dict}

log = logging.getLogger("ptqsam")


@dataclass(frozen=True)
class StateInfo:
    """What :func:`load_state` read.

    Arguments:
      model_type: the model type the state was calibrated for.
      recipe: the recipe it was calibrated with.
      w_bits, a_bits: the bit-widths.
      extra: the caller's plain data saved with it (e.g. transform state such as BIG signs).
      quantizers: ``name -> quantizer`` now attached to the model.
      fingerprint: ``{"hash", "settings"}`` of what made the state (see :mod:`ptqsam.fingerprint`).
      weights_override: the state was calibrated on other weights and loaded anyway.
    """

    model_type: str
    recipe: Recipe
    w_bits: int
    a_bits: int
    extra: dict[str, Any]
    quantizers: dict[str, Quantizer]
    fingerprint: dict[str, Any]
    weights_override: bool = False


def weights_fingerprint(model: nn.Module) -> str:
    """The hash of the model's own tensors (its state dict without the quantizers' state)."""
    marker = SITE_SUFFIX + "."
    return tensors_sha256((key, value) for key, value in model.state_dict().items() if marker not in key)


def save_state(
    model: nn.Module,
    path: str | Path,
    recipe: Recipe | str | Path,
    model_type: str,
    w_bits: int,
    a_bits: int,
    extra: Mapping[str, Any] | None = None,
    weights: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the attached quantizers' specs, modes and state to ``path`` (torch.save of plain data);
    returns the state's fingerprint.

    The attached specs must be those ``recipe`` gives at ``w_bits``/``a_bits`` (RecipeError
    otherwise). ``extra`` holds the caller's plain data (tensors, numbers, strings, lists, dicts),
    e.g. the per-channel signs of a bimodal fold. ``weights`` is the :func:`weights_fingerprint` of
    the model before calibration transformed it (default: the model as it is now); ``settings`` are
    further named settings recorded in the fingerprint (calibration data, ...).
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
    weights = weights or weights_fingerprint(model)
    stamp = fingerprint({"model": model_type, "weights": weights, "recipe": recipe.to_dict(),
                         "bits": [w_bits, a_bits], **(settings or {})})
    data = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "model_type": model_type,
        "recipe": recipe.to_dict(),
        "w_bits": w_bits,
        "a_bits": a_bits,
        "weights": weights,
        "fingerprint": stamp,
        "sites": {
            name: {
                "spec": q.spec.to_dict(),
                "mode": q.mode.value,
                "parts": q.parts(),
                "state": {k: v.detach().cpu() for k, v in q.state_dict().items()},
            }
            for name, q in quantizers.items()
        },
        "extra": dict(extra or {}),
    }
    write_or_rescue(path, lambda handle: torch.save(data, handle), mode="wb")
    return stamp


def load_state(
    model: nn.Module,
    path: str | Path,
    recipe: Recipe | str | Path | None = None,
    model_type: str | None = None,
    allow_other_weights: bool = False,
) -> StateInfo:
    """Instrument ``model``, attach the saved quantizers and load their state and modes.

    ``model`` must be freshly built with the weights the state was calibrated on (transforms are
    re-applied from ``extra`` afterwards): other weights are refused with CheckpointError unless
    ``allow_other_weights`` (then a warning is logged and ``weights_override`` is set). A given
    ``recipe`` or ``model_type`` that differs from the saved one is refused with RecipeError naming
    both. An incomplete or corrupt file raises CheckpointError.
    """
    data = _read(Path(path))
    saved_recipe = Recipe.from_dict(data["recipe"])
    _check_consistent(data, saved_recipe, path)
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
    override = _check_weights(model, data["weights"], path, allow_other_weights)
    device = model_device(model)
    quantizers = {}
    for name, entry in data["sites"].items():
        quantizer = build_quantizer(QuantSpec.from_dict(entry["spec"]))
        try:
            quantizer.use_parts(entry.get("parts", {}))
            quantizer.load_state_dict(entry["state"])
        except (RuntimeError, QuantizationError) as error:
            raise CheckpointError(f"{path}: state of site {name!r} does not load: {error}") from None
        quantizer.mode = Mode(entry["mode"])
        quantizers[name] = attach_quantizer(model_sites[name], quantizer.to(device))
    return StateInfo(data["model_type"], saved_recipe, data["w_bits"], data["a_bits"], data["extra"], quantizers,
                     data["fingerprint"], override)


def _check_consistent(data: dict[str, Any], recipe: Recipe, path: Path | str) -> None:
    """CheckpointError unless the file agrees with itself: its fingerprint is intact and names the
    header's model, weights, recipe and bits, and every site's spec is the recipe's at those bits.
    An edited or spliced file would otherwise report numbers under settings that did not make them."""
    stamp = data["fingerprint"]
    if not isinstance(stamp.get("settings"), Mapping) or stamp.get("hash") != settings_hash(stamp["settings"]):
        raise CheckpointError(f"{path}: its fingerprint was altered (the hash does not match its settings)")
    header = {"model": data["model_type"], "weights": data["weights"], "recipe": data["recipe"],
              "bits": [data["w_bits"], data["a_bits"]]}
    differ = [key for key, value in header.items() if stamp["settings"].get(key) != json.loads(json.dumps(value))]
    if differ:
        raise CheckpointError(f"{path}: its header disagrees with its fingerprint on {', '.join(differ)}: an edited file")
    try:
        expected = recipe.specs_for(list(data["sites"]), data["w_bits"], data["a_bits"])
        wrong = [name for name, entry in data["sites"].items()
                 if expected.get(name) is None or QuantSpec.from_dict(entry["spec"]) != expected[name]]
    except (RecipeError, QuantizationError) as error:
        raise CheckpointError(f"{path}: its sites cannot be checked against its recipe: {error}") from None
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} site(s), e.g. {wrong[:3]}, hold specs that recipe "
                              f"{recipe.name!r} at W{data['w_bits']}A{data['a_bits']} does not give: an edited file")


def _check_weights(model: nn.Module, saved: str, path: Path | str, allow: bool) -> bool:
    """Whether the state is applied to other weights than it was calibrated on (refused unless
    ``allow``)."""
    current = weights_fingerprint(model)
    if current == saved:
        return False
    message = (f"{path} was calibrated on other weights (weights fingerprint {saved}) than the model's "
               f"({current})")
    if not allow:
        raise CheckpointError(f"{message}: give the checkpoint it was calibrated on, or allow other weights "
                              "explicitly (--allow-other-weights)")
    log.warning("%s; applied anyway, as asked", message)
    return True


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
            f"{path} has state format version {data.get('version')!r}; this ptqsam reads {STATE_VERSION} "
            "(calibrate again)"
        )
    _check_layout(data, path)
    return data


def _check_layout(data: dict[str, Any], path: Path) -> None:
    """CheckpointError naming the first entry of a state file that is missing or of the wrong type."""
    for key, kind in _LAYOUT.items():
        if not isinstance(data.get(key), kind) or (kind is int and isinstance(data[key], bool)):
            raise CheckpointError(f"{path} is incomplete or corrupt: {key!r} is missing or not a {kind.__name__}")
    modes = {mode.value for mode in Mode}
    for name, entry in data["sites"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("spec"), dict) and entry.get("mode") in modes
                and isinstance(entry.get("state"), dict)
                and all(isinstance(v, torch.Tensor) for v in entry["state"].values())):
            raise CheckpointError(f"{path} is incomplete or corrupt: the entry of site {name!r} is not a "
                                  "{spec, mode, state} record")
        if any(v.is_floating_point() and not bool(torch.isfinite(v).all()) for v in entry["state"].values()):
            raise CheckpointError(f"{path} is corrupt: site {name!r} holds NaN or Inf parameters")
