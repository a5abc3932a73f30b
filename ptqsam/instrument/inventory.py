"""The sites of a model with the shapes of the tensors they see (``ptqsam inspect``)."""

from __future__ import annotations

import copy
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from ptqsam.instrument.hooks import forward_hooks
from ptqsam.instrument.instrument import ORIGINAL_CLASSES, attached_quantizers, instrument, model_device, sites
from ptqsam.instrument.modes import disabled
from ptqsam.instrument.sites import Site
from quantizers import Mode


class SiteRow(NamedTuple):
    """One row of :func:`site_inventory`."""

    name: str
    kind: str
    shape: tuple[int, ...] | None  #: None when the probe forward does not reach the site
    owner: str  #: class name of the module the site belongs to (the original, not instrumented)


def site_inventory(model: nn.Module, image_size: int | None = None) -> list[SiteRow]:
    """Every site of ``model`` with the shape of the tensor it sees.

    Shapes come from one probe forward: a ``image_size``² image (default: the encoder's
    ``img_size``), one box prompt and a mask input, multimask output. The forward runs on a copy of
    the model on the "meta" device (no data, no compute); if that fails it runs on ``model``
    itself with every quantizer off, under ``torch.no_grad``.

    Example (``ptqsam inspect``; ``--state``: ``load_calibrated(model, path).quantizers``, site name
    -> quantizer, each with its ``summary()``)::

        >>> from ptqsam import site_inventory
        >>> rows = site_inventory(model)
        >>> row = next(r for r in rows if r.kind == "probs")
        >>> row.name, row.owner
        ('image_encoder.blocks.0.attn.probs', 'Attention')
    """
    instrument(model)
    size = image_size if image_size is not None else model.image_encoder.img_size
    try:
        shapes = _probe_shapes(_meta_copy(model), size)
    except (RuntimeError, NotImplementedError):
        with disabled(model):
            shapes = _probe_shapes(model, size)
    rows = []
    for name, site in sites(model).items():
        owner = type(model.get_submodule(name.rpartition(".")[0]))
        rows.append(SiteRow(name, site.kind, shapes.get(name), ORIGINAL_CLASSES.get(owner, owner).__name__))
    return rows


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers live on "meta" (nothing is copied), quantizers off."""
    memo: dict[int, object] = {}
    for param in model.parameters():
        memo[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), param.requires_grad)
    for buffer in model.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    meta = copy.deepcopy(model, memo)
    for quantizer in attached_quantizers(meta).values():
        quantizer.mode = Mode.OFF
    return meta


@torch.no_grad()
def _probe_shapes(model: nn.Module, image_size: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, site: Site, args: tuple, output: torch.Tensor) -> None:
        shapes.setdefault(name, tuple(output.shape))

    with forward_hooks((site, partial(record, name)) for name, site in sites(model).items()):
        device = model_device(model)
        embedding = model.image_encoder(torch.zeros(1, 3, image_size, image_size, device=device))
        box = torch.tensor([[0.0, 0.0, image_size / 2, image_size / 2]], device=device)
        mask = torch.zeros(1, 1, *model.prompt_encoder.mask_input_size, device=device)
        sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=mask)
        model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)
    return shapes
