"""What block reconstruction tunes at a time: a layer, a model block, or a stage of blocks."""

from __future__ import annotations

from dataclasses import dataclass

from segment_anything.modeling import Sam
from torch import nn

from ptqsam.instrument.instrument import attached_quantizers
from ptqsam.instrument.units import model_units
from ptqsam.models.blocks import Block, model_blocks, on_mask_path
from ptqsam.reconstruction.config import ReconstructionConfig


@dataclass(frozen=True)
class ReconUnit:
    """One reconstruction unit.

    Arguments:
      name: the module path, or ``<first block>-<last index>`` for a stage of several blocks
        (``image_encoder.blocks.0-2``).
      modules: the module paths it runs in order, each feeding the next (one for a layer or a block).
      quantizers: the calibrated quantizers inside it.
      channel_axis: the channel axis of its output tensor(s).
      kind: the block kind of its last module (``"layer"`` for a layer unit).
    """

    name: str
    modules: tuple[str, ...]
    quantizers: tuple[str, ...]
    channel_axis: int
    kind: str


def reconstruction_units(model: Sam, config: ReconstructionConfig) -> list[ReconUnit]:
    """The units of ``config.unit`` that hold at least one calibrated quantizer, in model order.

    ``stage`` (SAQ-SAM): the ViT encoder's blocks are grouped into stages, each running up to and
    including a global-attention block (SAM-B: blocks 0-2, 3-5, 6-8, 9-11); every other block
    is a unit alone. The mask-prompt path (:data:`~ptqsam.models.blocks.MASK_PROMPT_SITES`) is no
    unit: the calibration prompts do not reach it, so its quantizers stay as calibrated."""
    calibrated = [n for n, q in attached_quantizers(model).items() if q.is_calibrated and not on_mask_path(n)]
    if config.unit == "layer":
        groups = [[(u.module, 1 if u.kind.startswith("conv") else -1)] for u in model_units(model) if u.output is None]
        kinds = ["layer"] * len(groups)
    else:
        stages = _stages(model_blocks(model)) if config.unit == "stage" else [[b] for b in model_blocks(model)]
        groups = [[(b.name, b.channel_axis) for b in stage] for stage in stages]
        kinds = [stage[-1].kind for stage in stages]
    units = []
    for group, kind in zip(groups, kinds):
        names = tuple(name for name, _ in group)
        inside = tuple(n for n in calibrated if any(n.startswith(name + ".") for name in names))
        if inside:
            label = names[0] if len(names) == 1 else f"{names[0]}-{names[-1].rpartition('.')[2]}"
            units.append(ReconUnit(label, names, inside, group[-1][1], kind))
    return units


def unit_module(model: nn.Module, unit: ReconUnit) -> nn.Module:
    """The module that runs the unit (its modules chained for a stage)."""
    modules = [model.get_submodule(name) for name in unit.modules]
    return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


def _stages(blocks: list[Block]) -> list[list[Block]]:
    stages: list[list[Block]] = []
    current: list[Block] = []
    for block in blocks:
        if block.kind != "vit_block":
            stages += [current] if current else []
            stages.append([block])
            current = []
            continue
        current.append(block)
        if block.global_attention:
            stages.append(current)
            current = []
    return stages + ([current] if current else [])
