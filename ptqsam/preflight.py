"""Checks run before any work starts, so that a run fails in its first second, not at its end:
the device, the output paths, and the recipes against the models they will be attached to."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable

from ptqsam.errors import PtqsamError
from ptqsam.instrument.instrument import check_recipe_sites
from ptqsam.instrument.recipe import Recipe, load_recipe
from ptqsam.models.zoo import model_skeleton


def check_device(device: str) -> None:
    """PtqsamError unless torch can run on ``device``."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise PtqsamError("device 'cuda' asked for, but torch sees no CUDA device here: use --device cpu "
                          "(or device: cpu in the config)")


def check_output_file(path: str | Path, what: str) -> None:
    """PtqsamError unless the file ``path`` can be written (its folder exists or can be created, and
    accepts a new file); nothing is created."""
    path = Path(path)
    if path.is_dir():
        raise PtqsamError(f"{what} {path} is a folder, not a file")
    _check_creatable(path.parent, f"{what} {path}")


def check_output_folder(path: str | Path, what: str) -> None:
    """PtqsamError unless the folder ``path`` exists or can be created, and accepts new files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PtqsamError(f"{what} {path} is a file, not a folder")
    _check_creatable(path, f"{what} {path}")


def _check_creatable(folder: Path, what: str) -> None:
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PtqsamError(f"cannot write {what}: {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise PtqsamError(f"cannot write {what}: {existing} does not accept new files ({error.strerror})") from None


def check_recipes(recipes: Iterable[str | Path | Recipe], model_types: Iterable[str]) -> list[Recipe]:
    """Load every recipe and check its rules against every model type's sites (a rule selecting no
    site is an error; see :meth:`~ptqsam.instrument.recipe.Recipe.check_sites`)."""
    loaded = [load_recipe(recipe) for recipe in recipes]
    for model_type in model_types:
        skeleton = model_skeleton(model_type)
        for recipe in loaded:
            check_recipe_sites(skeleton, recipe)
    return loaded
