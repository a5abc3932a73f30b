"""The blocks of a model of the zoo, in model order: what block-wise calibration and block
reconstruction work on.

A block is a module whose forward takes the output of the blocks before it: each transformer block
of the image encoder (SAM's ViT; TinyViT's attention blocks and, in its convolutional stage, each
MBConv block, with the patch merging between stages), the encoder's patch embedding and neck, each
TwoWayTransformer layer of the mask decoder and its final token→image attention. The list comes
from the architecture (which encoder class, how many layers), never from matching names.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, TypeVar

from segment_anything.modeling import ImageEncoderViT, Sam

from ptqsam.errors import PtqsamError
from ptqsam.models.tiny_vit import TinyViT

#: The three parts of every SAM-family model (``Sam``'s attributes), in the order data flows.
PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")
#: fnmatch pattern of every site of the image encoder (kept float with ``--float-encoder``).
ENCODER_SITES = "image_encoder.*"
#: fnmatch pattern of the mask-prompt path (the prompt encoder's mask downscaling): only a mask prompt
#: (SAM's ``mask_input``, iterative refinement) reaches its sites; box and point prompts never do.
MASK_PROMPT_SITES = "prompt_encoder.mask_downscaling.*"

ItemT = TypeVar("ItemT")

BlockKind = Literal["patch_embed", "vit_block", "mbconv", "patch_merging", "tinyvit_block", "neck",
                    "two_way_layer", "final_attention"]


@dataclass(frozen=True)
class Block:
    """One block of a model.

    Arguments:
      name: the module path (``image_encoder.blocks.3``).
      part: the part of the model it belongs to (one of :data:`PARTS`).
      kind: what the block is (see :data:`BlockKind`).
      global_attention: ViT blocks: attention over the whole image (not windowed).
      channel_axis: the channel axis of the block's output tensor(s): -1 for tokens and ViT's
        (B, H, W, C), 1 for (B, C, H, W) feature maps.
    """

    name: str
    part: str
    kind: BlockKind
    global_attention: bool = False
    channel_axis: int = -1

    def contains(self, name: str) -> bool:
        """Whether the module or site ``name`` lies inside this block."""
        return name == self.name or name.startswith(self.name + ".")


def part_of(name: str) -> str:
    """The part of the model (one of :data:`PARTS`) a module or site path lies in."""
    part = name.split(".", 1)[0]
    if part not in PARTS:
        raise PtqsamError(f"{name!r} is not inside a part of a SAM model {PARTS}")
    return part


def model_blocks(model: Sam) -> list[Block]:
    """The blocks of ``model`` in the order its forward runs them (encoder, then decoder)."""
    return _encoder_blocks(model.image_encoder) + _decoder_blocks(model)


def block_of(blocks: list[Block], name: str) -> Block | None:
    """The block that holds the module or site ``name``, or None (e.g. the IoU head)."""
    return next((block for block in blocks if block.contains(name)), None)


def touches_encoder(paths: Iterable[str]) -> bool:
    """Whether any of ``paths`` (sites or modules) lies in the image encoder."""
    return any(part_of(path) == "image_encoder" for path in paths)


def on_mask_path(path: str) -> bool:
    """Whether a site or module path lies on the mask-prompt path (:data:`MASK_PROMPT_SITES`)."""
    return fnmatch.fnmatchcase(path, MASK_PROMPT_SITES)


def group_by_block(blocks: list[Block], items: Iterable[ItemT], path: Callable[[ItemT], str]) -> dict[str, list[ItemT]]:
    """``items`` grouped by the block holding ``path(item)`` (in the order of the items); an item
    outside every block (e.g. in the IoU head) is grouped by the parent of its path."""
    groups: dict[str, list[ItemT]] = {}
    for item in items:
        block = block_of(blocks, path(item))
        groups.setdefault(block.name if block else path(item).rpartition(".")[0], []).append(item)
    return groups


def _encoder_blocks(encoder) -> list[Block]:
    prefix = "image_encoder"
    if isinstance(encoder, ImageEncoderViT):
        blocks = [Block(f"{prefix}.patch_embed", prefix, "patch_embed")]  # SAM's PatchEmbed returns (B, H, W, C)
        blocks += [Block(f"{prefix}.blocks.{i}", prefix, "vit_block", global_attention=block.window_size == 0)
                   for i, block in enumerate(encoder.blocks)]
    elif isinstance(encoder, TinyViT):
        blocks = [Block(f"{prefix}.patch_embed", prefix, "patch_embed", channel_axis=1)]
        for i, stage in enumerate(encoder.layers):
            kind, axis = ("mbconv", 1) if i == 0 else ("tinyvit_block", -1)
            blocks += [Block(f"{prefix}.layers.{i}.blocks.{j}", prefix, kind, channel_axis=axis)
                       for j in range(len(stage.blocks))]
            if stage.downsample is not None:
                blocks.append(Block(f"{prefix}.layers.{i}.downsample", prefix, "patch_merging"))
    else:
        raise PtqsamError(f"no block list is known for image encoder {type(encoder).__name__}")
    return blocks + [Block(f"{prefix}.neck", prefix, "neck", channel_axis=1)]


def _decoder_blocks(model: Sam) -> list[Block]:
    prefix = "mask_decoder.transformer"
    layers = [Block(f"{prefix}.layers.{i}", "mask_decoder", "two_way_layer")
              for i in range(len(model.mask_decoder.transformer.layers))]
    return layers + [Block(f"{prefix}.final_attn_token_to_image", "mask_decoder", "final_attention")]
