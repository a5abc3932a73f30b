"""A small SAM built from segment_anything's classes, small enough to train and test on a CPU."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from functools import partial

from segment_anything.modeling import ImageEncoderViT, Sam
from torch import nn

from ptqsam.models.assembly import assemble_sam

log = logging.getLogger("ptqsam")
#: attribute set on every testbed model: its training (``experiments/testbed/train_testbed.py``) uses
#: the three multimask outputs only, so the single-mask output (``multimask_output=False``) is untrained
UNTRAINED_SINGLE_MASK = "ptqsam_untrained_single_mask"


@dataclass(frozen=True)
class TestbedConfig:
    """Architecture of the testbed SAM (record it with ``dataclasses.asdict``).

    Arguments:
      image_size: input side (the image is padded to a square of this side).
      patch_size: ViT patch side; the image embedding is ``image_size // patch_size`` square.
      encoder_embed_dim: ViT width.
      encoder_depth: ViT blocks.
      encoder_num_heads: ViT attention heads.
      window_size: window side of the windowed-attention blocks.
      global_attn_indexes: blocks with global attention.
      embed_dim: neck output, prompt embedding and mask decoder width.
      decoder_depth: TwoWayTransformer layers.
      decoder_mlp_dim: TwoWayTransformer MLP width.
      decoder_num_heads: TwoWayTransformer attention heads.
      num_multimask_outputs: masks predicted besides the single-mask output.
      iou_head_depth: layers of the IoU prediction head.
      iou_head_hidden_dim: hidden width of the IoU prediction head.
    """

    __test__ = False  # not a pytest test class despite the name

    image_size: int = 256
    patch_size: int = 16
    encoder_embed_dim: int = 192
    encoder_depth: int = 6
    encoder_num_heads: int = 6
    window_size: int = 8
    global_attn_indexes: tuple[int, ...] = (2, 5)
    embed_dim: int = 128
    decoder_depth: int = 2
    decoder_mlp_dim: int = 512
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 128

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size


def build_testbed(config: TestbedConfig = TestbedConfig()) -> Sam:
    """A randomly initialised testbed SAM (SAM's encoder, with relative positions, scaled down)."""
    encoder = ImageEncoderViT(
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.encoder_embed_dim,
        depth=config.encoder_depth,
        num_heads=config.encoder_num_heads,
        mlp_ratio=4,
        out_chans=config.embed_dim,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=config.window_size,
        global_attn_indexes=config.global_attn_indexes,
    )
    model = assemble_sam(
        encoder,
        embed_dim=config.embed_dim,
        image_size=config.image_size,
        embedding_size=config.embedding_size,
        decoder_mlp_dim=config.decoder_mlp_dim,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
        decoder_depth=config.decoder_depth,
        decoder_num_heads=config.decoder_num_heads,
        num_multimask_outputs=config.num_multimask_outputs,
        iou_head_depth=config.iou_head_depth,
    )
    setattr(model, UNTRAINED_SINGLE_MASK, True)
    return model


def warn_untrained_single_mask(model: nn.Module, multimask: bool) -> None:
    """One warning (once per process) when ``model``'s single-mask output is used (``multimask``
    False) and was never trained (the testbed's: see :data:`UNTRAINED_SINGLE_MASK`)."""
    if not multimask and getattr(model, UNTRAINED_SINGLE_MASK, False):
        _warn_single_mask()


@functools.lru_cache(maxsize=None)
def _warn_single_mask() -> None:
    log.warning("single-mask output on the testbed: it was never trained (the testbed is trained on its 3 multimask "
                "outputs only) and gives near-whole-image masks; use the multimask output (best of 3)")
