"""The model zoo: SAM ViT-B/L/H, TinySAM, MobileSAM and the testbed SAM, by name."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

from ptqsam.constants import MODEL_TYPES
from ptqsam.errors import PtqsamError
from ptqsam.models.assembly import assemble_sam
from ptqsam.models.checkpoint import checkpoint_sha256, load_checkpoint
from ptqsam.models.testbed import build_testbed
from ptqsam.models.tiny_vit import TinyViT

logger = logging.getLogger("ptqsam")


def build_tiny_vit_sam() -> Sam:
    """TinySAM / MobileSAM: TinyViT-5M encoder with SAM's 256-d prompt encoder and decoder."""
    encoder = TinyViT(img_size=1024)
    return assemble_sam(
        encoder,
        embed_dim=256,
        image_size=1024,
        embedding_size=encoder.embedding_size,
        decoder_mlp_dim=2048,
        iou_head_hidden_dim=256,
    )


BUILDERS: dict[str, Callable[[], Sam]] = {
    "vit_b": sam_model_registry["vit_b"],
    "vit_l": sam_model_registry["vit_l"],
    "vit_h": sam_model_registry["vit_h"],
    "tinysam": build_tiny_vit_sam,
    "mobilesam": build_tiny_vit_sam,
    "testbed": build_testbed,
}
assert tuple(BUILDERS) == MODEL_TYPES, "every model type of ptqsam.constants needs a builder here"

#: Weights shipped inside the package (fp16), loaded when no checkpoint is given.
PACKAGED_WEIGHTS: dict[str, Path] = {
    "testbed": Path(__file__).resolve().parent.parent / "weights" / "testbed.pt",
}


def build_model(model_type: str, checkpoint: str | Path | None = None, seed: int = 0) -> Sam:
    """Build a model of the zoo in eval mode.

    Without a checkpoint the model gets its packaged weights if it has some, else stays randomly
    initialised; the random initialisation is drawn from ``seed`` alone (two builds are
    identical) and leaves the global RNG untouched.

    Arguments:
      model_type: one of :data:`MODEL_TYPES`.
      checkpoint: a state dict file of that model type (fp16 files are cast to fp32).
      seed: seed of the random initialisation.

    Raises:
      PtqsamError: unknown ``model_type``.
      CheckpointError: the checkpoint is missing, unreadable or of another model type.

    Example (the ``samples`` and ``dataset`` of the examples: see :mod:`ptqsam.api`)::

        >>> from ptqsam import build_model
        >>> model = build_model("testbed")    # SAM-B: build_model("vit_b", "sam_vit_b_01ec64.pth")
        >>> model.image_encoder.img_size
        256
    """
    if model_type not in BUILDERS:
        raise PtqsamError(
            f"unknown model type {model_type!r}; known types: {', '.join(MODEL_TYPES)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BUILDERS[model_type]()
    packaged = PACKAGED_WEIGHTS.get(model_type)
    if checkpoint is None and packaged is not None and packaged.is_file():
        checkpoint = packaged
    if checkpoint is None:
        logger.warning("no checkpoint: %s randomly initialised with seed %d", model_type, seed)
    else:
        load_checkpoint(model, checkpoint, model_type)
        logger.info("loaded %s weights from %s", model_type, checkpoint)
    return model.eval()


def built_model(model_type: str, checkpoint: str | Path | None, seed: int, device: str) -> Sam:
    """:func:`build_model` on ``device`` (checked first: a clear error where torch cannot run there)."""
    from ptqsam.preflight import check_device

    check_device(device)
    return build_model(model_type, checkpoint, seed=seed).to(device)


def model_skeleton(model_type: str) -> Sam:
    """The modules of ``model_type`` without weights (on the "meta" device: built in milliseconds,
    no memory), for listing its sites and checking recipes before any work."""
    if model_type not in BUILDERS:
        raise PtqsamError(f"unknown model type {model_type!r}; known types: {', '.join(MODEL_TYPES)}")
    with torch.device("meta"):
        return BUILDERS[model_type]()


def image_size(model: Sam) -> int:
    """Side of the square input the model's image encoder takes."""
    return model.image_encoder.img_size


def is_tiny_vit(model: Sam) -> bool:
    """Whether the model's image encoder is TinyViT (TinySAM / MobileSAM)."""
    return isinstance(model.image_encoder, TinyViT)


def weights_id(model_type: str, checkpoint: str | Path | None, seed: int) -> str:
    """What the weights of ``build_model(model_type, checkpoint, seed)`` are: the checkpoint's
    SHA-256, the packaged weights' (``packaged-<sha>``), or ``random-seed<seed>``."""
    if checkpoint is not None:
        return checkpoint_sha256(checkpoint)
    packaged = PACKAGED_WEIGHTS.get(model_type)
    if packaged is not None and Path(packaged).is_file():
        return "packaged-" + checkpoint_sha256(packaged)
    return f"random-seed{seed}"
