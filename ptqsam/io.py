"""Atomic file writes: a result file is either absent or complete, never half-written."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from ptqsam.errors import PtqsamError


def write_atomic(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Write through ``write(file)`` into a temp file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_or_rescue(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> Path:
    """:func:`write_atomic`, and when that fails, the same content written to a rescue file (beside
    ``path``, else in the working folder, else in the temp folder) and a PtqsamError naming it: a
    computed result is never lost to a failed write."""
    path = Path(path)
    try:
        return write_atomic(path, write, mode)
    except OSError as error:
        problem = f"cannot write {path} ({error.strerror or error})"
        for folder in (path.parent, Path.cwd(), Path(tempfile.gettempdir())):
            rescue = folder / f"{path.stem}.rescued-{os.getpid()}{path.suffix}"
            try:
                write_atomic(rescue, write, mode)
            except OSError:
                continue
            raise PtqsamError(f"{problem}; the result was written to {rescue} instead") from error
        raise PtqsamError(f"{problem}, nor a rescue copy anywhere") from error


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text))


def json_text(data: Any) -> str:
    """The JSON text ptqsam writes: indented, keys in their order, one final newline."""
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    return write_text_atomic(path, json_text(data))
