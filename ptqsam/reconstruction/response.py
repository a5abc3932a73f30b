"""The prompt-aware term of SAQ-SAM's reconstruction (PAR): how a unit's output changes the mask
decoder's response to the prompts, measured through the float rest of the model.

- Units of SAM's ViT encoder (blocks, stages) and the neck (of any encoder): the image tokens the decoder's
  TwoWayTransformer returns (its second output, after both layers' token↔image attention), with
  the sample's prompts. The unit's output runs through the remaining float encoder blocks and the
  neck first. SAQ-SAM's code sends a stage's output straight to the neck ("layer skipping"), so the
  neck sees a tensor it never sees in the model; here the response is the one the model computes.
- TwoWayTransformer layers: the prompt tokens after the later layers, the final token→image
  attention and its norm (the transformer's first output), as in SAQ-SAM's code.
- Other units (patch embedding, the final attention, TinyViT blocks, single layers): none; the
  reconstruction warns which units of a run with the term have none.

Like SAQ-SAM's code, the term is an L2 of transformer outputs (the paper's "cross-attention
responses"), not an attention-map similarity; the loss is ``rec + α·response`` (SAQ-SAM: α = β = 1;
its encoder stages use the response alone and its decoder weighs the query output by 0.01: here
every unit keeps the same output loss as the other recipes).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from segment_anything.modeling import ImageEncoderViT, Sam

from ptqsam.models.blocks import model_blocks
from ptqsam.reconstruction.units import ReconUnit

#: ``fn(output, args, kwargs, decoder_call) -> response``: ``args``/``kwargs`` are the unit's call,
#: ``decoder_call`` the mask decoder's ``(args, kwargs)`` for the same sample (encoder units only).
Continuation = Callable[[Any, tuple, dict, Any], torch.Tensor]


def continuation(model: Sam, unit: ReconUnit) -> tuple[Continuation | None, bool]:
    """The unit's response function (None when the unit has none) and whether it needs the mask
    decoder's call for each sample."""
    if unit.kind == "neck":  # its output is the image embedding, whatever the encoder
        return (lambda output, args, kwargs, call: _image_tokens(model, None, output, call)), True
    if unit.kind == "vit_block" and isinstance(model.image_encoder, ImageEncoderViT):
        names = [b.name for b in model_blocks(model) if b.kind == "vit_block"]
        later = [model.get_submodule(name) for name in names[names.index(unit.modules[-1]) + 1:]]
        return (lambda output, args, kwargs, call: _image_tokens(model, later, output, call)), True
    if unit.kind == "two_way_layer":
        start = int(unit.modules[-1].rpartition(".")[2]) + 1
        return (lambda output, args, kwargs, call: _token_outputs(model, start, output, kwargs)), False
    return None, False


def _image_tokens(model: Sam, later: list | None, output: torch.Tensor, call: Any) -> torch.Tensor:
    """The decoder transformer's image tokens from an encoder unit's output (``later``: the encoder
    blocks still to run, None when the output is the neck's)."""
    x = output
    if later is not None:
        for block in later:
            x = block(x)
        x = model.image_encoder.neck(x.permute(0, 3, 1, 2))
    _, kwargs = call
    decoder = model.mask_decoder
    src, pos, tokens = decoder.transformer_inputs(x, kwargs["image_pe"], kwargs["sparse_prompt_embeddings"],
                                                  kwargs["dense_prompt_embeddings"])
    return decoder.transformer(src, pos, tokens)[1]


def _token_outputs(model: Sam, start: int, output: tuple, kwargs: dict) -> torch.Tensor:
    """The transformer's token outputs from layer ``start − 1``'s ``(queries, keys)`` (the tail of
    ``TwoWayTransformer.forward``)."""
    transformer = model.mask_decoder.transformer
    queries, keys = output
    query_pe, key_pe = kwargs["query_pe"], kwargs["key_pe"]
    for layer in transformer.layers[start:]:
        queries, keys = layer(queries=queries, keys=keys, query_pe=query_pe, key_pe=key_pe)
    attended = transformer.final_attn_token_to_image(q=queries + query_pe, k=keys + key_pe, v=keys)
    return transformer.norm_final_attn(queries + attended)
