"""Put an image encoder together with segment_anything's prompt encoder and mask decoder."""

from __future__ import annotations

from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

#: SAM's input normalisation (RGB, 0..255), shared by every model of the zoo.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def assemble_sam(
    image_encoder: nn.Module,
    embed_dim: int,
    image_size: int,
    embedding_size: int,
    decoder_mlp_dim: int,
    iou_head_hidden_dim: int,
    decoder_depth: int = 2,
    decoder_num_heads: int = 8,
    num_multimask_outputs: int = 3,
    iou_head_depth: int = 3,
    mask_in_chans: int = 16,
) -> Sam:
    """A Sam around ``image_encoder`` with a prompt encoder and mask decoder of matching size.

    Arguments:
      image_encoder: maps (B, 3, image_size, image_size) to (B, embed_dim, embedding_size,
        embedding_size) and has an ``img_size`` attribute (Sam's preprocessing reads it).
      embed_dim: prompt embedding and mask decoder transformer width.
      image_size: side of the (padded) input image.
      embedding_size: side of the image embedding.
      decoder_mlp_dim: MLP width inside the TwoWayTransformer.
      iou_head_hidden_dim: hidden width of the IoU prediction head.
      decoder_depth: TwoWayTransformer layers.
      decoder_num_heads: TwoWayTransformer attention heads.
      num_multimask_outputs: masks predicted besides the single-mask output.
      iou_head_depth: layers of the IoU prediction head.
      mask_in_chans: hidden channels of the prompt encoder's mask downscaling.
    """
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=decoder_depth,
                embedding_dim=embed_dim,
                mlp_dim=decoder_mlp_dim,
                num_heads=decoder_num_heads,
            ),
            transformer_dim=embed_dim,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
