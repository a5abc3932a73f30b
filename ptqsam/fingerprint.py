"""Fingerprints: a result bound to the settings that made it.

A fingerprint is a short SHA-256 of named settings (plain data: strings, numbers, lists, dicts),
recorded beside them in every sweep cell, calibrated state and ``evaluate --out`` file, so that a
result computed under other settings is recognised and the message can say which settings changed.
Content, not names, identifies inputs: a recipe by its ``to_dict()``, a file by its SHA-256, model
weights by the SHA-256 of their tensors.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import platform
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

import quantizers
from ptqsam import __version__

#: hex digits kept of a SHA-256 (64 bits: collisions are not a concern for a results folder)
HASH_DIGITS = 16


def settings_hash(settings: Mapping[str, Any]) -> str:
    """The fingerprint of ``settings``: the same plain data gives the same hash, key order aside."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_DIGITS]


def machine(device: str | torch.device) -> str:
    """What picks the kernels of ``device``'s float arithmetic, as a fingerprint records it: a GPU's
    name and compute capability; a CPU's vendor and model with the instruction set torch's kernels
    dispatch to (AVX2, AVX512...; BLAS libraries also choose code by vendor and model). The same
    config then gives other low-bit numbers on another machine (measured: the demo's quantized rows
    by up to 0.013 mIoU, its float row unchanged). Best effort: a virtualised CPU may show a generic
    model name, so two machines with the same string can still differ."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    return f"{_cpu_model()} ({torch.backends.cpu.get_cpu_capability()})"


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        fields = dict(map(str.strip, line.split(":", 1)) for line in cpuinfo.read_text().splitlines() if ":" in line)
        found = [fields[key] for key in ("vendor_id", "model name") if fields.get(key)]
        if found:
            return " ".join(found)
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def code_hash() -> str:
    """A hash of the code that computes results: every ``.py`` and ``.yaml`` file of the ptqsam and
    quantizers packages (paths and contents). The version alone does not change with an edit."""
    digest = hashlib.sha256()
    for package in (Path(__file__).resolve().parent, Path(quantizers.__file__).resolve().parent):
        for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".yaml") and p.is_file()):
            digest.update(f"{package.name}/{path.relative_to(package).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:HASH_DIGITS]


def module_hashes(modules: Iterable[str]) -> dict[str, str | None]:
    """``module -> SHA-256 of its source file`` (None where it has no file), for modules a recipe
    imports: their content, not their name, makes the quantizers they define."""
    hashes: dict[str, str | None] = {}
    for name in modules:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        hashes[name] = file_sha256(origin) if origin and Path(origin).is_file() else None
    return hashes


def fingerprint(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{"hash": ..., "settings": ...}`` with ptqsam's version added to the settings."""
    settings = {"ptqsam": __version__, **settings}
    return {"hash": settings_hash(settings), "settings": json.loads(json.dumps(settings))}


def changed_settings(recorded: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two settings mappings (nested mappings are
    compared key by key; a value that is not a mapping is compared whole)."""
    if not isinstance(recorded, Mapping) or not isinstance(current, Mapping):
        return [] if recorded == current else [prefix or "settings"]
    changed = []
    for key in sorted(set(recorded) | set(current), key=str):
        changed += changed_settings(recorded.get(key), current.get(key), f"{prefix}{key}.")
    return [name.rstrip(".") for name in changed]


def mismatch(recorded: Any, current: Mapping[str, Any]) -> list[str]:
    """What differs between a recorded fingerprint and the current one (empty when they match);
    a record without a valid fingerprint differs in ``fingerprint``."""
    if not (isinstance(recorded, Mapping) and isinstance(recorded.get("settings"), Mapping)
            and recorded.get("hash") == settings_hash(recorded["settings"])):
        return ["fingerprint (missing or altered)"]
    if recorded["hash"] == current["hash"]:
        return []
    return changed_settings(recorded["settings"], current["settings"]) or ["fingerprint"]


def file_sha256(path: str | Path, digits: int = HASH_DIGITS) -> str:
    """The first ``digits`` hex digits of the SHA-256 of a file's bytes. Remembered in the process
    while the file keeps its size and modification time (a run fingerprints its images several
    times; a rewritten file gets a new modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key][:digits]


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def tensors_sha256(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A hash of named tensors (names, dtypes, shapes and bytes), independent of their order and
    device."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{list(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:HASH_DIGITS]
