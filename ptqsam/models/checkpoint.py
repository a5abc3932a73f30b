"""Reading model checkpoints with clear errors, and strict loading into a model."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ptqsam.errors import CheckpointError
from ptqsam.fingerprint import file_sha256

#: Entries under which training scripts commonly nest the state dict.
WRAPPER_KEYS = ("model", "state_dict")
#: How many mismatching keys of each kind an error message names.
SHOWN_MISMATCHES = 5


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored at ``path`` (raw, or nested under "model" / "state_dict"), on CPU.

    Raises:
      CheckpointError: the file is missing, is not a PyTorch checkpoint, does not hold a state
        dict of tensors, or holds NaN/Inf.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # weights_only: the released SAM/TinySAM/MobileSAM checkpoints are plain state dicts, so
        # nothing here needs arbitrary unpickling (which would run code from the file).
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} is not a state dict checkpoint: it holds objects other than tensors "
            f"(a pickled whole model?), which ptqsam does not unpickle ({_first_line(error)})"
        ) from error
    except Exception as error:  # torch.load raises many types for garbage or truncated files
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (not a torch.save file, or truncated): "
            f"{_first_line(error)}"
        ) from error
    state_dict = _unwrap(content)
    if state_dict is None:
        raise CheckpointError(
            f"{path} is not a state dict checkpoint: expected a dict of tensors (raw or under "
            f"{' / '.join(WRAPPER_KEYS)}), got {_describe(content)}"
        )
    _check_finite(state_dict, path)
    return state_dict


def load_checkpoint(model: nn.Module, path: str | Path, model_type: str) -> None:
    """Load the checkpoint at ``path`` into ``model`` strictly, casting to the model's dtypes.

    Arguments:
      model: the model to load into (in place).
      path: a file written by ``torch.save`` of a state dict.
      model_type: the model type ``model`` was built as, named in errors.

    Raises:
      CheckpointError: as :func:`read_state_dict`, or when the keys or shapes differ from the
        model's (a checkpoint of another model type); the message names the first mismatches.
    """
    state_dict = read_state_dict(path)
    mismatches = _describe_mismatches(model.state_dict(), state_dict)
    if mismatches:
        raise CheckpointError(
            f"{path} is not a {model_type} checkpoint (expected model type {model_type!r}): "
            + "; ".join(mismatches)
        )
    model.load_state_dict(state_dict, strict=True)


def checkpoint_sha256(path: str | Path) -> str:
    """The first 12 hex digits of the file's SHA-256: a short id of a checkpoint for reports."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return file_sha256(path, 12)


def _unwrap(content: Any) -> dict[str, torch.Tensor] | None:
    """The state dict inside a loaded checkpoint, or None when it holds none."""
    if isinstance(content, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(content.get(key), Mapping):
                content = content[key]
                break
    if isinstance(content, Mapping) and content and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in content.items()
    ):
        return dict(content)
    return None


def _check_finite(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    for key, value in state_dict.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{path} holds NaN or Inf values in {key!r}")


def _describe_mismatches(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]
) -> list[str]:
    """One phrase per kind of mismatch (missing, unexpected, shape, integer vs float), naming the
    first few keys."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    shapes = [
        f"{key} (checkpoint {list(found[key].shape)} vs model {list(value.shape)})"
        for key, value in expected.items()
        if key in found and found[key].shape != value.shape
    ]
    kinds = [  # fp16 into fp32 is a cast; integers into floats (or back) are another tensor
        f"{key} (checkpoint {found[key].dtype} vs model {value.dtype})"
        for key, value in expected.items()
        if key in found and found[key].is_floating_point() != value.is_floating_point()
    ]
    phrases = []
    for kind, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
        ("dtype mismatches", kinds),
    ):
        if items:
            hidden = len(items) - SHOWN_MISMATCHES
            more = f" and {hidden} more" if hidden > 0 else ""
            phrases.append(f"{kind} ({len(items)}): {', '.join(items[:SHOWN_MISMATCHES])}{more}")
    return phrases


def _describe(content: Any) -> str:
    if isinstance(content, Mapping):
        kinds = sorted({type(value).__name__ for value in content.values()})
        return f"a dict of {len(content)} entries ({', '.join(kinds) or 'empty'})"
    return f"a {type(content).__name__}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
