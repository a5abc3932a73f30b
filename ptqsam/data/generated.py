"""Generated datasets cached by what makes them: (count, seed, generator version).

:func:`cached_dataset` keeps the synthetic dataset of one key in its own folder,
``root/synthetic-n{count}-s{seed}-v{GENERATOR_VERSION}``. A dataset is generated into a temporary
folder beside it, a manifest (the key and the SHA-256 of every file) is written last, and the folder
is renamed into place, so the final folder is either absent or complete. A cached folder is checked
against its manifest on every use: a missing manifest, another key, or a missing or altered file
(a corrupt or half-written cache) is regenerated with a warning, never trusted. Two processes
asking for the same key at once both end with a valid dataset: the second rename finds the first
one's complete folder and keeps it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ptqsam.data.synthetic import GENERATOR_VERSION, generate_dataset
from ptqsam.errors import DataError
from ptqsam.fingerprint import file_sha256
from ptqsam.io import write_json_atomic

log = logging.getLogger("ptqsam")

MANIFEST = "manifest.json"
#: attempts at renaming a generated folder into place while other processes do the same
_ATTEMPTS = 5


def generator_key(count: int, seed: int) -> dict[str, int]:
    """Everything the generated pixels and annotations depend on."""
    return {"count": count, "seed": seed, "version": GENERATOR_VERSION}


def cache_folder(root: str | Path, count: int, seed: int) -> Path:
    """The folder of the dataset of ``(count, seed)`` under ``root``."""
    return Path(root) / f"synthetic-n{count}-s{seed}-v{GENERATOR_VERSION}"


def cached_dataset(root: str | Path, count: int, seed: int) -> Path:
    """The folder (with ``images/`` and ``annotations.json``) of the generated dataset of
    ``(count, seed)`` under ``root``: the cached one if it matches its manifest, else generated now."""
    final = cache_folder(root, count, seed)
    key = generator_key(count, seed)
    problem = cache_problem(final, key)
    if problem is None:
        return final
    if final.exists():
        log.warning("generated data in %s %s: generating it again", final, problem)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        generate_dataset(temporary, count, seed=seed)
        files = sorted(p for p in temporary.rglob("*") if p.is_file())
        write_json_atomic(temporary / MANIFEST, {"key": key, "files": {
            p.relative_to(temporary).as_posix(): file_sha256(p, 64) for p in files}})
        os.chmod(temporary, 0o755)  # mkdtemp makes it private; results are meant to be shared
        _move_into_place(temporary, final, key)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # only left when the rename did not happen
    return final


def cache_problem(folder: Path, key: dict[str, Any]) -> str | None:
    """Why ``folder`` is not a valid cached dataset of ``key`` (None when it is)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return "has no manifest" if folder.exists() else "does not exist"
    except (OSError, ValueError) as error:
        return f"has an unreadable manifest ({error})"
    if not isinstance(manifest, dict) or manifest.get("key") != key or not isinstance(manifest.get("files"), dict):
        return f"has a manifest for another key than {key}"
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            return f"lacks {name}"
        if file_sha256(path, 64) != digest:
            return f"has a corrupt or half-written {name}"
    return None


def _move_into_place(temporary: Path, final: Path, key: dict[str, Any]) -> None:
    """Rename ``temporary`` to ``final``; a valid ``final`` another process put there first is kept,
    an invalid one is moved aside and removed."""
    for _ in range(_ATTEMPTS):
        try:
            os.replace(temporary, final)
            return
        except OSError:  # final exists: a non-empty folder or a file
            if cache_problem(final, key) is None:
                return
        aside = final.with_name(f".{final.name}.{uuid.uuid4().hex}.stale")
        try:
            os.replace(final, aside)
        except FileNotFoundError:
            continue
        if aside.is_dir():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)
    raise DataError(f"cannot put the generated dataset in place at {final}")
